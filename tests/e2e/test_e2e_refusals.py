"""Workflows the vastai executor cannot run as written stop before anything is rented,
with an error naming the rule, resource or file at fault."""

from __future__ import annotations

import pytest

from tests.harness.e2e import alive, run_snakemake, write_workflow

pytestmark = pytest.mark.e2e


def one_rule(extra: str = "", output: str = "one.txt") -> str:
    return f'rule one:\n    output: {output!r}\n{extra}    shell: "echo ok > {{output:q}}"\n'


@pytest.mark.parametrize(("extra", "culprit"), [
    ('    resources: vastai_max_price="cheap"\n', "rule one: resource vastai_max_price"),
    ('    resources: vastai_geolocation="ATLANTIS"\n', "rule one: resource vastai_geolocation"),
    ('    resources: vastai_image="Not An Image"\n', "rule one: resource vastai_image"),
    ('    container: "shub://vsoch/hello"\n', "rule one: container"),
])
def test_bad_per_rule_settings_name_the_rule_and_rent_nothing(tmp_path, simulator, extra,
                                                             culprit):
    wf = write_workflow(tmp_path / "wf", {"Snakefile": one_rule(extra)})
    result = run_snakemake(wf, simulator.url, simulator.api_key, timeout=120)
    assert result.returncode != 0
    assert culprit in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert simulator.truth()["created_count"] == 0


def test_a_tracked_file_with_a_newline_in_its_name_is_refused_before_renting(tmp_path,
                                                                            simulator):
    wf = write_workflow(tmp_path / "wf", {"Snakefile": one_rule(), "notes/a\nb.txt": "x\n"},
                        track=["Snakefile", "notes"])
    result = run_snakemake(wf, simulator.url, simulator.api_key, timeout=120)
    assert result.returncode != 0
    assert "'notes/a\\nb.txt' has a newline in its name" in result.stderr, result.stderr[-3000:]
    assert simulator.truth()["created_count"] == 0


def test_an_output_with_a_newline_is_refused_naming_the_rule(tmp_path, simulator):
    wf = write_workflow(tmp_path / "wf", {"Snakefile": one_rule(output="a\nb.txt")})
    result = run_snakemake(wf, simulator.url, simulator.api_key, timeout=120)
    assert result.returncode != 0
    assert "rule one: the path 'a\\nb.txt' contains a newline" in result.stderr, \
        result.stderr[-3000:]
    assert simulator.truth()["created_count"] == 0


def test_a_wildcard_value_with_a_comma_is_refused_naming_the_rule(tmp_path, simulator):
    wf = write_workflow(tmp_path / "wf", {"Snakefile": (
        'rule all:\n    input: "w/a,b.txt"\n'
        'rule w:\n    output: "w/{name}.txt"\n    shell: "touch {output:q}"\n')})
    result = run_snakemake(wf, simulator.url, simulator.api_key, timeout=120)
    assert result.returncode != 0
    assert "rule w: wildcard name='a,b' contains a comma" in result.stderr, \
        result.stderr[-3000:]
    assert simulator.truth()["created_count"] == 0


def test_apptainer_deployment_is_refused_and_the_docker_image_suggested(tmp_path, simulator):
    wf = write_workflow(tmp_path / "wf", {"Snakefile": one_rule(
        '    container: "docker://python:3.12-slim"\n')})
    result = run_snakemake(wf, simulator.url, simulator.api_key,
                           "--software-deployment-method", "apptainer", timeout=120)
    assert result.returncode != 0
    assert "rule one: --software-deployment-method apptainer cannot work" in result.stderr, \
        result.stderr[-3000:]
    assert simulator.truth()["created_count"] == 0


def test_a_rules_own_runtime_cap_stops_a_hung_job(tmp_path, simulator):
    wf = write_workflow(tmp_path / "wf", {"Snakefile": (
        'rule hang:\n    output: "h.txt"\n    resources: vastai_max_runtime=3\n'
        '    shell: "sleep 600; touch {output}"\n')})
    result = run_snakemake(wf, simulator.url, simulator.api_key, timeout=180)
    assert result.returncode != 0
    assert "ran longer than the rule's vastai_max_runtime resource (3s)" in result.stderr, \
        result.stderr[-3000:]
    truth = simulator.truth()
    assert alive(truth) == []
    (inst,) = [i for i in truth["instances"] if not i.get("foreign")]
    assert inst["billed_seconds"] < 60
