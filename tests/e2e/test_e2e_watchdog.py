"""The instance-side watchdog end to end (issue 30): ``kill -9`` of the run leaves no
instance billing compute beyond the orphan timeout, except a job that is still running,
which stops billing compute when it ends; the next run finishes the workflow with every
output right and nothing alive."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from tests.harness.e2e import (
    alive,
    interrupt,
    run_snakemake,
    start_snakemake,
    wait_for,
    write_workflow,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

# quick finishes at once and its instance waits, idle, for `final` (which needs long);
# long runs on past the kill.
SNAKEFILE = """\
rule all:
    input: "final.txt"

rule quick:
    output: "quick.txt"
    shell: "echo quick > {output}"

rule long:
    output: "long.txt"
    shell: "echo ran >> $HOME/long-runs; sleep 8; echo long > {output}"

rule final:
    input: "quick.txt", "long.txt"
    output: "final.txt"
    shell: "cat {input} > {output}"
"""
TIMEOUT = 4.0


def long_started(simulator) -> bool:
    return any((simulator.instance_dir(i["id"]) / "long-runs").exists()
               for i in alive(simulator.truth()))


def test_kill_9_idle_instance_destroys_itself_running_one_stops_after_its_job(
        tmp_path, simulator):
    wf = write_workflow(tmp_path / "wf", {"Snakefile": SNAKEFILE})
    proc = start_snakemake(wf, simulator.url, simulator.api_key, "--vastai-orphan-timeout",
                           str(TIMEOUT), jobs=2, reuse=True)
    try:
        assert wait_for(lambda: (wf / "quick.txt").exists(), timeout=90), "quick never ran"
        assert wait_for(lambda: long_started(simulator), timeout=60)
        time.sleep(0.5)  # quick's instance is idle in the pool
        assert len(alive(simulator.truth())) == 2
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    killed = time.monotonic()
    # within the orphan timeout plus a tick, the idle one is gone; long's job still runs
    assert wait_for(lambda: len(alive(simulator.truth())) == 1, timeout=TIMEOUT + 10)
    gone_after = time.monotonic() - killed
    [left] = alive(simulator.truth())
    assert left["actual_status"] == "running"
    # when its job ends it stops itself: storage bills, compute does not
    assert wait_for(lambda: alive(simulator.truth())[0]["actual_status"] == "stopped",
                    timeout=30)
    stopped = alive(simulator.truth())[0]
    assert stopped["user_stopped"] and stopped["stops"] == 1
    assert gone_after <= TIMEOUT + 4, gone_after
    # the next run finishes the workflow; nothing stays alive
    subprocess.run([sys.executable, "-m", "snakemake", "--unlock"], cwd=wf,
                   capture_output=True, check=True, timeout=60)
    done = run_snakemake(wf, simulator.url, simulator.api_key, jobs=2, reuse=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (wf / "final.txt").read_text() == "quick\nlong\n"
    truth = simulator.truth()
    assert alive(truth) == []
    # long's output came home from the stopped instance, started again: not run twice
    assert "stopped by its own watchdog; starting it again" in done.stderr
    assert (simulator.instance_dir(stopped["id"]) / "long-runs").read_text() == "ran\n"


ONE_JOB = """\
rule long:
    output: "long.txt"
    shell: "sleep 4; echo long > {output}"
