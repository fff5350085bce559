"""A run frozen (SIGSTOP, a laptop asleep) past the orphan timeout while its job ran: the
instance's watchdog stops it once the job has ended, and the woken run starts it again and
brings the output home (issue 30). Here: the start request's answer is lost, and the
ledger prices the stopped time at the storage rate as the simulator billed it.

The run is a process of its own (tests/harness/inprocess_run.py: a whole Run, without
Snakemake) so that it can be frozen for real."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from snakemake_executor_plugin_vastai.costs import ledger
from snakemake_executor_plugin_vastai.journal.store import Journal
from tests.harness.e2e import alive, wait_for

pytestmark = pytest.mark.timeout(150)

ROOT = Path(__file__).resolve().parents[3]
ORPHAN_TIMEOUT = 4.0  # the watchdog looks every second
JOB = "echo ran >> $HOME/runs; sleep 1; echo done > out1.txt"


def frozen_run(sim, workdir: Path, *, stopped_for: float, grace: float = 300.0,
               while_stopped=lambda: None) -> dict:
    """Start a run of JOB, freeze it once the job runs, wake it ``stopped_for`` seconds
    after its instance stopped itself (``while_stopped`` is called just before); its
    outcome (the harness's JSON line)."""
    argv = [sys.executable, "-m", "tests.harness.inprocess_run", "--api-url", sim.url,
            "--workdir", str(workdir), "--orphan-timeout", str(ORPHAN_TIMEOUT),
            "--grace", str(grace), "--command", JOB]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True,
                            env={**os.environ, "VAST_API_KEY": sim.api_key,
                                 "PYTHONPATH": str(ROOT)})
    try:
        assert wait_for(lambda: any((sim.instance_dir(i["id"]) / "runs").exists()
                                    for i in alive(sim.truth())), timeout=60)
        os.kill(proc.pid, signal.SIGSTOP)
        assert wait_for(lambda: [i["actual_status"] for i in alive(sim.truth())]
                        == ["stopped"], timeout=ORPHAN_TIMEOUT + 20)
        time.sleep(stopped_for)
        while_stopped()
        os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out + err[-4000:]
    return json.loads(out.strip().splitlines()[-1])


def ran_once_and_came_home(sim, workdir: Path) -> dict:
    """The job's output is home, it ran once, on the one instance, stopped once; nothing
    alive. The instance's ground truth."""
    assert (workdir / "out1.txt").read_text() == "done\n"
    truth = sim.truth()
    assert truth["created_count"] == 1 and alive(truth) == []
    [instance] = truth["instances"]
    assert instance["stops"] == 1
    assert (sim.instance_dir(instance["id"]) / "runs").read_text() == "ran\n"
    return instance


def test_a_start_whose_answers_are_lost_is_not_given_up_on(tmp_path, simulator):
    """The server starts the instance, but no answer to the start request arrives for
    longer than the preemption grace: the run must not abandon the instance (destroying it
    would lose the finished output and run the job again) when the listing shows it
    starting; it waits for it, and the output comes home."""
    lost = {}

    def lose_start_answers():
        # every answer to a PUT on the instance (the start) for ~10 s of retries
        lost["fault"] = simulator.add_fault("answer_lost", endpoint="PUT /api/v0/instances/*",
                                            count=7, mode="reset")

    outcome = frozen_run(simulator, tmp_path, stopped_for=0.5, grace=4.0,
                         while_stopped=lose_start_answers)
    assert outcome["states"] == ["succeeded"], outcome
    ran_once_and_came_home(simulator, tmp_path)
    assert simulator.truth()["rejected"].get("answer_lost", 0) >= 2


def test_the_ledger_prices_a_self_stopped_instance_as_the_simulator_billed_it(
        tmp_path, simulator):
    """Stopped while the run slept, the instance billed storage only: the journal's ledger
    (what ``journal cost`` shows) counts that time as storage, from the stop, not from when
    the woken run noticed it, and matches the simulator's bill."""
    outcome = frozen_run(simulator, tmp_path, stopped_for=6.0)
    assert outcome["states"] == ["succeeded"], outcome
    truth = ran_once_and_came_home(simulator, tmp_path)
    journal = Journal.for_workdir(tmp_path)
    [row] = [r for r in journal.instances() if r["instance_id"] == truth["id"]]
    journal.close()
    seconds, dollars = ledger.billed(row, time.time())
    parts = ledger.components(row, seconds)
    stopped = ledger.stopped_seconds(row, seconds)
    assert truth["stopped_seconds"] >= 6.0
    # the stopped interval at the storage rate, the rest at the running rate, as billed;
    # the journal's clock reads a few tenths of a second off the simulator's at each end
    assert stopped == pytest.approx(truth["stopped_seconds"], abs=1.0)
    assert seconds - stopped == pytest.approx(
        truth["billed_seconds"] - truth["stopped_seconds"], abs=1.0)
    assert parts["storage"] == pytest.approx(truth["storage_dollars_stopped"], rel=0.2)
    assert dollars == pytest.approx(truth["billed_dollars"], rel=0.15)
