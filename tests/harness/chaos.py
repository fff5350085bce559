"""Chaos trials: SIGKILL Snakemake at a seeded random moment, restart, repeat until done.

Each trial also meets one adversity class (``CLASSES``, by seed): lost API answers,
destroys failing while the kill lands, a second run in the same directory, a locked
journal, a full disk under the journal, the code changed between crash and restart, the
directory copied after the crash, hosts that forgot the crashed run's SSH key (the
restart cannot re-attach over SSH and must boot the job again, within seconds). Outputs
are compared with Snakemake's local executor on the same (final) Snakefile, and no job
may be re-attached after its code changed.
Half the trials of each class run with warm instances (``--jobs 2`` for three jobs, so
the third job leases an instance given back by another; kills then also land on idle
and leased instances); the other half keep one instance per job.

Shared by ``tests/e2e/test_chaos.py`` (20+ trials) and ``benchmarks/chaos.py``
(200). One trial: a workflow of a few short jobs on a fresh simulator holding
a foreign instance that belongs to no workflow. Run 1 is killed either after
a random delay or at a named crash point inside the plugin (for the moments a
timer rarely hits, such as between the create request and the journal write
of its answer). After each kill, the journal and the simulator's ground truth
say which unfinished jobs still have a live instance: those must be resumed by
the next run, not rented again. Then ``snakemake --unlock`` and a restart,
killed again with some probability, until the workflow completes.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snakemake_executor_plugin_vastai.lifecycle.driver import CRASH_ENV, CRASH_POINTS
from snakemake_executor_plugin_vastai.simulator import sandbox
from snakemake_executor_plugin_vastai.simulator.server import SimConfig, Simulator
from tests.harness.e2e import sim_env, snakemake_argv, write_workflow

JOBS = 3
TAG_LINE = 'TAG = "job"\n'
SNAKEFILE = (TAG_LINE
             + f'rule all:\n    input: expand("out/o{{i}}.txt", i=range({JOBS}))\n'
             'rule work:\n    output: "out/o{i}.txt"\n    params: tag=TAG\n'
             '    shell: "sleep 2; echo {params.tag}{wildcards.i} > {output}"\n'
             'rule side:\n    output: "side.txt"\n    shell: "sleep 1; echo side > {output}"\n')
MAX_RUNS = 6
# What goes wrong besides the kill, one class per trial (seed % len): the kill alone; API
# answers lost after the server acted; destroys failing while the kill lands; a second run
# in the same directory; the journal locked by another process; the disk under the journal
# full; the code changed between crash and restart; the directory copied after the crash.
CLASSES = ("kill", "lost_answers", "failing_destroys", "concurrent_run", "locked_journal",
           "full_disk", "changed_code", "copied_dir", "lost_keys", "frozen", "gone")
# The instance-side watchdog's classes (issue 30) run with a short orphan timeout: "frozen"
# stops the first run (SIGSTOP, a laptop asleep) past it instead of killing it, then wakes
# it; "gone" waits past it after the kill, so the watchdogs act before the restart.
ORPHAN_TIMEOUT = 3.0
WATCHDOG_CLASSES = {"frozen", "gone"}
LOST_MODES = ("reset", "truncate", "html")
LOGS_ENV = "VASTAI_CHAOS_LOGS"  # a directory: every run's output is kept there
# Bid instances (issue 15): not in CLASSES (run by tests/e2e/test_chaos_bids.py); the work
# rule rents bid instances, and the simulator outbids some of them at seeded moments.
BID_CLASS = "preemptions"
BID_SNAKEFILE = SNAKEFILE.replace('    params: tag=TAG\n',
                                  '    params: tag=TAG\n    resources: vastai_interruptible=True\n')
GRACE_ENV = "SNAKEMAKE_VASTAI_PREEMPTION_GRACE"  # set by the caller: short, for never-back


@dataclass
class TrialResult:
    seed: int
    runs: int = 0
    kills: list[str] = field(default_factory=list)
    resumable_after_kill: int = 0  # unfinished jobs whose instance survived a kill
    rented_after_restart: int = 0
    expected_rents_after_restart: int = 0
    leaked: int = 0
    foreign_touched: bool = False
    outputs_ok: bool = False
    extra_billed_seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    last_outcome: str = ""
    adversity: str = "kill"
    stale_resumes: int = 0  # jobs re-attached although their code changed
    changed_at: float | None = None  # changed_code: when the Snakefile was changed
    skipped: bool = False  # the class cannot run here (full_disk without mount rights)
    preemptions: int = 0  # outbid faults that fired (the preemptions class)
    reuse: bool = False  # warm instances: a finished job's instance serves the next job
    leased: int = 0  # jobs that leased a warm instance instead of renting
    env_extra: dict[str, str] = field(default_factory=dict)  # every run's (watchdog classes)
    frozen: bool = False  # the frozen class: the first run was stopped and woken

    @property
    def ok(self) -> bool:
        return (self.outputs_ok and self.leaked == 0 and not self.foreign_touched
                and self.rented_after_restart == self.expected_rents_after_restart
                and not self.errors and self.stale_resumes == 0)


def _journal(wf: Path, sql: str) -> list[tuple]:
    path = wf / ".snakemake/vastai/journal.sqlite"
    if not path.exists():
        return []
    try:
        with sqlite3.connect(path, timeout=30) as db:
            return db.execute(sql).fetchall()
    except sqlite3.Error:  # a journal never created (a full disk at start)
        return []


def _live_unfinished_jobs(wf: Path, truth: dict, started_after: float | None = None) -> set[str]:
    """Journaled jobs not yet over whose instance is alive: the next run must resume them
    (only those started after ``started_after``, the moment the code changed)."""
    live = {i["label"] for i in truth["instances"] if i["alive"] and not i["foreign"]}
    # A job whose instance already has a destroy requested (a torn-down job thread) is
    # finished off, not resumed.
    rows = _journal(wf, "SELECT id, label, created_at FROM jobs j WHERE label IS NOT NULL AND "
                        "state NOT IN ('succeeded','failed','cancelled','destroying') AND NOT "
                        "EXISTS (SELECT 1 FROM jobs later WHERE later.resumed_from = j.id) "
                        "AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.label = j.label "
                        "AND i.destroy_requested_at IS NOT NULL)")
    return {job for job, label, created in rows
            if label in live and (started_after is None or created > started_after)}


def _stale_resumes(wf: Path, changed_at: float) -> int:
    """Jobs of the latest run that re-attached to a job started before the code changed."""
    rows = _journal(wf, "SELECT count(*) FROM jobs j JOIN jobs old ON old.id = j.resumed_from "
                        "WHERE j.run_id = (SELECT id FROM runs ORDER BY started_at DESC "
                        f"LIMIT 1) AND old.created_at < {changed_at!r}")
    return int(rows[0][0]) if rows else 0


def _latest_run(wf: Path) -> tuple[set[str], int, int]:
    """(jobs the latest run resumed, number of jobs it ran, jobs that leased a warm
    instance instead of renting)."""
    runs = _journal(wf, "SELECT id FROM runs ORDER BY started_at DESC LIMIT 1")
    if not runs:
        return set(), 0, 0
    run = runs[0][0]
    rows = _journal(wf, f"SELECT resumed_from FROM jobs WHERE run_id = '{run}'")
    leased = _journal(wf, "SELECT count(*) FROM transitions t JOIN jobs j ON j.id = t.job_id "
                          f"WHERE j.run_id = '{run}' AND t.trigger = 'leased'")
    return {r[0] for r in rows if r[0]}, len(rows), int(leased[0][0]) if leased else 0


def _run(wf: Path, sim: Simulator, *extra: str, crash_at: str | None = None,
         kill_after: float | None = None, timeout: float = 180,
         env_extra: dict[str, str] | None = None, during: Any = None,
         reuse: bool = False) -> str:
    """One snakemake run; returns how it ended: 'done', 'failed', 'killed', 'crashed'.

    ``during(proc)`` runs while the process runs (a second run, a journal lock ...)."""
    env = sim_env(sim.api_key, **(env_extra or {}))
    if crash_at:
        env[CRASH_ENV] = crash_at
    out: Any = subprocess.DEVNULL
    if os.environ.get(LOGS_ENV):  # keep each run's output to look into a failing trial
        logs = Path(os.environ[LOGS_ENV])
        logs.mkdir(parents=True, exist_ok=True)
        out = open(logs / f"{wf.name}-{time.time():.3f}.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(snakemake_argv(sim.url, "--rerun-incomplete", *extra,
                                           jobs=JOBS - 1 if reuse else JOBS, reuse=reuse),
                            cwd=wf, env=env, stdout=out, stderr=subprocess.STDOUT)
    helper = threading.Thread(target=during, args=(proc,), daemon=True) if during else None
    if helper is not None:
        helper.start()
    try:
        proc.wait(timeout=kill_after if kill_after is not None else timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return "killed"
    finally:
        if helper is not None:
            helper.join(timeout=120)
    if proc.returncode == -signal.SIGKILL:
        return "crashed"
    return "done" if proc.returncode == 0 else "failed"


def _unlock(wf: Path, sim: Simulator) -> None:
    subprocess.run([sys.executable, "-m", "snakemake", "--unlock"], cwd=wf,
                   env=sim_env(sim.api_key), capture_output=True, timeout=120)


_ORACLE: dict[str, dict[str, str]] = {}
_ORACLE_LOCK = threading.Lock()


def expected_outputs(snakefile: str) -> dict[str, str]:
    """The oracle: what Snakemake's local executor makes of the same Snakefile."""
    with _ORACLE_LOCK:
        if snakefile not in _ORACLE:
            with tempfile.TemporaryDirectory(prefix="vastai-chaos-oracle-") as tmp:
                (Path(tmp) / "Snakefile").write_text(snakefile)
                subprocess.run([sys.executable, "-m", "snakemake", "all", "side.txt", "-c2"],
                               cwd=tmp, check=True, capture_output=True, timeout=300)
                _ORACLE[snakefile] = _outputs(Path(tmp))
        return _ORACLE[snakefile]


