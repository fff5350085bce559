"""Keep-warm when things go wrong (issue 30), with the whole run in process against the
simulator (tests/harness/inprocess_run.py): a hand-over the journal refuses, and two runs
that start at once and both find the kept instance. Crashes in the middle of either are
in test_keepwarm_crashes.py."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from snakemake_executor_plugin_vastai.journal.errors import JournalError
from snakemake_executor_plugin_vastai.journal.store import Journal
from tests.harness.e2e import alive, wait_for
from tests.harness.inprocess_run import StandInJob, end, make_run, run_jobs


class RefusesKeptWarm(Journal):
    """A journal that cannot write the keep-warm hand-over (a full disk, a lock held too
    long): only that one move fails, every other write goes through."""

    def move_instance(self, label, *, trigger, **kwargs):
        if trigger == "kept_warm":
            raise JournalError("disk I/O error (injected on the kept_warm move)", self.path)
        return super().move_instance(label, trigger=trigger, **kwargs)


def instance_rows(workdir: Path) -> list[tuple]:
    with sqlite3.connect(workdir / ".snakemake" / "vastai" / "journal.sqlite") as db:
        return db.execute("SELECT instance_id, state, claimed_by, destroy_requested_at, "
                          "destroyed_at FROM instances ORDER BY created_at").fetchall()


def test_a_hand_over_the_journal_refuses_tears_the_instance_down(tmp_path, simulator):
    """The instance already carries its keep-warm window (the SSH write came first), but the
    journal does not know it is kept: it must not outlive the run unjournaled."""
    journal = RefusesKeptWarm.for_workdir(tmp_path)
    run = make_run(simulator.url, simulator.api_key, tmp_path, keep_warm=600, journal=journal)
    run.recovery.reconcile({})
    [model] = run_jobs(run, [StandInJob("echo a > out.txt")])
    assert model.state.value == "succeeded", model.failure
    [iid] = [i["id"] for i in alive(simulator.truth())]  # idle in the pool
    assert end(run) is None  # nothing pending: the teardown was confirmed
    assert run.pool.kept == 0
    assert alive(simulator.truth()) == [], "a kept instance bills with no journal row saying so"
    [(row_id, state, _, requested, destroyed)] = instance_rows(tmp_path)
    assert (row_id, state) == (iid, "gone") and requested and destroyed


def test_two_runs_starting_at_once_adopt_a_kept_instance_exactly_once(tmp_path, simulator):
    """Two runs of the workflow start together (two journal connections, as two processes
    have): one adopts the kept instance, the other leaves it alone and rents its own; it
    is leased once, and both runs end with nothing alive."""
    first = make_run(simulator.url, simulator.api_key, tmp_path, keep_warm=600)
    first.recovery.reconcile({})
    run_jobs(first, [StandInJob("echo a > out.txt")])
    assert end(first) is None and first.pool.kept == 1
    [kept] = alive(simulator.truth())

    runs = [make_run(simulator.url, simulator.api_key, tmp_path, logger=f"run{n}")
            for n in (1, 2)]
    assert runs[0].journal is not runs[1].journal
    together = threading.Barrier(2)

    def reconcile(run):
        together.wait()
        run.recovery.reconcile({})

    threads = [threading.Thread(target=reconcile, args=(run,)) for run in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(run.recovery.adopted for run in runs) == [0, 1]
    winner, loser = sorted(runs, key=lambda run: -run.recovery.adopted)
    assert winner.pool.idle_count() == 1 and loser.pool.idle_count() == 0
    assert [i["id"] for i in alive(simulator.truth())] == [kept["id"]], "the loser tore it down"
    [(_, state, owner, requested, _)] = instance_rows(tmp_path)
    assert (state, owner, requested) == ("idle", winner.run_id, None)

    # each runs a job at the same time: the winner's leases the kept instance, the loser's
    # rents one of its own
    done = {}
    threads = [threading.Thread(target=lambda run=run, n=n: done.update(
        {run.run_id: run_jobs(run, [StandInJob(f"echo {n} > out{n}.txt", jobid=n,
                                               output=[f"out{n}.txt"])])}))
               for n, run in enumerate(runs, start=2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(m.state.value == "succeeded" for models in done.values() for m in models)
    assert (winner.pool.leases, loser.pool.leases) == (1, 0)
    assert simulator.truth()["created_count"] == 2
    assert end(winner) is None and end(loser) is None
    assert wait_for(lambda: alive(simulator.truth()) == [], timeout=30)
