"""Bad input stops the run with a clear error, before a single instance is rented."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.harness.e2e import alive, run_snakemake, sim_env, write_workflow

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
    ("", ("--vastai-progress-interval", "0.001"), "--vastai-progress-interval"),
    ("", ("--vastai-offer-wait", "-5"), "--vastai-offer-wait"),
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


def no_key_env(home: Path) -> dict[str, str]:
    """No key in the environment, and a HOME of the test's own (no saved key file)."""
    home.mkdir(parents=True, exist_ok=True)
    env = sim_env(None, HOME=str(home))
    env.pop("XDG_CONFIG_HOME", None)
    return env


def test_the_key_saved_by_vastai_set_api_key_is_used(tmp_path, simulator):
    home = tmp_path / "home"
    key_file = home / ".config/vastai/vast_api_key"
    key_file.parent.mkdir(parents=True)
    key_file.write_text(simulator.api_key + "\n")
    wf = workflow(tmp_path)
    result = run_snakemake(wf, simulator.url, None, timeout=120, env=no_key_env(home))
    assert result.returncode == 0, result.stderr[-3000:]
    assert simulator.api_key not in result.stderr


def test_unreadable_api_key_file_is_named_before_renting(tmp_path, simulator):
    home = tmp_path / "home"
    (home / ".vast_api_key").mkdir(parents=True)  # unreadable as a file, even for root
    wf = workflow(tmp_path)
    result = run_snakemake(wf, simulator.url, None, timeout=120, env=no_key_env(home))
    assert result.returncode != 0
    assert f"cannot read the Vast.ai API key file {home / '.vast_api_key'}" in result.stderr
    assert "Traceback" not in result.stderr
    assert simulator.truth()["created_count"] == 0


def test_max_price_below_every_offer_rents_nothing(tmp_path, simulator):
    wf = workflow(tmp_path)
    result = run_snakemake(wf, simulator.url, simulator.api_key, "--vastai-max-price", "0.0001",
                           timeout=120)
    assert result.returncode != 0
    assert "no Vast.ai offer matches" in result.stderr
    assert "--vastai-max-price" in result.stderr
    assert simulator.truth()["created_count"] == 0


def test_missing_api_key_is_reported(tmp_path, simulator):
    wf = workflow(tmp_path)
    result = run_snakemake(wf, simulator.url, None, timeout=120,
                           env=no_key_env(tmp_path / "home"))
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


def test_a_workflow_outside_git_ships_what_snakemake_knows_and_says_so(tmp_path, simulator):
    """As Snakemake's own remote execution: the Snakefile, its includes, config and script
    files travel; the warning says git would ship more. (It used to be refused.)"""
    import subprocess

    wf = tmp_path / "nogit"
    (wf / "scripts").mkdir(parents=True)
    (wf / "scripts" / "make.py").write_text(
        "open(snakemake.output[0], 'w').write('made\\n')\n")
    (wf / "Snakefile").write_text('rule one:\n    output: "one.txt"\n'
                                  '    script: "scripts/make.py"\n')
    (wf / "notes").mkdir()
    (wf / "notes" / "lab book.txt").write_text("git would have shipped this\n")
    result = run_snakemake(wf, simulator.url, simulator.api_key, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (wf / "one.txt").read_text() == "made\n"
    assert "not in a git repository: shipping only what Snakemake knows" in result.stderr
    assert str(wf) in result.stderr
    # named as what git would have added; the script, shipped, is not named
    assert "1 other files below it do not ship" in result.stderr
    assert "notes/lab book.txt" in result.stderr and "scripts/make.py" not in result.stderr
    assert alive(simulator.truth()) == []
    assert subprocess.run(["git", "status"], cwd=wf, capture_output=True).returncode != 0


def test_untracked_files_are_listed_in_a_warning(tmp_path, simulator):
    wf = workflow(tmp_path)
    (wf / "helper.py").write_text("print('not shipped')\n")
    result = run_snakemake(wf, simulator.url, simulator.api_key, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "not tracked by git" in result.stderr and "helper.py" in result.stderr


def test_corrupt_journal_is_moved_aside_and_its_instances_still_found(tmp_path, simulator):
    """A leftover instance of a journal that got corrupted is destroyed by the next run."""
    import vastai

    wf = workflow(tmp_path)
    first = run_snakemake(wf, simulator.url, simulator.api_key, timeout=120)
    assert first.returncode == 0, first.stderr[-3000:]
    prefix = "smk-" + (wf / ".snakemake/vastai/workflow-id").read_text().strip() + "-"
    sdk = vastai.VastAI(api_key=simulator.api_key, server_url=simulator.url)
    offer = sdk.search_offers("num_gpus=1", order="dph_total", limit=1)[0]
    leftover = sdk.create_instance(offer["id"], image="x", disk=10, label=prefix + "lost")
    journal = wf / ".snakemake/vastai/journal.sqlite"
    journal.write_bytes(b"this is not sqlite" * 100)
    (wf / "one.txt").unlink()
    second = run_snakemake(wf, simulator.url, simulator.api_key, timeout=120)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "is corrupt" in second.stderr and "moved to" in second.stderr
    moved = list(journal.parent.glob("journal.sqlite.corrupt-*"))
    assert len(moved) == 1 and moved[0].read_bytes().startswith(b"this is not sqlite")
    truth = {i["id"]: i for i in simulator.truth()["instances"]}
    assert not truth[leftover["new_contract"]]["alive"]
    assert [i for i in truth.values() if i["alive"]] == []


def test_journal_from_a_newer_plugin_is_refused(tmp_path, simulator):
    import sqlite3

    wf = workflow(tmp_path)
    first = run_snakemake(wf, simulator.url, simulator.api_key, timeout=120)
    assert first.returncode == 0, first.stderr[-3000:]
    journal = wf / ".snakemake/vastai/journal.sqlite"
    with sqlite3.connect(journal) as db:
        db.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    created = simulator.truth()["created_count"]
    (wf / "one.txt").unlink()
    second = run_snakemake(wf, simulator.url, simulator.api_key, timeout=120)
    assert second.returncode != 0
    assert str(journal) in second.stderr and "newer" in second.stderr
    assert simulator.truth()["created_count"] == created