def _outputs(wf: Path) -> dict[str, str]:
    found = [*sorted((wf / "out").glob("o*.txt")), wf / "side.txt"]
    return {str(p.relative_to(wf)): p.read_text() for p in found if p.exists()}


def _outputs_match(wf: Path, *, with_side: bool) -> bool:
    expected = dict(expected_outputs((wf / "Snakefile").read_text()))
    if not with_side:
        expected.pop("side.txt", None)
    got = _outputs(wf)
    if not with_side:
        got.pop("side.txt", None)
    return got == expected


def run_trial(seed: int, root: Path, adversity: str | None = None,
              reuse: bool | None = None) -> TrialResult:
    """One trial; see the module docstring. ``reuse`` None: by seed (half of each class)."""
    rng = random.Random(seed)
    adversity = adversity or CLASSES[seed % len(CLASSES)]
    if reuse is None:
        reuse = (seed // len(CLASSES)) % 2 == 1
    result = TrialResult(seed=seed, adversity=adversity, reuse=reuse)
    wf = write_workflow(root / f"trial{seed}", {
        "Snakefile": BID_SNAKEFILE if adversity == BID_CLASS else SNAKEFILE})
    if adversity == "full_disk" and not sandbox.can_mount():
        result.skipped = True
        adversity = result.adversity = "kill"
    with Simulator(SimConfig(seed=seed, boot_delay=0.3)) as sim, _small_disk(wf, adversity):
        sim.start()
        foreign = sim.create_foreign_instance(label="not-ours")
        crash_at = rng.choice(CRASH_POINTS) if rng.random() < 0.4 else None
        kill_after = None if crash_at else rng.uniform(0.5, 9.0)
        if adversity in WATCHDOG_CLASSES:
            result.env_extra = {"SNAKEMAKE_VASTAI_ORPHAN_TIMEOUT": f"{ORPHAN_TIMEOUT:g}"}
        if adversity == "frozen":  # not killed: stopped, then woken (see _adversity...)
            crash_at, kill_after = None, None
        run_kwargs = _adversity_first_run(adversity, wf, sim, rng, result)
        outcome = _run(wf, sim, crash_at=crash_at, kill_after=kill_after, reuse=reuse,
                       **run_kwargs)
        result.runs = 1
        if outcome == "done":
            result.leased += _latest_run(wf)[2]
        last_kill = crash_at or (f"t+{kill_after:.1f}s" if kill_after else "frozen")
        if outcome == "failed" and adversity in ("locked_journal", "full_disk"):
            outcome = "crashed"  # a journal that refused writes may fail run 1; restart
        while outcome in ("killed", "crashed") and result.runs < MAX_RUNS:
            result.kills.append(last_kill)
            _between_runs(adversity, wf, sim, result)
            _check_restart(wf, sim, rng, result)
            outcome, last_kill = result.last_outcome, "restart killed"
        if outcome == "failed":
            result.errors.append(f"run {result.runs} failed")
        elif outcome != "done":
            result.errors.append(f"not done after {result.runs} runs")
        truth = sim.truth()
        ours = [i for i in truth["instances"] if not i["foreign"]]
        result.leaked = sum(1 for i in ours if i["alive"])
        theirs = next(i for i in truth["instances"] if i["id"] == foreign)
        result.foreign_touched = not theirs["alive"]
        result.extra_billed_seconds = sum(i["billed_seconds"] for i in ours)
        result.preemptions = int(truth.get("preemptions", 0))
        result.outputs_ok = _outputs_match(wf, with_side=adversity == "concurrent_run")
    return result


def _adversity_first_run(adversity: str, wf: Path, sim: Simulator, rng: random.Random,
                         result: TrialResult) -> dict[str, Any]:
    """Faults and companions of the first (killed) run."""
    if adversity == "frozen":
        def freeze(proc: subprocess.Popen) -> None:
            time.sleep(rng.uniform(0.5, 6.0))
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGSTOP)
                time.sleep(ORPHAN_TIMEOUT + rng.uniform(3.0, 8.0))  # past it: watchdogs act
                os.kill(proc.pid, signal.SIGCONT)
                result.frozen = True
        return {"during": freeze, "env_extra": result.env_extra}
    if adversity == "gone":
        return {"env_extra": result.env_extra}
    if adversity == "lost_answers":
        sim.add_fault("answer_lost", endpoint="*", fraction=0.2, count=6,
                      mode=rng.choice(LOST_MODES))
    elif adversity == "failing_destroys":
        sim.add_fault("api_status", code=503, endpoint="DELETE *", fraction=0.8, count=40)
    elif adversity == "concurrent_run":
        def second_run(_proc: subprocess.Popen) -> None:
            time.sleep(rng.uniform(0.5, 3.0))
            outcome = _run(wf, sim, "side.txt", timeout=180, reuse=result.reuse)
            if outcome != "done" or (wf / "side.txt").read_text() != "side\n":
                result.errors.append(f"the concurrent run ended {outcome}")
        return {"during": second_run}
    elif adversity == "locked_journal":
        def hold_lock(_proc: subprocess.Popen) -> None:
            time.sleep(rng.uniform(1.0, 5.0))
            _hold_journal_lock(wf, rng.uniform(2.0, 5.0))
        return {"during": hold_lock, "env_extra": {"SNAKEMAKE_VASTAI_JOURNAL_BUSY_TIMEOUT": "1"}}
    elif adversity == "full_disk":
        def fill(_proc: subprocess.Popen) -> None:
            time.sleep(rng.uniform(1.0, 5.0))
            _fill(wf / ".snakemake/vastai/filler")
        return {"during": fill}
    elif adversity == BID_CLASS:
        for _ in range(rng.randint(1, 3)):  # some come back within the grace, some never
            sim.add_fault("outbid", next_n=rng.randint(1, 2),
                          at_state=rng.choice(["loading", "running"]),
                          after_seconds=rng.uniform(0.0, 2.5),
                          back_after=rng.choice([None, rng.uniform(0.3, 2.0)]))
    return {}


