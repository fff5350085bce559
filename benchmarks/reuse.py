"""Warm instances on vs off, side by side: billed instance-seconds, wall time, boots.

The workload of issue 14: 100 independent jobs of 20 s, ``--jobs 8``, realistic
boots (Vast.ai: 60-300 s, drawn per instance, seeded), all time-scaled by
``--scale`` so a repeat fits in minutes. Each repeat runs the real CLI twice
against a fresh simulator (its own process, ``simproc.py``), once with warm
instances (the default) and once with ``--vastai-no-reuse``, in alternating
order. Printed: the median [min..max] of each figure per mode, and the ratios.

What is scaled and what is not: boots, the job's sleep and the idle timeout are
multiplied by ``--scale``; the fixed per-job costs (SSH, upload, the remote
``python -m snakemake`` start, about 1.5 s per job on this 2-core machine) are
not. So the overhead per job, compared with a *scaled* boot, is pessimistic at
scales below 1; ``--scale 1`` measures real boot lengths (a repeat then takes
about 10 minutes with reuse and 45 without).

Billed overhead per job = (billed instance-seconds - jobs x job seconds) / jobs;
"beyond the job command" subtracts instead the job command's own time on the
instance (remote ``python -m snakemake`` start to the job's end, from the
job's stamp, as in the other benchmarks), which is the floor any executor pays
and which, on this loaded machine, absorbs the remote processes' CPU starvation.

    python benchmarks/reuse.py                      # 3 repeats, scale 0.3 (~50 min)
    python benchmarks/reuse.py --modes on --scale 1 --repeats 1   # real boots, reuse only
    python benchmarks/reuse.py --repeats 1 --jobs-count 24    # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import dollars
from benchmarks.catalog import write_offers
from benchmarks.simproc import SimProcess
from benchmarks.workload import read_stamp, write_workflow

REAL_BOOT = (60.0, 300.0)  # seconds, Vast.ai's typical range (NOTES.md)
REAL_IDLE_TIMEOUT = 60.0  # the plugin's default (settings.DEFAULT_IDLE_TIMEOUT)


def run_once(base: Path, *, reuse: bool, jobs: int, job_seconds: float, parallel: int,
             scale: float, seed: int, documented: bool = False) -> dict[str, Any]:
    """One CLI run against a fresh simulator; its wall time, boots and bill."""
    base.mkdir(parents=True)
    offers = write_offers(base / "offers.json", parallel + 20, seed)
    boot = (REAL_BOOT[0] * scale, REAL_BOOT[1] * scale)
    with SimProcess(base / "sim", boot_delay=sum(boot) / 2, offers=offers,
                    boot_range=boot, rate_limit=0.25 if documented else 0.0,
                    documented=documented) as sim:
        wf = write_workflow(base / "wf", jobs, job_seconds)
        argv = [sys.executable, "-m", "snakemake", "--executor", "vastai", "--keep-going",
                "--jobs", str(parallel), "--vastai-api-url", sim.url,
                "--vastai-status-interval", "0.2",
                "--vastai-idle-timeout", f"{REAL_IDLE_TIMEOUT * scale:g}"]
        if not reuse:
            argv.append("--vastai-no-reuse")
        env = {k: v for k, v in os.environ.items() if k not in ("VAST_URL",)}
        env["VAST_API_KEY"] = sim.api_key
        start = time.monotonic()
        done = subprocess.run(argv, cwd=wf, env=env, capture_output=True, text=True,
                              timeout=7200)
        wall = time.monotonic() - start
        truth = sim.truth()
        stamps = [read_stamp(wf / "out" / f"{i}.json") for i in range(jobs)]
        gaps = idle_gaps(wf)
        shares = warm_shares(wf) if reuse else {}
    if done.returncode != 0:
        raise RuntimeError(f"snakemake failed ({'reuse' if reuse else 'no reuse'}):\n"
                           f"{done.stderr[-3000:]}")
    instances = dollars.ours(truth)
    alive = [i for i in instances if i["alive"]]
    billed = sum(float(i["billed_seconds"]) for i in instances)
    cost = dollars.bill(instances)
    # The job command's own time on the instance (remote Snakemake start to the job's end):
    # the floor the other benchmarks use; it absorbs the CPU starvation of a loaded host.
    command = sum(float(s["end"]) - float(s["command_start"] or s["start"])
                  for s in stamps if s)
    return {"reuse": reuse, "jobs": jobs, "wall": wall, "boots": int(truth["created_count"]),
            "billed": billed, "alive_after": len(alive), "command_seconds": command,
            "overhead_per_job": (billed - jobs * job_seconds) / jobs,
            "overhead_beyond_command": (billed - command) / jobs, "idle_gaps": gaps,
            "dollars": cost["dollars"], "compute_dollars": cost["compute"],
            "storage_dollars": cost["storage"], "bandwidth_dollars": cost["bandwidth"],
            **shares}


def warm_shares(wf: Path) -> dict[str, float]:
    """The run's billed seconds by share, from ``journal cost --json``: booting (create to
    the first lease), leased (the jobs' own time), idle (between leases and at the end)."""
    done = subprocess.run([sys.executable, "-m", "snakemake_executor_plugin_vastai", "journal",
                           "cost", "--json"], cwd=wf, capture_output=True, text=True,
                          timeout=120, check=True)
    (run,) = json.loads(done.stdout)["warm"]["runs"]
    return {f"{k}_seconds": float(run[f"{k}_seconds"]) for k in ("boot", "leased", "idle")}


def idle_gaps(wf: Path) -> list[float]:
    """Seconds each warm instance sat idle before its next lease (from the journal): what
    --vastai-idle-timeout must cover for a waiting job to find the instance."""
    path = wf / ".snakemake" / "vastai" / "journal.sqlite"
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT label, trigger, at FROM instance_transitions "
                          "ORDER BY label, id").fetchall()
    gaps, idle_since = [], {}
    for label, trigger, at in rows:
        if trigger == "given_back":
            idle_since[label] = at
        elif trigger == "leased" and label in idle_since:
            gaps.append(at - idle_since.pop(label))
    return gaps


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def fmt(s: dict[str, float], digits: int = 1) -> str:
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}..{s['max']:.{digits}f}] n={s['n']}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs-count", type=int, default=100)
    parser.add_argument("--job-seconds", type=float, default=20.0, help="before scaling")
    parser.add_argument("--parallel", type=int, default=8, help="snakemake --jobs")
    parser.add_argument("--scale", type=float, default=0.3, help="time scale of boots/jobs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results"
                        / "reuse.json")
    parser.add_argument("--keep", action="store_true", help="keep the work directories")
    parser.add_argument("--modes", default="on,off", help="on,off (side by side) or one")
    parser.add_argument("--documented", action="store_true",
                        help="the simulator enforces the per-endpoint intervals of Vast.ai's "
                             "description (4.5 s create, ...; 0.25 s elsewhere)")
    args = parser.parse_args(argv)
    job_seconds = args.job_seconds * args.scale
    mean_boot = sum(REAL_BOOT) / 2 * args.scale
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="reuse-bench-") as tmp:
        root = Path(tmp)
        for rep in range(args.repeats):
            order = (True, False) if rep % 2 == 0 else (False, True)
            for reuse in [r for r in order if ("on" if r else "off") in args.modes.split(",")]:
                name = f"{rep}-{'on' if reuse else 'off'}"
                result = run_once(root / name, reuse=reuse, jobs=args.jobs_count,
                                  job_seconds=job_seconds, parallel=args.parallel,
                                  scale=args.scale, seed=rep, documented=args.documented)
                runs.append({"repeat": rep, **result})
                print(f"repeat {rep} reuse={'on ' if reuse else 'off'} wall {result['wall']:.1f}"
                      f" s, boots {result['boots']}, billed {result['billed']:.1f} inst-s, "
                      f"overhead/job {result['overhead_per_job']:.2f} s "
                      f"({result['overhead_beyond_command']:.2f} s beyond the job command)",
                      flush=True)
        if args.keep:
            kept = Path(tempfile.mkdtemp(prefix="reuse-bench-kept-"))
            subprocess.run(["cp", "-a", f"{root}/.", str(kept)], check=False)
            print(f"kept in {kept}")
    report = figures(runs, mean_boot)
    report.update(settings={"jobs": args.jobs_count, "job_seconds": job_seconds,
                            "parallel": args.parallel, "scale": args.scale,
                            "documented_intervals": args.documented,
                            "boot_range": [b * args.scale for b in REAL_BOOT],
                            "idle_timeout": REAL_IDLE_TIMEOUT * args.scale}, runs=runs)
    print_report(report)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    return 0


