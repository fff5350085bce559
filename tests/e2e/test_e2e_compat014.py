"""End to end: a workflow written for the published 0.1.4 plugin runs unchanged.

The workflow follows the shape of 0.1.4's README (a workflow profile in
``profiles/default/config.yaml`` that Snakemake loads by itself, rules whose
resources choose the machine) and uses every option and per-rule resource 0.1.4
reads, ``deploy`` and ``vastai-deploy-paths`` included. Only the API URL is
added on the command line, because the simulator is not the real service.

Scoped shipping is shown on the bytes the simulated instance received over SSH
(the simulator counts them) and on what the job could see on the instance.
Every test ends with no live instance.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import tarfile
from pathlib import Path

import pytest

import snakemake_executor_plugin_vastai as plugin
from tests.e2e.test_e2e_storage import new_bucket, s3_env, storage_args
from tests.harness.e2e import alive, run_snakemake, write_workflow
from tests.harness.s3 import s3_server  # noqa: F401 (fixture)

pytestmark = pytest.mark.e2e

PROFILE_014 = """\
executor: vastai
jobs: 2
vastai-max-price: 1.0
vastai-geolocation: EU
vastai-gpu-name: RTX_4090
vastai-disk: 20
vastai-image: vastai/pytorch:@vastai-automatic-tag
vastai-reliability: 0.9
vastai-order: dph_total
vastai-search-query: "cuda_vers>=12.0"
vastai-boot-timeout: 600
vastai-no-datacenter: true
vastai-no-forward-credentials: true
vastai-keep-instances: false
vastai-deploy-paths: "shared/**"
vastai-max-runtime: 0
"""

SNAKEFILE_014 = """\
configfile: "config/settings.yaml"

include: "rules/report.smk"


rule all:
    input:
        "reports/summary.txt",


rule fit:
    input:
        "data/train.csv",
    output:
        "models/model.txt",
    threads: 2
    resources:
        gpu=1,
        gpu_model="RTX_4090",
        mem_mb=8000,
        disk_mb=20000,
        vastai_query="inet_down>=100",
        deploy="fit.py,lib/**",
    shell:
        "test ! -e monorepo && test ! -e README.md && python fit.py {input} {output}"
"""

REPORT_SMK = """\
rule summarise:
    input:
        "models/model.txt",
    output:
        "reports/summary.txt",
    resources:
        nvidia_gpu=1,
        deploy="summarise.py",
    shell:
        "python summarise.py {input} {output} {config[title]}"
"""

FIT_PY = """\
import sys

sys.path.insert(0, "lib")
from helpers import weigh  # shipped through deploy="fit.py,lib/**"

rows = open(sys.argv[1]).read().split()
labels = open("shared/labels.txt").read().split()  # shipped by vastai-deploy-paths
with open(sys.argv[2], "w") as out:
    out.write(f"{weigh(rows)} {'/'.join(labels)}\\n")
"""

SUMMARISE_PY = """\
import sys

model = open(sys.argv[1]).read().strip()
with open(sys.argv[2], "w") as out:
    out.write(f"{sys.argv[3]}: {model}\\n")
