"""Bad input stops the run with a clear error, before a single instance is rented."""

from __future__ import annotations

import socket

import pytest

from tests.e2e import run_snakemake, sim_env, write_workflow

pytestmark = pytest.mark.e2e

ONE_RULE = 'rule one:\n    output: "one.txt"\n{resources}    shell: "echo ok > {{output}}"\n'


def workflow(tmp_path, resources: str = ""):
    block = f"    resources:\n        {resources}\n" if resources else ""
    return write_workflow(tmp_path / "wf", {"Snakefile": ONE_RULE.format(resources=block)})


@pytest.mark.parametrize(("resources", "extra", "culprit"), [
    ("gpu=-1", (), "gpu"),
    ('mem_mb="lots"', (), "mem_mb"),
    ('vastai_query="cuda_vers>>=12"', (), "vastai_query"),
    ("", ("--vastai-search-query", "num_gpus=="), "--vastai-search-query"),
    ("", ("--vastai-geolocation", "ATLANTIS"), "--vastai-geolocation"),
    ("", ("--vastai-disk", "0"), "--vastai-disk"),
    ("", ("--vastai-image", "Not An Image"), "--vastai-image"),
])
def test_bad_settings_and_resources_name_the_culprit(tmp_path, simulator, resources, extra,
                                                    culprit):
    wf = workflow(tmp_path, resources)
    result = run_snakemake(wf, simulator.url, simulator.api_key, *extra, timeout=120)
    assert result.returncode != 0
    assert culprit in result.stderr
    assert "Traceback" not in result.stderr
    assert simulator.truth()["created_count"] == 0


def test_unknown_gpu_name_fails_the_job_without_renting(tmp_path, simulator):
    wf = workflow(tmp_path, 'gpu_model="RTX_9999"')
    result = run_snakemake(wf, simulator.url, simulator.api_key, timeout=120)
    assert result.returncode != 0
    assert "no Vast.ai offer matches" in result.stderr
    assert "RTX 9999" in result.stderr or "RTX_9999" in result.stderr
    assert simulator.truth()["created_count"] == 0


def test_missing_api_key_is_reported(tmp_path, simulator):
    wf = workflow(tmp_path)
    result = run_snakemake(wf, simulator.url, None, timeout=120, env=sim_env(None))
    assert result.returncode != 0
    assert "VAST_API_KEY" in result.stderr
    assert simulator.truth()["created_count"] == 0


def test_wrong_api_key_is_reported_without_echoing_it(tmp_path, simulator):
    wf = workflow(tmp_path)
    secret = "wrong-key-5f3c9a1e"
    result = run_snakemake(wf, simulator.url, secret, timeout=120)
    assert result.returncode != 0
    assert "refused the API key" in result.stderr
    assert secret not in result.stderr + result.stdout
    assert simulator.truth()["created_count"] == 0


def test_unreachable_api_url_is_reported(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    wf = workflow(tmp_path)
    result = run_snakemake(wf, f"http://127.0.0.1:{port}", "some-key", timeout=120)
    assert result.returncode != 0
    assert "not reachable" in result.stderr and "--vastai-api-url" in result.stderr
