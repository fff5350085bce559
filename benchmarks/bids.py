"""Bid instances against on-demand ones: total cost and wall time, side by side.

One invocation runs, per repeat, the same workflow of N independent jobs (default 50,
each sleeping a few seconds) twice on fresh simulators (own process, fast profile, a
catalogue of identical matching offers): once on demand, once with every rule
preemptible (``--preemptible-rules``), while the simulator's ``outbid`` fault stops a
given share of the bid instances at a random moment after they start running. Half of
the preempted instances come back after ``--back-after`` seconds (within the grace: the
job reruns on the same instance), the other half never (past ``--grace`` the instance is
destroyed and the job rents again). The orders alternate between repeats.

Printed: per mode the median [min..max] of the dollars the simulator billed (its ground
truth: bid plus storage while running, storage alone while stopped; on demand: the
on-demand price) and of the wall time of the ``snakemake`` process; then the bid run's
ratios to the on-demand one. Every run must end with every job done and no instance
alive, or the script says so and exits 1.

    python benchmarks/bids.py                      # 50 jobs, 30% preempted, 3 repeats
    python benchmarks/bids.py --share 0.5 --repeats 5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import dollars
from benchmarks.catalog import write_offers
from benchmarks.scenarios import clean_env
from benchmarks.simproc import SimProcess
from benchmarks.workload import write_workflow


def run_mode(base: Path, mode: str, args: argparse.Namespace, repeat: int) -> dict[str, Any]:
    """One fresh simulator and workflow; ``mode`` is 'on-demand' or 'bid'."""
    root = base / f"{mode}-r{repeat}"
    shutil.rmtree(root, ignore_errors=True)
    workdir = write_workflow(root / "wf", args.jobs, args.seconds)
    offers = write_offers(base / "offers.json", args.jobs * 2 + 20)
    argv = [sys.executable, "-m", "snakemake", "--executor", "vastai", "--keep-going",
            "--jobs", str(args.jobs), "--vastai-status-interval", "0.5"]
    with SimProcess(root / "sim", boot_delay=args.boot, offers=offers) as sim:
        if mode == "bid":
            argv += ["--preemptible-rules", "--vastai-preemption-grace", f"{args.grace:g}",
                     "--vastai-bid", f"{args.bid:g}"]
            for back in (args.back_after, None):  # half come back, half never
                sim.call("POST", "/_sim/faults", {
                    "kind": "outbid", "at_state": "running", "chance": args.share / 2,
                    "after_seconds": args.seconds / 2, "back_after": back})
        started = time.monotonic()
        done = subprocess.run([*argv, "--vastai-api-url", sim.url], cwd=workdir,
                              env=clean_env(sim.api_key), capture_output=True, text=True,
                              timeout=args.timeout)
        wall = time.monotonic() - started
        truth = sim.truth()
    ours = dollars.ours(truth)
    cost = dollars.bill(ours)
    outputs = len(list((workdir / "out").glob("*"))) if (workdir / "out").exists() else 0
    problems = []
    if done.returncode != 0:
        problems.append(f"snakemake exited {done.returncode}: {done.stderr[-600:]}")
    alive = [i["id"] for i in ours if i["alive"]]
    if alive:
        problems.append(f"instances alive at the end: {alive}")
    return {
        "mode": mode, "repeat": repeat, "wall_seconds": wall,
        "dollars": cost["dollars"], "compute_dollars": cost["compute"],
        "storage_dollars": cost["storage"], "bandwidth_dollars": cost["bandwidth"],
        "instance_seconds": cost["instance_seconds"],
        "stopped_storage_dollars": sum(i.get("storage_dollars_stopped", 0.0) for i in ours),
        "instances": len(ours), "bid_instances": sum(1 for i in ours if i.get("is_bid")),
        "preemptions": int(truth.get("preemptions", 0)), "outputs": outputs,
        "problems": problems,
    }


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def report(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians with ranges per mode, and the bid/on-demand ratios paired by repeat."""
    out: dict[str, Any] = {"modes": {}, "ratios": {}}
    for mode in ("on-demand", "bid"):
        mine = [r for r in runs if r["mode"] == mode]
        out["modes"][mode] = {key: spread([float(r[key]) for r in mine]) for key in (
            "dollars", "compute_dollars", "storage_dollars", "bandwidth_dollars",
            "instance_seconds", "wall_seconds", "instances", "preemptions",
            "stopped_storage_dollars")}
    pairs = {}
    for r in runs:
        pairs.setdefault(r["repeat"], {})[r["mode"]] = r
    for key in ("dollars", "wall_seconds"):
        out["ratios"][key] = spread([p["bid"][key] / p["on-demand"][key]
                                     for p in pairs.values() if len(p) == 2])
    return out


def show(summary: dict[str, Any], args: argparse.Namespace) -> str:
    def fmt(s: dict[str, float], unit: str = "", digits: int = 4) -> str:
        return (f"{unit}{s['median']:.{digits}f} [{unit}{s['min']:.{digits}f}.."
                f"{unit}{s['max']:.{digits}f}] n={s['n']:g}")

    lines = [f"{args.jobs} jobs of {args.seconds:g} s, {args.share:.0%} of bid instances "
             f"preempted (half back after {args.back_after:g} s, half never; grace "
             f"{args.grace:g} s), bid {args.bid:g} x min_bid"]
    for mode, figures in summary["modes"].items():
        lines.append(f"  {mode:<9}  cost {fmt(figures['dollars'], '$')} (compute "
                     f"${figures['compute_dollars']['median']:.4f}, storage "
                     f"${figures['storage_dollars']['median']:.4f}, bandwidth "
                     f"${figures['bandwidth_dollars']['median']:.4f})   wall "
                     f"{fmt(figures['wall_seconds'], '', 1)} s   instance-seconds "
                     f"{figures['instance_seconds']['median']:.0f}   instances "
                     f"{figures['instances']['median']:g}   preemptions "
                     f"{figures['preemptions']['median']:g}")
    ratios = summary["ratios"]
    lines.append(f"  bid / on-demand: cost {fmt(ratios['dollars'], '', 3)}   wall "
                 f"{fmt(ratios['wall_seconds'], '', 3)}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=6.0, help="each job's sleep")
    parser.add_argument("--share", type=float, default=0.3,
                        help="share of bid instances preempted")
    parser.add_argument("--back-after", type=float, default=2.0)
    parser.add_argument("--grace", type=float, default=5.0)
    parser.add_argument("--bid", type=float, default=1.0)
    parser.add_argument("--boot", type=float, default=0.3, help="simulated boot seconds")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="vastai-bench-bids-") as tmp:
        for repeat in range(args.repeats):
            order = ("on-demand", "bid") if repeat % 2 == 0 else ("bid", "on-demand")
            for mode in order:
                run = run_mode(Path(tmp), mode, args, repeat)
                print(f"repeat {repeat} {mode}: ${run['dollars']:.4f} "
                      f"{run['wall_seconds']:.1f} s, {run['instances']} instances, "
                      f"{run['preemptions']} preemptions, {run['outputs']} outputs "
                      f"{'; '.join(run['problems'])}", flush=True)
                runs.append(run)
    summary = report(runs)
    print(show(summary, args))
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)},
                                         "runs": runs, "summary": summary}, indent=1))
    return 1 if any(r["problems"] or r["outputs"] != args.jobs for r in runs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