"""

NOISE_FILES = 300
NOISE_BYTES = 4096


def noise(root: Path, count: int = NOISE_FILES) -> int:
    """Tracked files no job needs (incompressible, so the archive cannot hide them)."""
    for i in range(count):
        path = root / "monorepo" / f"pkg{i % 10}" / f"blob{i}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(NOISE_BYTES))
    return count * NOISE_BYTES


def workflow_014(root: Path) -> tuple[Path, int]:
    root.mkdir(parents=True)
    noise_bytes = noise(root)
    files = {
        "Snakefile": SNAKEFILE_014,
        "rules/report.smk": REPORT_SMK,
        "profiles/default/config.yaml": PROFILE_014,
        "config/settings.yaml": "title: nightly\n",
        "fit.py": FIT_PY,
        "lib/helpers.py": "def weigh(rows):\n    return sum(int(r) for r in rows)\n",
        "summarise.py": SUMMARISE_PY,
        "shared/labels.txt": "cat dog\n",
        "data/train.csv": "1\n2\n3\n",
        "README.md": "the monorepo's readme\n",
    }
    return write_workflow(root, files, track=["."]), noise_bytes


def source_archive_members(wf: Path) -> set[str]:
    (archive,) = (wf / ".snakemake" / "vastai").glob("sources-*.tar.xz")
    with tarfile.open(archive) as tar:
        return {m.name for m in tar.getmembers() if m.isfile()}


def test_a_workflow_written_for_0_1_4_runs_unchanged_and_ships_only_what_it_deploys(
        tmp_path, simulator):
    wf, noise_bytes = workflow_014(tmp_path / "wf")
    result = run_snakemake(wf, simulator.url, simulator.api_key, jobs=2)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (wf / "models/model.txt").read_text() == "6 cat/dog\n"
    assert (wf / "reports/summary.txt").read_text() == "nightly: 6 cat/dog\n"

    # The union of vastai-deploy-paths and both rules' deploy, plus what always ships.
    assert source_archive_members(wf) == {
        "Snakefile", "rules/report.smk", "config/settings.yaml", "fit.py", "lib/helpers.py",
        "summarise.py", "shared/labels.txt"}
    assert "shipping 7 of" in result.stderr

    truth = simulator.truth()
    instances = truth["instances"]
    assert len(instances) == 2
    assert {i["gpu_name"] for i in instances} == {"RTX 4090"}  # gpu_model / gpu-name
    assert all(i["dph_total"] <= 1.0 for i in instances)  # vastai-max-price
    for inst in instances:  # far less than the monorepo's tracked bytes reached each one
        assert 0 < inst["ssh_bytes_in"] < noise_bytes / 4, inst["ssh_bytes_in"]
    assert alive(truth) == []


def one_rule_repo(root: Path) -> tuple[Path, int]:
    root.mkdir(parents=True)
    noise_bytes = noise(root)
    files = {
        "Snakefile": 'rule one:\n    output: "one.txt"\n'
                     '    shell: "python need.py > {output}; "\n'
                     '           "find . -path ./monorepo/\'*\' -type f | wc -l >> {output}"\n',
        "need.py": "print('needed')\n",
    }
    return write_workflow(root, files, track=["."]), noise_bytes


def test_deploy_paths_cut_the_bytes_uploaded_to_an_instance(tmp_path, simulator):
    scoped, noise_bytes = one_rule_repo(tmp_path / "scoped")
    whole, _ = one_rule_repo(tmp_path / "whole")
    first = run_snakemake(scoped, simulator.url, simulator.api_key,
                          "--vastai-deploy-paths", "need.py")
    assert first.returncode == 0, first.stderr[-4000:]
    second = run_snakemake(whole, simulator.url, simulator.api_key)
    assert second.returncode == 0, second.stderr[-4000:]

    # The job saw the monorepo only when nothing narrowed the sources.
    assert (scoped / "one.txt").read_text().split() == ["needed", "0"]
    assert (whole / "one.txt").read_text().split() == ["needed", str(NOISE_FILES)]
    assert source_archive_members(scoped) == {"Snakefile", "need.py"}
    assert len(source_archive_members(whole)) == NOISE_FILES + 2

    truth = simulator.truth()
    scoped_in, whole_in = (i["ssh_bytes_in"] for i in truth["instances"])
    assert whole_in > noise_bytes  # everything tracked went up
    assert scoped_in * 10 < whole_in, (scoped_in, whole_in)
    assert alive(truth) == []


def test_a_deploy_pattern_that_selects_nothing_fails_before_renting(tmp_path, simulator):
    wf = write_workflow(tmp_path / "wf", {
        "Snakefile": 'rule one:\n    output: "one.txt"\n    resources: deploy="need.py,nede.py"\n'
                     '    shell: "python need.py > {output}"\n',
        "need.py": "print('needed')\n",
    }, track=["."])
    result = run_snakemake(wf, simulator.url, simulator.api_key)
    assert result.returncode != 0
    assert "rule one: resource deploy: 'nede.py' selects no file" in result.stderr
    truth = simulator.truth()
    assert truth["created_count"] == 0
    assert alive(truth) == []


def test_included_script_and_config_files_ship_without_being_listed(tmp_path, simulator):
    wf = write_workflow(tmp_path / "wf", {
        "Snakefile": 'configfile: "config/c.yaml"\ninclude: "rules/main.rules"\n',
        "rules/main.rules": 'rule go:\n    output: "go.txt"\n'
                            '    resources: deploy="notes/needed.txt"\n'
                            '    script: "../scripts/go.py"\n',
        "scripts/go.py": 'note = open("notes/needed.txt").read().strip()\n'
                         'open(snakemake.output[0], "w").write(note + snakemake.config["x"])\n',
        "scripts/unused_sibling.py": "print('not needed')\n",
        "notes/needed.txt": "needed-",
        "notes/other.txt": "not needed",
        "config/c.yaml": "x: configured\n",
    }, track=["."])
    result = run_snakemake(wf, simulator.url, simulator.api_key, "go.txt",
                           "--container-image", "ghcr.io/acme/cuda-py:12")
    assert result.returncode == 0, result.stderr[-4000:]
    assert (wf / "go.txt").read_text() == "needed-configured"
    assert source_archive_members(wf) == {
        "Snakefile", "rules/main.rules", "scripts/go.py", "config/c.yaml", "notes/needed.txt"}
    # as in 0.1.4, an explicit --container-image is the image when --vastai-image is unset
    with sqlite3.connect(wf / ".snakemake" / "vastai" / "journal.sqlite") as db:
        settings, version = db.execute("select settings, plugin_version from runs").fetchone()
    assert json.loads(settings)["image"] == "ghcr.io/acme/cuda-py:12"
    assert version == plugin.__version__
    assert alive(simulator.truth()) == []


def test_storage_mode_puts_only_the_scoped_sources_in_the_bucket(tmp_path, simulator,
                                                                  s3_server):  # noqa: F811
    bucket = new_bucket(s3_server)
    wf, _ = one_rule_repo(tmp_path / "wf")
    result = run_snakemake(wf, simulator.url, simulator.api_key, "one.txt",
                           "--vastai-deploy-paths", "need.py",
                           *storage_args(s3_server, bucket), env=s3_env(simulator.api_key))
    assert result.returncode == 0, result.stderr[-4000:]
    assert s3_server.read(bucket, "wf/one.txt").decode().split() == ["needed", "0"]
    (key,) = [k for k in s3_server.keys(bucket) if "snakemake-workflow-sources" in k]
    with tarfile.open(fileobj=io.BytesIO(s3_server.read(bucket, key))) as tar:
        assert {m.name for m in tar.getmembers() if m.isfile()} == {"Snakefile", "need.py"}
    assert alive(simulator.truth()) == []
