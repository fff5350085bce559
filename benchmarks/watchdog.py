"""Issue 30's figures: what a crash costs with the instance-side watchdog and without, and
the edit-and-rerun loop with ``--vastai-keep-warm`` and without. Dollars are the
simulator's ground truth (``billed_compute_dollars``), beside wall time.

``python -m benchmarks.watchdog [--repeats N] [--scale S]``

1. **Crash.** A workflow whose ``quick`` job leaves its instance idle in the pool while
   ``long`` (``--long`` seconds) runs; Snakemake is killed with SIGKILL once ``long`` runs.
   Compute billed in the ``--horizon`` seconds after the kill, summed over the instances,
   with ``--vastai-orphan-timeout`` = ``--timeout`` and with 0 (no watchdog). Without a
   watchdog both instances bill until a next run; with one, the idle instance destroys
   itself after the timeout and long's stops itself when its job ends.
2. **Edit-and-rerun.** A one-job workflow run ``--runs`` times, the input edited between
   runs, boots drawn from Vast.ai's 60-300 s times ``--scale`` (seeded): wall time per run
   and dollars in all, with ``--vastai-keep-warm`` and without. The goal: the second and
   later runs within 10% of a boot of the job's own time.

Figures are medians of ``--repeats`` with their range; the two arms of each figure run
side by side in one process, on one simulator each, with the same seed.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from snakemake_executor_plugin_vastai.simulator.server import REAL_BOOT, SimConfig, Simulator

CRASH = """\
rule all:
    input: "final.txt"

rule quick:
    output: "quick.txt"
    shell: "echo quick > {{output}}"

rule long:
    output: "long.txt"
    shell: "touch $HOME/long-started; sleep {seconds}; echo long > {{output}}"

rule final:
    input: "quick.txt", "long.txt"
    output: "final.txt"
    shell: "cat {{input}} > {{output}}"
"""
LOOP = """\
rule step:
    input: "params.txt"
    output: "result.txt"
    shell: "sleep {seconds}; cat {{input}} > {{output}}"
