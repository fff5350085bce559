"""The price race: what the same workflow costs in dollars, against the cheapest possible.

Users pay dollars, not seconds. On the simulator's built-in market (the seeded catalogue,
``SimConfig(offers=None)``, seed 0: 18 offers match the plugin's default query for one GPU,
from $0.11/h to $2.62/h) every run does the same work: ``--jobs-count`` (40) independent jobs
of 5 s, each ``resources: gpu=1`` with no GPU model pinned, boots of 20 s, under ``--jobs N``
for each N of ``--jobs-list`` (8, 20). A fresh simulator per run, in its own process
(``simproc.py``).

Contestants, side by side in one invocation:

1. **Ours**: this repo's plugin through the real CLI, ``python -m snakemake --executor
   vastai --jobs N --vastai-api-url URL --vastai-status-interval 0.2 --keep-going``, key in
   ``VAST_API_KEY``, warm instances on (the default), every other setting at its default.
2. **The cost floor**, computed, not run: the cheapest assignment of the same number of
   instances over the same times, from the market. Our run's instances' billed seconds
   (simulator ground truth) sorted longest first are paired with the offers that match the
   job's request when the run starts, cheapest first: floor = sum(seconds_i / 3600 *
   dph_i). The offers: the simulator's catalogue (``catalog.load(None, seed)``), each
   priced as the simulator bills it (``catalog.price(offer, storage_gb)["dph_total"]``,
   GPU/CPU/RAM plus the rented disk), kept when it fits the plugin's own query
   (``offers.build_offer_request(OfferSettings(), {"gpu": 1}, 1)`` tested with
   ``vastai.query.offer_fits``). Should a run rent more instances than there are matching offers,
   the extra instances are paired with the cheapest offers again (an offer is free once
   its instance is gone), which keeps the floor a lower bound. Bandwidth is left out of
   both sides of the ratio (the floor would move the same bytes): ours/floor compares our
   time dollars (running time at dph_total, i.e. compute plus disk) with the floor's.
   Goal: ours/floor <= 1.10.
3. **The published plugin 0.1.4** (``--published``): same package name, so in a venv of
   its own (cached, ``--published-venv``), with the Snakemake installed here. Its SSH mode
   works in the container's absolute ``/snakemake-workdir``; a simulated instance is a
   sandbox on this machine, not a container root (exec sessions run in the sandbox on this
   machine's filesystem, SFTP is chrooted into it), so it runs with that one constant
   made relative (``published_argv``); its search, renting, transfers and teardown run as
   released. Goal: ours cheaper than it on every workload where ours is faster. A
   workload it does not finish (0.1.4 aborts the whole run once a job finds no free
   offer) has no price to compare: the verdict says so.

Reported per contestant and N, median [min..max] over ``--repeats``, all from the
simulator's ground truth (``GET /_sim/truth``) unless said otherwise: dollars (total, and
split into compute, storage and bandwidth as ``dollars.py`` does for every benchmark),
wall time of the CLI, billed instance-seconds, instances rented, their mean $/h (and the
list), jobs succeeded (their outputs arrived) and failed, instances alive at the end
(must be 0). The script exits 0 whether the goals are met or not.

    python benchmarks/price.py                     # 40 jobs, --jobs 8 and 20, 3 repeats
    python benchmarks/price.py --quick             # 12 jobs, 1 repeat (~1.5 minutes)
    python benchmarks/price.py --published         # also set up and try 0.1.4
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import dollars
from benchmarks.report import Summary, machine
from benchmarks.simproc import SimProcess
from benchmarks.workload import read_stamp, write_workflow

SEED = 0  # simproc's default seed: the simulator serves catalog.load(None, SEED)
BOOT_SECONDS = 20.0
JOB_SECONDS = 5.0
FLOOR_GOAL = 1.10
PUBLISHED = "0.1.4"
RUN_TIMEOUT = 900.0  # seconds per CLI run
SECRETS = ("VAST_API_KEY", "SNAKEMAKE_VASTAI_API_KEY", "VAST_URL")
INSTANCE_FIELDS = ("id", "offer_id", "gpu_name", "dph_total", "storage_dph", "disk",
                   "billed_seconds", "billed_dollars", "billed_bandwidth_dollars", "alive")

# --------------------------------------------------------------------------- the market


def market(seed: int = SEED) -> dict[str, Any]:
    """The offers a job asking for ``gpu=1`` can rent when the run starts, cheapest first,
    priced as the simulator bills them."""
    from snakemake_executor_plugin_vastai.simulator import catalog
    from snakemake_executor_plugin_vastai.vastai.offers import OfferSettings, build_offer_request
    from snakemake_executor_plugin_vastai.vastai.query import offer_fits

    request = build_offer_request(OfferSettings(), {"gpu": 1}, 1)
    priced = [catalog.price(o, request.storage_gb) for o in catalog.load(None, seed)]
    fitting = sorted((o for o in priced if offer_fits(o, request.query)),
                     key=lambda o: (float(o["dph_total"]), int(o["id"])))
    return {"query": request.text, "storage_gb": request.storage_gb,
            "offers": [{"id": int(o["id"]), "gpu_name": o["gpu_name"],
                        "dph_total": float(o["dph_total"])} for o in fitting]}


def cost_floor(billed_seconds: list[float], dph_ascending: list[float]) -> float:
    """Longest-billed instance on the cheapest offer, and so on (cycling if there are more
    instances than offers): the least these instance-seconds could have cost."""
    if not dph_ascending:
        return float("nan")
    longest_first = sorted(billed_seconds, reverse=True)
    return sum(s / 3600.0 * dph_ascending[i % len(dph_ascending)]
               for i, s in enumerate(longest_first))


# --------------------------------------------------------------------------- one run


def run_once(base: Path, *, who: str, argv: list[str], jobs: int,
             mkt: dict[str, Any]) -> dict[str, Any]:
    """One CLI run against a fresh simulator on the built-in market; its bill and outcome.

    ``argv`` may hold ``{url}``, replaced by the simulator's URL; the key (and, for the
    published plugin, whose vastai SDK reads it, ``VAST_URL``) go in the environment.
    """
    with SimProcess(base / "sim", boot_delay=BOOT_SECONDS) as sim:
        wf = write_workflow(base / "wf", jobs, JOB_SECONDS, gpus=1)
        env = {k: v for k, v in os.environ.items() if k not in SECRETS}
        env["VAST_API_KEY"] = sim.api_key
        if who == "published":
            env["VAST_URL"] = sim.url
            env.pop("PYTHONPATH", None)  # its venv must import 0.1.4, not this checkout
        error = ""
        start = time.monotonic()
        try:
            done = subprocess.run([a.replace("{url}", sim.url) for a in argv], cwd=wf, env=env,
                                  capture_output=True, text=True, timeout=RUN_TIMEOUT)
            rc, stderr = done.returncode, done.stderr
        except subprocess.TimeoutExpired as exc:
            rc, stderr = None, str(exc.stderr or "")
            error = f"timed out after {RUN_TIMEOUT:.0f} s"
        wall = time.monotonic() - start
        truth = sim.truth()
    ok = sum(read_stamp(wf / "out" / f"{i}.json") is not None for i in range(jobs))
    rented = dollars.ours(truth)
    cost = dollars.bill(rented)
    seconds = [float(i["billed_seconds"]) for i in rented]
    dph = [float(i["dph_total"]) for i in rented]
    result = {
        "who": who, "jobs": jobs, "rc": rc, "error": error, "wall": wall,
        "succeeded": ok, "failed": jobs - ok,
        "alive_after": sum(1 for i in truth["instances"] if i["alive"]),
        "instances": len(rented), "billed_seconds": cost["instance_seconds"],
        "dollars": cost["dollars"], "compute_dollars": cost["compute"],
        "storage_dollars": cost["storage"], "bandwidth_dollars": cost["bandwidth"],
        "time_dollars": cost["dollars"] - cost["bandwidth"],
        "mean_dph": sum(dph) / len(dph) if dph else None, "dph_list": sorted(dph),
        "per_instance": [{k: i.get(k) for k in INSTANCE_FIELDS} for i in rented],
    }
    if who == "ours":
        floor = cost_floor(seconds, [o["dph_total"] for o in mkt["offers"]])
        result.update(floor_dollars=floor,
                      floor_ratio=result["time_dollars"] / floor if floor > 0 else None)
    if rc != 0:
        result["stderr_tail"] = stderr[-3000:]
    return result


def ours_argv(parallel: int) -> list[str]:
    return [sys.executable, "-m", "snakemake", "--executor", "vastai", "--jobs", str(parallel),
            "--vastai-api-url", "{url}", "--vastai-status-interval", "0.2", "--keep-going"]


# --------------------------------------------------------------------------- published 0.1.4


def published_python(venv: Path) -> tuple[Path | None, str]:
    """The python of a venv holding the published plugin, or None and why it is not run.

    The venv is made once (``uv venv`` + ``uv pip install``) with the Snakemake version
    installed here. Everything is asked of it from outside this repository, whose
    package of the same name would otherwise be imported from the working directory.
    """
    python = venv / "bin" / "python"
    smk = version("snakemake")
    probe = ("import importlib.metadata as m; import snakemake_executor_plugin_vastai.sshtransfer"
             " as t; print(m.version('snakemake-executor-plugin-vastai'), t.REMOTE_WORKDIR)")

    def ask() -> list[str]:
        done = subprocess.run([str(python), "-c", probe], cwd=venv, capture_output=True,
                              text=True, timeout=120)
        return done.stdout.split() if done.returncode == 0 else []

    if not (python.exists() and ask()[:1] == [PUBLISHED]):
        if shutil.which("uv") is None:
            return None, "uv is not on PATH, so its venv cannot be made"
        for argv in (["uv", "venv", "-q", "--clear", "--python", sys.executable, str(venv)],
                     ["uv", "pip", "install", "-q", "--python", str(python),
                      f"snakemake-executor-plugin-vastai=={PUBLISHED}", f"snakemake=={smk}"]):
            done = subprocess.run(argv, capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                return None, f"{' '.join(argv[:3])} failed: {done.stderr.strip()[-300:]}"
    answer = ask()
    if answer[:1] != [PUBLISHED] or len(answer) < 2:
        return None, f"the venv {venv} does not import the published {PUBLISHED}"
    return python, ""


# 0.1.4 with its one remote directory made relative: everything else of it runs as released.
RELATIVE_WORKDIR = (
    "import sys, snakemake_executor_plugin_vastai.sshtransfer as t; "
    "t.REMOTE_WORKDIR = 'snakemake-workdir'; "
    "from snakemake.cli import main; sys.argv[0] = 'snakemake'; main()")


def published_argv(python: Path, parallel: int) -> list[str]:
    """0.1.4 reaches the API through the vastai SDK, which reads VAST_URL (set by run_once).

    Its SSH mode works in the container's absolute ``/snakemake-workdir``. A simulated
    instance is a sandbox on this machine, not a container root: its exec sessions run
    in the sandbox (cwd and HOME) on this machine's filesystem, while SFTP is chrooted
    into the sandbox. So 0.1.4 runs with that one constant set to the relative
    ``snakemake-workdir``, which both resolve inside the sandbox. Its offer search,
    renting, transfers and teardown, what the race compares, are untouched.
    """
    return [str(python), "-c", RELATIVE_WORKDIR, "--executor", "vastai",
            "--jobs", str(parallel), "--keep-going"]


# --------------------------------------------------------------------------- report

FIGURES = (  # key, label, digits
    ("dollars", "dollars, total ($)", 4),
    ("compute_dollars", "  compute ($)", 4),
    ("storage_dollars", "  storage ($)", 5),
    ("bandwidth_dollars", "  bandwidth ($)", 6),
    ("time_dollars", "time dollars: compute+storage ($)", 4),
    ("wall", "wall time (s)", 1),
    ("billed_seconds", "billed instance-seconds", 1),
    ("instances", "instances rented", 0),
    ("mean_dph", "mean $/h of instances", 3),
    ("succeeded", "jobs succeeded", 0),
    ("failed", "jobs failed", 0),
    ("alive_after", "instances alive at the end", 0),
)


def summary(runs: list[dict[str, Any]], key: str) -> Summary | None:
    return Summary.of(r.get(key) for r in runs)


def median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(float(r[key]) for r in runs)


def summaries(runs: list[dict[str, Any]], parallels: list[int]) -> dict[str, Any]:
    """Every figure of every contestant and --jobs N, for the JSON."""
    keys = [key for key, _, _ in FIGURES] + ["floor_dollars", "floor_ratio"]
    out: dict[str, Any] = {}
    for who in ("ours", "published"):
        for n in parallels:
            mine = [r for r in runs if r["who"] == who and r["parallel"] == n]
            if mine:
                out[f"{who}.jobs{n}"] = {k: None if (x := summary(mine, k)) is None
                                         else asdict(x) for k in keys}
    return out


def fmt(s: Summary | None, digits: int) -> str:
    if s is None:
        return "-"
    text = f"{s.median:.{digits}f}"
    return text if s.low == s.high else f"{text} [{s.low:.{digits}f}..{s.high:.{digits}f}]"


def verdicts(runs: list[dict[str, Any]], parallels: list[int]) -> dict[str, Any]:
    """Per --jobs N: ours/floor against its goal, and ours against 0.1.4 where both ran."""
    out: dict[str, Any] = {}
    for n in parallels:
        ours = [r for r in runs if r["who"] == "ours" and r["parallel"] == n]
        theirs = [r for r in runs if r["who"] == "published" and r["parallel"] == n]
        ratio = summary(ours, "floor_ratio")
        entry: dict[str, Any] = {
            "floor_ratio": None if ratio is None else asdict(ratio),
            "floor_goal_met": None if ratio is None else ratio.median <= FLOOR_GOAL,
        }
        incomplete = [r for r in theirs if r["failed"]]
        if incomplete:
            # a run that did not do the work is no price to compare with (0.1.4 aborts the
            # whole run once one job finds no free offer)
            entry.update(published_goal_met=None, published_incomplete=(
                f"{len(incomplete)} of {len(theirs)} runs failed jobs (median "
                f"{median(theirs, 'failed'):.0f} of {theirs[0]['jobs']})"))
        elif theirs and ours:
            faster = median(ours, "wall") < median(theirs, "wall")
            cheaper = median(ours, "dollars") < median(theirs, "dollars")
            entry.update(ours_faster=faster, ours_cheaper=cheaper,
                         published_goal_met=cheaper or not faster)
        else:
            entry.update(published_goal_met=None)  # not run: settings.published.reason
        out[str(n)] = entry
    return out


def print_report(report: dict[str, Any]) -> None:
    s, runs = report["settings"], report["runs"]
    offers = report["market"]["offers"]
    print(f"\nThe price race: {s['jobs']} jobs of {s['job_seconds']:g} s (gpu=1, any model), "
          f"boots {s['boot_seconds']:g} s, {s['repeats']} repeat(s), median [min..max]")
    prices = [o["dph_total"] for o in offers] or [float("nan")]
    print(f"market: built-in catalogue (seed {SEED}), {len(offers)} offers match "
          f"'{report['market']['query']}' at {report['market']['storage_gb']:g} GB disk, "
          f"$/h {prices[0]:.3f}..{prices[-1]:.3f}")
    published = s["published"]
    if not published["ran"]:
        print(f"published {PUBLISHED}: not run: {published['reason']}")
    has_published = any(r["who"] == "published" for r in runs)
    for n in s["parallel"]:
        ours = [r for r in runs if r["who"] == "ours" and r["parallel"] == n]
        theirs = [r for r in runs if r["who"] == "published" and r["parallel"] == n]
        cols = ["ours", "cost floor"] + ([f"published {PUBLISHED}"] if has_published else [])
        print(f"\n{f'--jobs {n}':<44}" + "".join(f"{c:>26}" for c in cols))
        for key, label, digits in FIGURES:
            row = [fmt(summary(ours, key), digits)]
            row.append(fmt(summary(ours, "floor_dollars"), 4) if key == "time_dollars" else "")
            if has_published:
                row.append(fmt(summary(theirs, key), digits))
            print(f"{label:<44}" + "".join(f"{c:>26}" for c in row))
        for r in ours:
            print(f"  ours, repeat {r['repeat']}: $/h of the {r['instances']} instances: "
                  + ", ".join(f"{d:.3f}" for d in r["dph_list"]))
        v = report["verdicts"][str(n)]
        ratio = summary(ours, "floor_ratio")
        if ratio is not None:
            print(f"ours / floor (time dollars): {fmt(ratio, 2)}   goal <= {FLOOR_GOAL:.2f}: "
                  + ("pass" if v["floor_goal_met"] else "miss"))
        if v.get("published_incomplete"):
            print(f"ours vs published {PUBLISHED}: n/a, it did not do the work: "
                  f"{v['published_incomplete']}")
        elif v.get("published_goal_met") is None:
            print(f"ours vs published {PUBLISHED}: n/a (not run, see above)")
        else:
            faster = "faster" if v["ours_faster"] else "not faster"
            cheaper = "cheaper" if v["ours_cheaper"] else "not cheaper"
            print(f"ours vs published {PUBLISHED}: ours {faster}, {cheaper}; goal (cheaper "
                  f"where faster): {'pass' if v['published_goal_met'] else 'miss'}")


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs-count", type=int, default=40, help="jobs in the workflow")
    parser.add_argument("--jobs-list", default="8,20", help="snakemake --jobs values")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="12 jobs, 1 repeat")
    parser.add_argument("--published", action="store_true",
                        help=f"also set up and run the published plugin {PUBLISHED}")
    parser.add_argument("--published-venv", type=Path,
                        default=Path(tempfile.gettempdir()) / "vastai-price-bench"
                        / f"published-{PUBLISHED}-snakemake-{version('snakemake')}")
    parser.add_argument("--json", type=Path,
                        default=Path(__file__).parent / "results" / "price.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.jobs_count, args.repeats = 12, 1
    parallels = [int(x) for x in args.jobs_list.split(",") if x.strip()]
    mkt = market()

    python, reason = None, "not asked for (--published)"
    if args.published:
        print(f"setting up the published plugin {PUBLISHED} in {args.published_venv} ...",
              flush=True)
        python, reason = published_python(args.published_venv)
        print(f"published {PUBLISHED}: " + ("ready" if python else f"skipped: {reason}"),
              flush=True)

    runs: list[dict[str, Any]] = []
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="price-bench-") as tmp:
        for rep in range(args.repeats):
            for n in parallels:
                contestants = [("ours", ours_argv(n))]
                if python is not None:
                    contestants.append(("published", published_argv(python, n)))
                if rep % 2:
                    contestants.reverse()  # alternate who runs first on the shared machine
                for who, cli in contestants:
                    result = run_once(Path(tmp) / f"{rep}-{n}-{who}", who=who, argv=cli,
                                      jobs=args.jobs_count, mkt=mkt)
                    runs.append({"repeat": rep, "parallel": n, **result})
                    floor = (f", floor ${result['floor_dollars']:.4f} (x"
                             f"{result['floor_ratio']:.2f})" if result.get("floor_ratio") else "")
                    print(f"repeat {rep} --jobs {n} {who}: ${result['dollars']:.4f}{floor}, wall "
                          f"{result['wall']:.1f} s, {result['instances']} instances, "
                          f"{result['succeeded']}/{result['jobs']} jobs ok, "
                          f"{result['alive_after']} alive after"
                          + (f", rc {result['rc']} {result['error']}" if result["rc"] != 0
                             else ""),
                          flush=True)
    report = {
        "benchmark": "price", "started": started, "seconds": time.time() - started,
        "machine": machine(),
        "settings": {"jobs": args.jobs_count, "job_seconds": JOB_SECONDS,
                     "boot_seconds": BOOT_SECONDS, "parallel": parallels,
                     "repeats": args.repeats, "seed": SEED, "floor_goal": FLOOR_GOAL,
                     "published": {"asked": args.published, "ran": python is not None,
                                   "reason": reason}},
        "market": mkt,
        "summaries": summaries(runs, parallels),
        "verdicts": verdicts(runs, parallels),
        "runs": runs,
    }
    print_report(report)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"\nJSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