def figures(runs: list[dict[str, Any]], mean_boot: float) -> dict[str, Any]:
    """Per mode the figures, and the per-repeat ratios (off / on) summarised."""
    on = {r["repeat"]: r for r in runs if r["reuse"]}
    off = {r["repeat"]: r for r in runs if not r["reuse"]}
    both = sorted(set(on) & set(off))
    out: dict[str, Any] = {"modes": {}}
    for mode, rows in (("reuse", on), ("no_reuse", off)):
        out["modes"][mode] = {k: summary([float(r[k]) for r in rows.values()])
                              for k in ("dollars", "compute_dollars", "storage_dollars",
                                        "bandwidth_dollars", "wall", "boots", "billed",
                                        "overhead_per_job",
                                        "overhead_beyond_command", "boot_seconds",
                                        "leased_seconds", "idle_seconds")
                              if all(k in r for r in rows.values())} if rows else {}
    gaps = [g for r in on.values() for g in r.get("idle_gaps", [])]
    if gaps:
        gaps.sort()
        out["idle_gaps"] = {"median": statistics.median(gaps), "p95": gaps[int(0.95 * (
            len(gaps) - 1))], "max": gaps[-1], "n": len(gaps)}
    out["ratios"] = {}
    if on:  # the goal of issue 14: billed overhead per job against one boot
        reps = sorted(on)
        out["ratios"].update({
            "overhead_per_job_over_scaled_boot": summary(
                [on[i]["overhead_per_job"] / mean_boot for i in reps]),
            "overhead_beyond_command_over_scaled_boot": summary(
                [on[i]["overhead_beyond_command"] / mean_boot for i in reps]),
            "boot_share_per_job_over_scaled_boot": summary(
                [on[i]["boot_seconds"] / len_jobs(on[i]) / mean_boot for i in reps
                 if "boot_seconds" in on[i]] or [0.0]),
        })
    if both:
        out["ratios"].update({
            "dollars_off_over_on": summary([off[i]["dollars"] / on[i]["dollars"]
                                            for i in both]),
            "wall_off_over_on": summary([off[i]["wall"] / on[i]["wall"] for i in both]),
            "billed_off_over_on": summary([off[i]["billed"] / on[i]["billed"] for i in both]),
            "boots_off_over_on": summary([off[i]["boots"] / on[i]["boots"] for i in both]),
        })
    return out