def _between_runs(adversity: str, wf: Path, sim: Simulator, result: TrialResult) -> None:
    """After a kill, before the restart: what the adversity changes."""
    sim.clear_faults()
    (wf / ".snakemake/vastai/filler").unlink(missing_ok=True)
    if adversity == "gone":  # nobody comes back for a while: the watchdogs act meanwhile
        time.sleep(ORPHAN_TIMEOUT + 6.0)
    if adversity == "changed_code" and TAG_LINE in (wf / "Snakefile").read_text():
        (wf / "Snakefile").write_text(SNAKEFILE.replace(TAG_LINE, 'TAG = "JOB"\n'))
        result.changed_at = time.time()  # jobs started before this may not be resumed
    if adversity == "lost_keys":
        for inst in sim.truth()["instances"]:
            if inst["alive"] and not inst["foreign"]:
                sim.add_fault("keys_lost", instance_id=inst["id"])
    if adversity == "copied_dir" and not (wf.parent / f"{wf.name}-copy").exists():
        copy = wf.parent / f"{wf.name}-copy"
        shutil.copytree(wf, copy, ignore=shutil.ignore_patterns("filler"))
        _unlock(copy, sim)
        outcome = _run(copy, sim, reuse=result.reuse)
        if outcome != "done" or not _outputs_match(copy, with_side=False):
            result.errors.append(f"the copied directory's run ended {outcome}")