"""


def test_after_a_crash_and_rm_rf_snakemake_the_next_run_names_the_orphan(tmp_path, simulator):
    """The journal, its id file and Snakemake's lock all went with ``.snakemake``: the
    watchdog has stopped the crashed run's instance by the time the next run starts, and
    that run names it (same label prefix: the id comes from machine and directory);
    ``journal cleanup`` removes it."""
    wf = write_workflow(tmp_path / "wf", {"Snakefile": ONE_JOB})
    proc = start_snakemake(wf, simulator.url, simulator.api_key, "--vastai-orphan-timeout",
                           str(TIMEOUT), jobs=1)
    try:
        assert wait_for(lambda: alive(simulator.truth())
                        and alive(simulator.truth())[0]["actual_status"] == "running",
                        timeout=90)
        time.sleep(1.5)  # the job has started
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    subprocess.run(["rm", "-rf", str(wf / ".snakemake")], check=True)
    assert wait_for(lambda: alive(simulator.truth())[0]["actual_status"] == "stopped",
                    timeout=TIMEOUT + 20)
    [orphan] = alive(simulator.truth())
    done = run_snakemake(wf, simulator.url, simulator.api_key, jobs=1)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "not in its journal" in done.stderr and str(orphan["id"]) in done.stderr
    assert (wf / "long.txt").read_text() == "long\n"
    assert [i["id"] for i in alive(simulator.truth())] == [orphan["id"]]  # named, untouched
    cleanup = subprocess.run(
        [sys.executable, "-m", "snakemake_executor_plugin_vastai", "journal", "cleanup",
         "--yes", "--api-url", simulator.url], cwd=wf, capture_output=True, text=True,
        timeout=120, env={**os.environ, "VAST_API_KEY": simulator.api_key})
    assert cleanup.returncode == 0, cleanup.stdout + cleanup.stderr
    assert alive(simulator.truth()) == []


def test_instances_of_another_workflow_are_reported_never_touched(tmp_path, simulator):
    other = write_workflow(tmp_path / "other", {"Snakefile": ONE_JOB.replace("sleep 4",
                                                                             "sleep 60")})
    proc = start_snakemake(other, simulator.url, simulator.api_key, jobs=1)
    try:
        assert wait_for(lambda: len(alive(simulator.truth())) == 1, timeout=90)
        [theirs] = alive(simulator.truth())
        wf = write_workflow(tmp_path / "wf", {"Snakefile": ONE_JOB.replace("sleep 4", "true")})
        done = run_snakemake(wf, simulator.url, simulator.api_key, jobs=1)
        assert done.returncode == 0, done.stderr[-3000:]
        assert theirs["id"] in [i["id"] for i in alive(simulator.truth())]  # never touched
        assert "for another workflow directory or machine" in done.stderr
        assert f"vastai destroy instances {theirs['id']}" in done.stderr
    finally:
        interrupt(proc)
    assert alive(simulator.truth()) == []


def test_a_run_frozen_past_the_orphan_timeout_carries_on_when_it_wakes(tmp_path, simulator):
    """A laptop asleep (SIGSTOP) longer than the orphan timeout: the idle instance destroys
    itself, the running job's instance stops after its job. Woken (SIGCONT), the run starts
    the stopped one, brings long's output home, rents anew for what the idle one was kept
    for, and ends with every output right and nothing alive; nothing is billed twice."""
    wf = write_workflow(tmp_path / "wf", {"Snakefile": SNAKEFILE})
    proc = start_snakemake(wf, simulator.url, simulator.api_key, "--vastai-orphan-timeout",
                           str(TIMEOUT), jobs=2, reuse=True)
    try:
        assert wait_for(lambda: (wf / "quick.txt").exists(), timeout=90), "quick never ran"
        assert wait_for(lambda: long_started(simulator), timeout=60)
        os.kill(proc.pid, signal.SIGSTOP)
        assert wait_for(lambda: [i["actual_status"] for i in alive(simulator.truth())]
                        == ["stopped"], timeout=TIMEOUT + 30)
        os.kill(proc.pid, signal.SIGCONT)
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out[-3000:]
    assert (wf / "final.txt").read_text() == "quick\nlong\n"
    truth = simulator.truth()
    assert alive(truth) == []
    [long_instance] = [i for i in truth["instances"] if i["stops"]]
    runs = simulator.instance_dir(long_instance["id"]) / "long-runs"
    assert runs.read_text() == "ran\n"  # long ran once: its output came home


EDIT_LOOP = """\
rule step:
    input: "params.txt"
    output: "result.txt"
    shell: "cat {input} > {output}"
"""


def test_keep_warm_a_second_run_boots_nothing_and_the_window_ends_with_no_process(
        tmp_path, simulator):
    """The edit-and-rerun loop: the first run's instance outlives it (--vastai-keep-warm);
    the second run, after an edit, adopts it and rents nothing; its own short window
    then closes with no process of ours alive: the watchdog destroys the instance."""
    wf = write_workflow(tmp_path / "wf", {"Snakefile": EDIT_LOOP, "params.txt": "a\n"},
                        track=["Snakefile", "params.txt"])
    # the watchdog's tick is a tenth of its orphan timeout (at most 30 s): 20 s -> 2 s
    first = run_snakemake(wf, simulator.url, simulator.api_key, "--vastai-keep-warm", "60",
                          "--vastai-orphan-timeout", "20", jobs=1, reuse=True)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "kept warm for 60s" in first.stderr
    [kept] = alive(simulator.truth())
    assert kept["actual_status"] == "running"
    (wf / "params.txt").write_text("b\n")  # the edit
    second = run_snakemake(wf, simulator.url, simulator.api_key, "--vastai-keep-warm", "2",
                           jobs=1, reuse=True)  # this run's default timeout: not the agent's
    assert second.returncode == 0, second.stderr[-3000:]
    assert (wf / "result.txt").read_text() == "b\n"
    truth = simulator.truth()
    assert truth["created_count"] == 1, second.stderr[-4000:]
    assert "adopted an instance kept warm" in second.stderr
    # no process of ours is alive now; the window (2 s) closes, the watchdog ends it
    assert "kept warm for 2s" in second.stderr
    assert wait_for(lambda: alive(simulator.truth()) == [], timeout=2 + 2 + 15)
    # the run left it kept (it never asked for a destroy): its watchdog ended it
    with sqlite3.connect(wf / ".snakemake" / "vastai" / "journal.sqlite") as db:
        states = db.execute("SELECT state, destroy_requested_at FROM instances").fetchall()
    assert states == [("kept", None)], states