def len_jobs(run: dict[str, Any]) -> int:
    """Jobs of one CLI run (recorded by run_once)."""
    return int(run["jobs"])


def print_report(report: dict[str, Any]) -> None:
    s = report["settings"]
    print(f"\n{s['jobs']} jobs of {s['job_seconds']:g} s, --jobs {s['parallel']}, boots "
          f"{s['boot_range'][0]:g}-{s['boot_range'][1]:g} s (scale {s['scale']:g}), "
          f"idle timeout {s['idle_timeout']:g} s")
    print(f"{'figure':<22}{'reuse':>34}{'no reuse':>34}")
    for key, digits in (("dollars", 4), ("compute_dollars", 4), ("storage_dollars", 4),
                        ("bandwidth_dollars", 4), ("wall", 1), ("boots", 0), ("billed", 1),
                        ("boot_seconds", 1),
                        ("leased_seconds", 1), ("idle_seconds", 1), ("overhead_per_job", 2),
                        ("overhead_beyond_command", 2)):
        row = [fmt(report["modes"][m][key], digits) if report["modes"][m].get(key) else "-"
               for m in ("reuse", "no_reuse")]
        print(f"{key:<22}{row[0]:>34}{row[1]:>34}")
    if "idle_gaps" in report:
        g = report["idle_gaps"]
        print(f"idle before the next lease: median {g['median']:.2f} s, p95 {g['p95']:.2f} s,"
              f" max {g['max']:.2f} s (n={g['n']})")
    print()
    for key, value in report.get("ratios", {}).items():
        print(f"{key:<36} {fmt(value, 3)}")


if __name__ == "__main__":
    sys.exit(main())
