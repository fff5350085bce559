"""A run killed in the middle of a keep-warm hand-over or of an adoption (issue 30): the next
run adopts the instance or tears it down, and with no run after it, the instance's own
watchdog ends it when the keep-warm window closes: nothing bills past the window with no
process alive. The killed run is a process of its own (tests/harness/inprocess_run.py, a
whole Run without Snakemake) that SIGKILLs itself at a crash point
(``lifecycle/outcomes.KEEP_WARM_CRASH_POINTS``); the runs before and after it run in this
process."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from snakemake_executor_plugin_vastai.lifecycle.outcomes import CRASH_ENV
from tests.harness.e2e import alive, wait_for
from tests.harness.inprocess_run import StandInJob, end, make_run, run_jobs

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[3]
ORPHAN_TIMEOUT = 20.0  # the watchdog looks every 2 s; its heartbeat rule alone would wait 20 s


def crashing_run(sim, workdir: Path, point: str, *commands: str,
                 keep_warm: float) -> subprocess.CompletedProcess:
    """A run in a process of its own, killed (SIGKILL) at ``point``."""
    argv = [sys.executable, "-m", "tests.harness.inprocess_run", "--api-url", sim.url,
            "--workdir", str(workdir), "--keep-warm", str(keep_warm),
            "--orphan-timeout", str(ORPHAN_TIMEOUT)]
    for command in commands:
        argv += ["--command", command]
    env = {**os.environ, "VAST_API_KEY": sim.api_key, CRASH_ENV: point,
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=90)
    assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr[-3000:]
    return done


def instance_rows(workdir: Path) -> list[dict]:
    with sqlite3.connect(workdir / ".snakemake" / "vastai" / "journal.sqlite") as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM instances ORDER BY created_at")]


def kept_by_a_run(sim, workdir: Path, keep_warm: float) -> dict:
    """A first run that ends normally and keeps its idle instance warm."""
    first = make_run(sim.url, sim.api_key, workdir, keep_warm=keep_warm,
                     orphan_timeout=ORPHAN_TIMEOUT)
    first.recovery.reconcile({})
    run_jobs(first, [StandInJob("echo a > out.txt")])
    assert end(first) is None and first.pool.kept == 1
    [kept] = alive(sim.truth())
    return kept


def next_run_ends_clean(sim, workdir: Path) -> object:
    """The next run: reconcile, one job, its end; nothing may be alive after it."""
    run = make_run(sim.url, sim.api_key, workdir, logger="next-run")
    run.recovery.reconcile({})
    [model] = run_jobs(run, [StandInJob("echo b > out2.txt", jobid=2, output=["out2.txt"])])
    assert model.state.value == "succeeded", model.failure
    assert end(run) is None
    assert wait_for(lambda: alive(sim.truth()) == [], timeout=30)
    return run


def test_killed_mid_hand_over_the_next_run_tears_the_instance_down(tmp_path, simulator):
    """The window is on the instance, the journal still says idle: the next run cannot know
    the window was written, so it does not adopt; it tears the instance down at its start."""
    crashing_run(simulator, tmp_path, "after_keep_warm_write", "echo a > out1.txt",
                 keep_warm=600)
    [left] = alive(simulator.truth())
    assert [r["state"] for r in instance_rows(tmp_path)] == ["idle"]
    run = next_run_ends_clean(simulator, tmp_path)
    assert run.recovery.adopted == 0 and run.recovery.destroyed_at_start == 1
    row = next(r for r in instance_rows(tmp_path) if r["instance_id"] == left["id"])
    assert row["destroy_requested_at"] is not None and row["destroyed_at"] is not None


def test_killed_mid_hand_over_with_no_run_after_it_ends_when_the_window_closes(
        tmp_path, simulator):
    crashing_run(simulator, tmp_path, "after_keep_warm_write", "echo a > out1.txt",
                 keep_warm=5)
    killed = time.monotonic()
    assert len(alive(simulator.truth())) == 1
    # the window (5 s) plus a watchdog tick (2 s) and a little: not the 20 s orphan timeout
    assert wait_for(lambda: alive(simulator.truth()) == [], timeout=5 + 2 + 3), \
        "the instance billed past its keep-warm window with no process of ours alive"
    assert time.monotonic() - killed >= 3  # the window held it until then
    # the next run learns it is gone (never asks for a destroy) and leaves nothing
    next_run_ends_clean(simulator, tmp_path)
    assert simulator.truth()["created_count"] == 2


def test_killed_mid_adoption_the_next_run_adopts_the_instance(tmp_path, simulator):
    """Taken over (``claimed_by``) and its key attached, still ``kept``: the run that comes
    next takes it over from the dead adopter and boots nothing."""
    kept = kept_by_a_run(simulator, tmp_path, keep_warm=600)
    crashing_run(simulator, tmp_path, "adopting", keep_warm=0)
    [row] = instance_rows(tmp_path)
    assert row["state"] == "kept" and row["claimed_by"] is not None
    run = next_run_ends_clean(simulator, tmp_path)
    assert run.recovery.adopted == 1 and run.pool.leases == 1
    truth = simulator.truth()
    assert truth["created_count"] == 1
    assert [i["id"] for i in truth["instances"]] == [kept["id"]]


def test_killed_after_adoption_with_no_run_after_it_ends_when_the_window_closes(
        tmp_path, simulator):
    """Adopted in the journal (idle, the dead run's) but never fed a heartbeat: the window
    the first run wrote still decides, and the watchdog ends the instance when it closes."""
    kept_by_a_run(simulator, tmp_path, keep_warm=8)
    kept_at = time.monotonic()
    crashing_run(simulator, tmp_path, "after_adopted", keep_warm=0)
    assert [r["state"] for r in instance_rows(tmp_path)] == ["idle"]
    assert wait_for(lambda: alive(simulator.truth()) == [],
                    timeout=max(8 + 2 + 3 - (time.monotonic() - kept_at), 0.5)), \
        "the instance billed past its keep-warm window with no process of ours alive"
    run = next_run_ends_clean(simulator, tmp_path)
    assert run.recovery.adopted == 0