def _hold_journal_lock(wf: Path, seconds: float) -> None:
    """Another process's long write transaction on the journal."""
    path = wf / ".snakemake/vastai/journal.sqlite"
    if not path.exists():
        return
    db = sqlite3.connect(path, isolation_level=None, timeout=10)
    try:
        db.execute("BEGIN EXCLUSIVE")
        time.sleep(seconds)
        db.execute("ROLLBACK")
    except sqlite3.Error:
        pass
    finally:
        db.close()


def _fill(path: Path) -> None:
    """Fill the small disk under the journal until it refuses."""
    with contextlib.suppress(OSError), open(path, "wb") as out:
        while True:
            out.write(b"\0" * 65536)
            out.flush()


@contextlib.contextmanager
def _small_disk(wf: Path, adversity: str) -> Iterator[None]:
    """full_disk: the journal's directory on a 4 MiB tmpfs (filled during the run)."""
    if adversity != "full_disk":
        yield
        return
    target = wf / ".snakemake/vastai"
    target.mkdir(parents=True, exist_ok=True)
    mounted = sandbox.mount_small_disk(target, 4 * 1024 * 1024)
    try:
        yield
    finally:
        if mounted:
            sandbox.unmount(target)


def _check_restart(wf: Path, sim: Simulator, rng: random.Random, result: TrialResult) -> None:
    """Restart after a kill: every live unfinished job must be resumed, the rest rented;
    after a code change nothing may be resumed."""
    truth = sim.truth()
    changed = result.changed_at is not None
    must_resume = _live_unfinished_jobs(wf, truth, started_after=result.changed_at)
    result.resumable_after_kill += len(must_resume)
    _unlock(wf, sim)
    kill_again = rng.random() < 0.25 and result.runs < 3
    outcome = _run(wf, sim, kill_after=rng.uniform(1.0, 8.0) if kill_again else None,
                   reuse=result.reuse, env_extra=result.env_extra)
    result.runs += 1
    result.last_outcome = outcome
    rented = sim.truth()["created_count"] - truth["created_count"]
    result.rented_after_restart += rented
    if changed:  # a resume of a job started before the code changed returns old code
        result.stale_resumes += _stale_resumes(wf, result.changed_at)
    if outcome in ("killed", "crashed"):
        result.expected_rents_after_restart += rented  # judged again after the next restart
        return
    resumed, ran, leased = _latest_run(wf)
    result.leased += leased
    result.expected_rents_after_restart += ran - len(resumed) - leased + _rents_again(wf)
    if not must_resume <= resumed:
        result.errors.append(f"not resumed: {sorted(must_resume - resumed)}")


