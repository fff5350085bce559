"""End to end: the real ``snakemake --executor vastai`` CLI against the simulator.

Every test ends by asserting the simulator's ground truth holds no live
instance of ours.
"""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

import pytest

from tests.harness.e2e import (
    alive,
    fanout_workflow,
    interrupt,
    run_snakemake,
    start_snakemake,
    wait_for,
    write_workflow,
)

pytestmark = pytest.mark.e2e


def journal_rows(workdir: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(workdir / ".snakemake" / "vastai" / "journal.sqlite") as db:
        return db.execute(sql).fetchall()


def test_fanout_workflow_runs_and_brings_outputs_home(tmp_path, simulator):
    wf = fanout_workflow(tmp_path / "wf", n=8, factor=3)
    result = run_snakemake(wf, simulator.url, simulator.api_key)
    assert result.returncode == 0, result.stderr[-4000:]
    report = (wf / "results/final/report.txt").read_text().splitlines()
    assert report == [f"s{i} {len(f'hello{chr(10)}s{i}{chr(10)}') * 3}" for i in range(8)]
    assert (wf / "results/tree/a/b/first.txt").read_text() == "s0 27\n"
    assert (wf / "results/tree/top.txt").read_text() == "tree\n"
    assert (wf / "logs/score/s5.log").read_text() == "scoring s5\n"
    truth = simulator.truth()
    assert truth["created_count"] == 8 + 8 + 2  # split, score, tree+report
    assert alive(truth) == []
    states = journal_rows(wf, "select state, count(*) from jobs group by state")
    assert states == [("succeeded", 18)]
    logs = list((wf / ".snakemake/auxiliary/vastai-logs").glob("score.*.log"))
    assert len(logs) == 8


def test_failing_job_reports_remote_log_and_destroys_instance(tmp_path, simulator):
    wf = write_workflow(tmp_path / "wf", {
        "Snakefile": 'rule boom:\n    output: "out.txt"\n'
                     '    shell: "echo remote-says-goodbye >&2; exit 3"\n',
    })
    result = run_snakemake(wf, simulator.url, simulator.api_key, "out.txt")
    assert result.returncode != 0
    # the remote Snakemake exits 1; the user is told the command's own code
    assert "exited with code 3" in result.stderr
    assert "echo remote-says-goodbye" in result.stderr  # the remote log's tail is shown
    log = next((wf / ".snakemake/auxiliary/vastai-logs").glob("boom.*.log")).read_text()
    assert "remote-says-goodbye" in log
    assert not (wf / "out.txt").exists()
    assert alive(simulator.truth()) == []
    assert journal_rows(wf, "select state, last_error like '%code 3%', exit_code from jobs") == [
        ("failed", 1, 3)]  # `journal show` reports the command's exit code too


def test_fatal_boot_error_is_retried_on_another_machine(tmp_path, simulator):
    simulator.add_fault("boot_fatal", next_n=1,
                        status_msg="Error response from daemon: toomanyrequests: "
                                   "You have reached your pull rate limit")
    wf = write_workflow(tmp_path / "wf", {
        "Snakefile": 'rule one:\n    output: "one.txt"\n    shell: "echo ok > {output}"\n',
    })
    result = run_snakemake(wf, simulator.url, simulator.api_key, "--retries", "1")
    assert result.returncode == 0, result.stderr[-4000:]
    assert (wf / "one.txt").read_text() == "ok\n"
    truth = simulator.truth()
    machines = [i["machine_id"] for i in truth["instances"]]
    assert len(machines) == 2 and machines[0] != machines[1]
    assert alive(truth) == []
    errors = journal_rows(wf, "select last_error from jobs where state = 'failed'")
    assert len(errors) == 1 and "pull rate limit" in errors[0][0]


def test_offers_taken_while_renting_fall_through(tmp_path, simulator):
    simulator.add_fault("offer_taken", count=3)
    wf = write_workflow(tmp_path / "wf", {
        "Snakefile": 'rule one:\n    output: "one.txt"\n    shell: "echo ok > {output}"\n',
    })
    result = run_snakemake(wf, simulator.url, simulator.api_key)
    assert result.returncode == 0, result.stderr[-4000:]
    taken = journal_rows(wf, "select count(*) from transitions where trigger = 'offer_taken'")
    assert taken == [(3,)]
    assert alive(simulator.truth()) == []


def test_ssh_drops_mid_upload_and_mid_run_are_survived(tmp_path, simulator):
    big = "x" * (4 << 20)
    wf = write_workflow(tmp_path / "wf", {
        "Snakefile": 'rule one:\n    input: "big.txt"\n    output: "one.txt"\n'
                     '    shell: "sleep 1.5; wc -c < {input} > {output}"\n',
        "big.txt": big,
    })
    simulator.add_fault("ssh_drop", next_n=1, after_bytes=1 << 20)
    simulator.add_fault("ssh_drop", next_n=1, after_seconds=2.0)
    result = run_snakemake(wf, simulator.url, simulator.api_key)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (wf / "one.txt").read_text().strip() == str(4 << 20)
    retries = journal_rows(wf, "select count(*) from transitions where trigger = 'retry'")
    assert retries[0][0] >= 1
    assert alive(simulator.truth()) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_run_destroys_every_instance(tmp_path, simulator, sig):
    wf = write_workflow(tmp_path / "wf", {
        "Snakefile": 'rule all:\n    input: expand("o{i}.txt", i=range(3))\n'
                     'rule slow:\n    output: "o{i}.txt"\n    shell: "sleep 60; touch {output}"\n',
    })
    proc = start_snakemake(wf, simulator.url, simulator.api_key)
    try:
        assert wait_for(lambda: len(alive(simulator.truth())) == 3, timeout=60)
        assert wait_for(lambda: _running_jobs(wf) == 3, timeout=60)
        out = interrupt(proc, sig)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert alive(simulator.truth()) == [], out[-3000:]
    states = journal_rows(wf, "select state from jobs")
    assert {s for (s,) in states} == {"cancelled"}


def _running_jobs(wf: Path) -> int:
    try:
        return journal_rows(wf, "select count(*) from jobs where state = 'running'")[0][0]
    except sqlite3.Error:
        return 0


def test_profile_config_yaml_drives_the_plugin(tmp_path, simulator):
    """Settings from profiles/default/config.yaml, with a plain `snakemake` command."""
    import subprocess
    import sys

    from tests.harness.e2e import sim_env

    wf = write_workflow(tmp_path / "wf", {
        "Snakefile": 'rule one:\n    output: "one.txt"\n    shell: "echo ok > {output}"\n',
        "profiles/default/config.yaml": (
            f"executor: vastai\njobs: 2\nvastai-api-url: {simulator.url}\n"
            "vastai-status-interval: 0.2\nvastai-max-price: 0.5\nvastai-gpu-name: RTX_3090\n"),
    })
    result = subprocess.run([sys.executable, "-m", "snakemake"], cwd=wf,
                            env=sim_env(simulator.api_key), capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]
    truth = simulator.truth()
    assert [i["gpu_name"] for i in truth["instances"]] == ["RTX 3090"]
    assert truth["instances"][0]["dph_total"] <= 0.5
    assert alive(truth) == []


def test_journal_is_written_ahead_of_every_rent_and_destroy(tmp_path, simulator):
    """The label is journaled before the create call, the destroy intent before destroy."""
    wf = write_workflow(tmp_path / "wf", {
        "Snakefile": 'rule all:\n    input: expand("o{i}.txt", i=range(3))\n'
                     'rule one:\n    output: "o{i}.txt"\n'
                     '    shell: "echo {wildcards.i} > {output}"\n',
    })
    result = run_snakemake(wf, simulator.url, simulator.api_key)
    assert result.returncode == 0, result.stderr[-4000:]
    truth = {i["id"]: i for i in simulator.truth()["instances"]}
    rows = journal_rows(wf, "select instance_id, label, requested_at, destroy_requested_at, "
                            "destroyed_at from instances")
    assert len(rows) == 3
    for instance_id, label, requested, destroy_requested, destroyed in rows:
        sim = truth[instance_id]
        assert sim["label"] == label
        assert requested <= sim["created_at"]
        assert destroy_requested <= sim["destroyed_at"] <= destroyed


def test_spend_cap_stops_new_rentals_and_fails_the_run(tmp_path, simulator):
    wf = write_workflow(tmp_path / "wf", {
        "Snakefile": 'rule all:\n    input: "b.txt"\n'
                     'rule a:\n    output: "a.txt"\n    shell: "sleep 1; echo a > {output}"\n'
                     'rule b:\n    input: "a.txt"\n    output: "b.txt"\n'
                     '    shell: "cat {input} > {output}"\n',
    })
    result = run_snakemake(wf, simulator.url, simulator.api_key,
                           "--vastai-max-spend", "0.00001")
    assert result.returncode != 0
    assert (wf / "a.txt").exists() and not (wf / "b.txt").exists()
    assert "--vastai-max-spend of $1e-05 reached" in result.stderr
    truth = simulator.truth()
    assert truth["created_count"] == 1
    assert alive(truth) == []


def test_secrets_reach_the_job_but_no_log_journal_or_output(tmp_path, simulator):
    """A planted credential and the API key never show up in any log line or the journal."""
    import hashlib

    from tests.harness.e2e import sim_env

    planted = "planted-aws-secret-7c1d9e"
    wf = write_workflow(tmp_path / "wf", {  # the job writes a hash of what it saw
        "Snakefile": 'rule one:\n    output: "one.txt"\n'
                     '    shell: "printf %s \\"$AWS_SECRET_ACCESS_KEY\\" | sha256sum | '
                     'cut -c1-64 > {output}"\n',
    })
    env = sim_env(simulator.api_key, AWS_SECRET_ACCESS_KEY=planted)
    result = run_snakemake(wf, simulator.url, simulator.api_key, "--verbose", env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (wf / "one.txt").read_text().strip() == hashlib.sha256(planted.encode()).hexdigest()
    assert "transition" in result.stderr  # --verbose shows every transition
    snakemake_dir = wf / ".snakemake"
    files = [p for p in snakemake_dir.rglob("*") if p.is_file()
             and "vastai-logs" not in p.parts and "keys" not in p.parts]
    assert any(p.suffix == ".jsonl" for p in files)
    for secret in (planted, simulator.api_key):
        assert secret not in result.stdout + result.stderr
        for path in files:
            assert secret.encode() not in path.read_bytes(), path
