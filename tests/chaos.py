"""Chaos trials: SIGKILL Snakemake at a seeded random moment, restart, repeat until done.

Shared by ``tests/test_chaos.py`` (20+ trials) and ``benchmarks/chaos.py``
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

import random
import signal
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from snakemake_executor_plugin_vastai.driver import CRASH_ENV, CRASH_POINTS
from snakemake_executor_plugin_vastai.simulator.server import SimConfig, Simulator
from tests.e2e import sim_env, snakemake_argv, write_workflow

JOBS = 3
SNAKEFILE = (f'rule all:\n    input: expand("out/o{{i}}.txt", i=range({JOBS}))\n'
             'rule work:\n    output: "out/o{i}.txt"\n'
             '    shell: "sleep 2; echo job{wildcards.i} > {output}"\n')
MAX_RUNS = 6


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

    @property
    def ok(self) -> bool:
        return (self.outputs_ok and self.leaked == 0 and not self.foreign_touched
                and self.rented_after_restart == self.expected_rents_after_restart
                and not self.errors)


def _journal(wf: Path, sql: str) -> list[tuple]:
    path = wf / ".snakemake/vastai/journal.sqlite"
    if not path.exists():
        return []
    with sqlite3.connect(path) as db:
        return db.execute(sql).fetchall()


def _live_unfinished_jobs(wf: Path, truth: dict) -> set[str]:
    """Journaled jobs not yet over whose instance is alive: the next run must resume them."""
    live = {i["label"] for i in truth["instances"] if i["alive"] and not i["foreign"]}
    rows = _journal(wf, "SELECT id, label FROM jobs j WHERE label IS NOT NULL AND state NOT IN "
                        "('succeeded','failed','cancelled','destroying') AND NOT EXISTS "
                        "(SELECT 1 FROM jobs later WHERE later.resumed_from = j.id)")
    return {job for job, label in rows if label in live}


def _latest_run(wf: Path) -> tuple[set[str], int]:
    """(jobs the latest run resumed, number of jobs it ran)."""
    run = _journal(wf, "SELECT id FROM runs ORDER BY started_at DESC LIMIT 1")[0][0]
    rows = _journal(wf, f"SELECT resumed_from FROM jobs WHERE run_id = '{run}'")
    return {r[0] for r in rows if r[0]}, len(rows)


def _run(wf: Path, sim: Simulator, *extra: str, crash_at: str | None = None,
         kill_after: float | None = None, timeout: float = 120) -> str:
    """One snakemake run; returns how it ended: 'done', 'failed', 'killed', 'crashed'."""
    env = sim_env(sim.api_key)
    if crash_at:
        env[CRASH_ENV] = crash_at
    proc = subprocess.Popen(snakemake_argv(sim.url, "--rerun-incomplete", *extra, jobs=JOBS),
                            cwd=wf, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=kill_after if kill_after is not None else timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return "killed"
    if proc.returncode == -signal.SIGKILL:
        return "crashed"
    return "done" if proc.returncode == 0 else "failed"


def _unlock(wf: Path, sim: Simulator) -> None:
    subprocess.run([sys.executable, "-m", "snakemake", "--unlock"], cwd=wf,
                   env=sim_env(sim.api_key), capture_output=True, timeout=120)


def run_trial(seed: int, root: Path) -> TrialResult:
    """One trial; see the module docstring."""
    rng = random.Random(seed)
    result = TrialResult(seed=seed)
    wf = write_workflow(root / f"trial{seed}", {"Snakefile": SNAKEFILE})
    with Simulator(SimConfig(seed=seed, boot_delay=0.3)) as sim:
        sim.start()
        foreign = sim.create_foreign_instance(label="not-ours")
        crash_at = rng.choice(CRASH_POINTS) if rng.random() < 0.4 else None
        kill_after = None if crash_at else rng.uniform(0.5, 9.0)
        outcome = _run(wf, sim, crash_at=crash_at, kill_after=kill_after)
        result.runs = 1
        last_kill = crash_at or f"t+{kill_after:.1f}s"
        while outcome in ("killed", "crashed") and result.runs < MAX_RUNS:
            result.kills.append(last_kill)
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
    result.outputs_ok = all(
        (wf / f"out/o{i}.txt").exists() and (wf / f"out/o{i}.txt").read_text() == f"job{i}\n"
        for i in range(JOBS))
    return result


def _check_restart(wf: Path, sim: Simulator, rng: random.Random, result: TrialResult) -> None:
    """Restart after a kill: every live unfinished job must be resumed, the rest rented."""
    truth = sim.truth()
    must_resume = _live_unfinished_jobs(wf, truth)
    result.resumable_after_kill += len(must_resume)
    _unlock(wf, sim)
    kill_again = rng.random() < 0.25 and result.runs < 3
    outcome = _run(wf, sim, kill_after=rng.uniform(1.0, 8.0) if kill_again else None)
    result.runs += 1
    result.last_outcome = outcome
    rented = sim.truth()["created_count"] - truth["created_count"]
    result.rented_after_restart += rented
    if outcome in ("killed", "crashed"):
        result.expected_rents_after_restart += rented  # judged again after the next restart
        return
    resumed, ran = _latest_run(wf)
    result.expected_rents_after_restart += ran - len(resumed)
    if not must_resume <= resumed:
        result.errors.append(f"not resumed: {sorted(must_resume - resumed)}")


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
        "failures": [(r.seed, r.errors, r.kills) for r in results if not r.ok],
    }


def main() -> int:
    import argparse
    import json
    import tempfile

    parser = argparse.ArgumentParser(description="Chaos trials against the simulator.")
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=3)
    args = parser.parse_args()
    started = time.monotonic()
    with (tempfile.TemporaryDirectory(prefix="vastai-chaos-") as tmp,
          ThreadPoolExecutor(max_workers=args.workers) as pool):
            results = list(pool.map(lambda n: run_trial(args.seed + n, Path(tmp)),
                                    range(args.trials)))
    report = summarize(results)
    report["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] == report["trials"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