def _rents_again(wf: Path) -> int:
    """Rents of the latest run after a bid instance stayed outbid past the grace."""
    rows = _journal(wf, "SELECT count(*) FROM transitions WHERE trigger = 'rent_again' AND "
                        "run_id = (SELECT id FROM runs ORDER BY started_at DESC LIMIT 1)")
    return int(rows[0][0]) if rows else 0


def assert_clean(report: dict, trials: int) -> None:
    """What every batch of trials must show: nothing leaked or touched that was not
    ours, every trial ended well, every output set equals the local executor's."""
    assert report["failures"] == []
    assert report["leaks"] == 0
    assert report["foreign_touched"] == 0
    assert report["ok"] == trials
    assert report["outputs_equal_to_local"] == trials


def summarize(results: list[TrialResult]) -> dict:
    return {
        "trials": len(results),
        "ok": sum(r.ok for r in results),
        "kills": sum(len(r.kills) for r in results),
        "crash_points": sorted({k for r in results for k in r.kills if not k.startswith("t+")}),
        "leaks": sum(r.leaked for r in results),
        "foreign_touched": sum(r.foreign_touched for r in results),
        "resumable_after_kill": sum(r.resumable_after_kill for r in results),
        "rented_after_restart": sum(r.rented_after_restart for r in results),
        "re_rents_avoided": sum(r.resumable_after_kill for r in results),
        "billed_seconds_total": round(sum(r.extra_billed_seconds for r in results), 1),
        "stale_resumes": sum(r.stale_resumes for r in results),
        "outputs_equal_to_local": sum(r.outputs_ok for r in results),
        "by_class": {c: sum(1 for r in results if r.adversity == c) for c in CLASSES},
        "skipped_full_disk": sum(r.skipped for r in results),
        "with_reuse": sum(r.reuse for r in results),
        "leased": sum(r.leased for r in results),
        "failures": [(r.seed, r.adversity, r.errors, r.kills) for r in results if not r.ok],
    }


def main() -> int:
    import argparse
    import json
    import tempfile

    parser = argparse.ArgumentParser(description="Chaos trials against the simulator.")
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--only", choices=[*CLASSES, BID_CLASS],
                        help="run every trial with this class")
    args = parser.parse_args()
    started = time.monotonic()
    with (tempfile.TemporaryDirectory(prefix="vastai-chaos-") as tmp,
          ThreadPoolExecutor(max_workers=args.workers) as pool):
            results = list(pool.map(lambda n: run_trial(args.seed + n, Path(tmp), args.only),
                                    range(args.trials)))
    report = summarize(results)
    report["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] == report["trials"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