"""


def workflow(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True)
    for name, text in files.items():
        (root / name).write_text(text)
    git = ["git", "-c", "user.name=b", "-c", "user.email=b@example.invalid"]
    subprocess.run([*git, "init", "-q"], cwd=root, check=True)
    subprocess.run([*git, "add", *files], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "wf"], cwd=root, check=True)
    return root


def argv(sim: Simulator, *extra: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "--executor", "vastai", "--jobs", "2",
            "--vastai-api-url", sim.url, "--vastai-status-interval", "0.2", *extra]


def env(sim: Simulator) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith(("VAST_", "SNAKEMAKE_V"))},
            "VAST_API_KEY": sim.api_key}


def compute_dollars(sim: Simulator) -> float:
    return sum(i["billed_compute_dollars"] for i in sim.truth()["instances"])


def wait_for(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the benchmark's condition never came")
        time.sleep(0.1)


def crash_once(base: Path, seed: int, orphan_timeout: float, long_s: float,
               horizon: float) -> float:
    """Compute dollars billed in ``horizon`` seconds after a SIGKILL mid-run."""
    sim = Simulator(SimConfig(seed=seed, boot_delay=1.0))
    sim.start()
    try:
        wf = workflow(base, {"Snakefile": CRASH.format(seconds=long_s)})
        proc = subprocess.Popen(argv(sim, "--vastai-orphan-timeout", f"{orphan_timeout:g}"),
                                cwd=wf, env=env(sim), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_for(lambda: (wf / "quick.txt").exists() and any(
                (sim.instance_dir(i["id"]) / "long-started").exists()
                for i in sim.truth()["instances"] if i["alive"]), 120)
            time.sleep(0.5)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        before = compute_dollars(sim)
        time.sleep(horizon)
        return compute_dollars(sim) - before
    finally:
        sim.stop()


def loop_once(base: Path, seed: int, scale: float, runs: int, job_s: float,
              keep_warm: float) -> tuple[list[float], float, list[float]]:
    """Wall seconds of each run, compute dollars in all, and the boots drawn."""
    lo, hi = REAL_BOOT
    sim = Simulator(SimConfig(seed=seed, boot_delay_range=(lo * scale, hi * scale)))
    sim.start()
    try:
        wf = workflow(base, {"Snakefile": LOOP.format(seconds=job_s), "params.txt": "0\n"})
        walls = []
        extra = ["--vastai-keep-warm", f"{keep_warm:g}"] if keep_warm else []
        for n in range(runs):
            (wf / "params.txt").write_text(f"{n}\n")
            started = time.monotonic()
            done = subprocess.run(argv(sim, *extra), cwd=wf, env=env(sim),
                                  capture_output=True, text=True, timeout=600)
            walls.append(time.monotonic() - started)
            if done.returncode != 0:
                raise RuntimeError(done.stderr[-2000:])
        boots = [float(sim._boot_delay_for(i["id"]))
                 for i in sim.truth()["instances"]]
        return walls, compute_dollars(sim), boots
    finally:
        sim.stop()


def spread(values: list[float]) -> str:
    return (f"{statistics.median(values):.4g} (range {min(values):.4g}-{max(values):.4g}, "
            f"n={len(values)})")


def main(argv_: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=10.0, help="orphan timeout, s")
    parser.add_argument("--long", type=float, default=20.0, help="long's job, s")
    parser.add_argument("--horizon", type=float, default=45.0, help="s after the kill")
    parser.add_argument("--scale", type=float, default=1 / 30, help="boot time scale")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--job", type=float, default=2.0, help="the loop's job, s")
    parser.add_argument("--only", choices=("crash", "loop"), default=None)
    parser.add_argument("--arms", default="keep-warm,cold",
                        help="loop arms to run (keep-warm alone at --scale 1: the real "
                        "boot lengths without the cold arm's five boots per repeat)")
    args = parser.parse_args(argv_)
    with tempfile.TemporaryDirectory(prefix="vastai-bench-watchdog-") as tmp:
        base = Path(tmp)
        if args.only in (None, "crash"):
            watched, bare = [], []
            for r in range(args.repeats):
                watched.append(crash_once(base / f"w{r}", 100 + r, args.timeout, args.long,
                                          args.horizon))
                bare.append(crash_once(base / f"b{r}", 100 + r, 0, args.long, args.horizon))
            print(f"crash: compute $ billed in {args.horizon:g} s after kill -9 "
                  f"(long job {args.long:g} s, orphan timeout {args.timeout:g} s)")
            print(f"  watchdog     {spread(watched)}")
            print(f"  no watchdog  {spread(bare)}")
            ratios = [w / b for w, b in zip(watched, bare, strict=True) if b]
            print(f"  watchdog / none: {spread(ratios)}")
        if args.only in (None, "loop"):
            rows = {}
            arms = [a for a in (("keep-warm", 600.0), ("cold", 0.0))
                    if a[0] in args.arms.split(",")]
            for arm, keep in arms:
                later, dollars, boots = [], [], []
                for r in range(args.repeats):
                    walls, spent, drawn = loop_once(base / f"{arm}{r}", 200 + r, args.scale,
                                                    args.runs, args.job, keep)
                    later += walls[1:]
                    dollars.append(spent)
                    boots += drawn
                    print(f"  {arm} repeat {r}: {len(drawn)} instance(s) booted, boots "
                          + ", ".join(f"{b:.1f}" for b in drawn) + " s; walls "
                          + ", ".join(f"{w:.1f}" for w in walls) + " s", flush=True)
                rows[arm] = (later, dollars, boots)
            boot = statistics.median(rows["cold" if "cold" in rows else "keep-warm"][2])
            print(f"edit-and-rerun: {args.runs} runs of a {args.job:g} s job, boots "
                  f"{REAL_BOOT[0] * args.scale:.3g}-{REAL_BOOT[1] * args.scale:.3g} s "
                  f"(median drawn {boot:.3g} s)")
            for arm, (later, dollars, _boots) in rows.items():
                over = [(w - args.job) / boot for w in later]
                print(f"  {arm:9s} runs 2..{args.runs} wall s {spread(later)}; "
                      f"(wall - job) / boot {spread(over)}; compute $ {spread(dollars)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
