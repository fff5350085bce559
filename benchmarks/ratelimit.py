"""Jobs started together against Vast.ai's per-endpoint rate limit: what it costs.

``python benchmarks/ratelimit.py [--jobs 20,50] [--repeats 3] [--interval 0.25] [--boot 3]
[--documented] [--json PATH] [--keep]``

``--documented``: the per-endpoint intervals of Vast.ai's published description (1.0 s v1
listing, 2.0 s show, 3.0 s destroy, 4.5 s create, 5.5 s bid change; ``--interval`` for
the rest), so the floor is ``(N - 1) x 4.5 s`` of create slots.

Each run starts a fresh simulator process that accepts one call per endpoint
and key every ``--interval`` seconds (429 with ``endpoint threshold=<s>``
otherwise, as Vast.ai does) and boots instances in ``--boot`` seconds, then runs
the real ``snakemake --executor vastai --jobs N`` on N trivial independent jobs:
all of them search and rent at once. Per run, from the simulator's request log
(arrival time and answered status of every request) and the plugin's journal:

- requests per job (every API request of the run, divided by N), and how many
  of them were searches;
- 429s per job, and their share of all requests (target: under 10%, i.e. rare:
  learning an endpoint's interval costs about one refusal per endpoint and run);
- the time from the first job's submission (journal) to the last job's
  ``rented`` transition, against its floor: one create per job on one
  endpoint, one interval apart, is ``(N - 1) x interval``.

Figures are the median over repeats with their range; a run in which a job
failed counts as a miss of its figures (the failures are in the note and the
JSON). Runs on demand only: 3 repeats of 20 and 50 jobs take about 4 minutes
on 2 cores, 3 repeats of 200 about 9 more.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.report import Figure, Summary, check, machine, table, write_json  # noqa: E402
from benchmarks.scenarios import Bench, Outcome, Scenario  # noqa: E402

SEARCH = "/api/v0/bundles/"
CREATE = "/api/v0/asks/"
DEFAULT_JSON = REPO / "benchmarks" / "results" / "ratelimit.json"
REQUESTS_TARGET = 20.0  # per job, as figure 3's
REFUSED_TARGET = 0.1  # share of requests answered 429: rare, not the normal path
CREATE_INTERVAL = 4.5  # seconds between creates, as the description's 429 example states


def measure(outcome: Outcome, interval: float) -> dict[str, Any]:
    """One run's figures (None where the run never got that far)."""
    jobs = outcome.scenario.jobs
    requests = outcome.requests
    refused = [r for r in requests if r.get("status") == 429]
    submitted = [j.submit for j in outcome.jobs if j.submit]
    rented = [j.rented for j in outcome.jobs if j.rented is not None]
    span = max(rented) - min(submitted) if rented and submitted else None
    return {
        "jobs": jobs,
        "succeeded": len(outcome.succeeded),
        "wall_s": round(outcome.watched.wall, 2),
        "requests": len(requests),
        "requests_per_job": len(requests) / jobs,
        "searches": sum(1 for r in requests if r["route"].startswith(SEARCH)),
        "creates": sum(1 for r in requests if r["route"].startswith(CREATE)),
        "refused": len(refused),
        "refused_per_job": len(refused) / jobs,
        "refused_by_route": _count(r["route"].rstrip("/0123456789") for r in refused),
        "first_submit_to_last_rent_s": span,
        "floor_s": (jobs - 1) * interval,
        "failures": outcome.failures(),
    }


def _count(keys: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for key in keys:
        out[key] = out.get(key, 0) + 1
    return out


def figures_for(jobs: int, runs: list[dict[str, Any]], interval: float) -> list[Figure]:
    """The table rows of one job count (one value per repeat)."""
    failed = sum(r["jobs"] - r["succeeded"] for r in runs)
    note = f"{failed}/{jobs * len(runs)} jobs failed" if failed else ""
    details = {"runs": runs, "interval_s": interval}
    span = Summary.of(r["first_submit_to_last_rent_s"] for r in runs)
    floor = (jobs - 1) * interval
    rows = [
        check(Figure(f"rl.requests-per-job.n{jobs}", f"API requests per job, {jobs} at once",
                     "req", Summary.of(r["requests_per_job"] for r in runs),
                     target=f"< {REQUESTS_TARGET:g}", note=note, details=details),
              lambda v: v < REQUESTS_TARGET),
        Figure(f"rl.searches-per-job.n{jobs}", f"offer searches per job, {jobs} at once",
               "req", Summary.of(r["searches"] / jobs for r in runs), note=note),
        Figure(f"rl.429-per-job.n{jobs}", f"answers 429 per job, {jobs} at once", "",
               Summary.of(r["refused_per_job"] for r in runs), note=note),
        check(Figure(f"rl.429-share.n{jobs}", f"share of requests answered 429, {jobs}", "",
                     Summary.of(r["refused"] / max(r["requests"], 1) for r in runs),
                     target=f"< {REFUSED_TARGET:g}", note=note),
              lambda v: v < REFUSED_TARGET),
        Figure(f"rl.to-last-rent.n{jobs}", f"first submission -> last instance rented, {jobs}",
               "s", span, note=note,
               ratio=(span.median / floor) if span and floor else None,
               ratio_label=f"x floor ({jobs - 1} creates x {interval:g} s = {floor:.2f} s)"),
    ]
    if failed:
        for fig in rows:
            if fig.met is not None:
                fig.met = False
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python benchmarks/ratelimit.py",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", default="20,50", help="comma-separated job counts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--interval", type=float, default=0.25,
                        help="the simulator's minimum seconds between calls per endpoint")
    parser.add_argument("--boot", type=float, default=3.0, help="boot delay, seconds")
    parser.add_argument("--documented", action="store_true",
                        help="the description's per-endpoint intervals (create: 4.5 s)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    counts = [int(n) for n in args.jobs.split(",") if n.strip()]
    base = Path(tempfile.mkdtemp(prefix="vastai-bench-rl-"))

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    bench = Bench(base=base, quick=False, log=log)
    started = time.monotonic()
    figures: list[Figure] = []
    create = CREATE_INTERVAL if args.documented else args.interval  # the floor's slot
    try:
        for jobs in counts:
            scenario = Scenario(jobs=jobs, rate_limit=args.interval, boot=args.boot,
                                documented=args.documented)
            runs = [measure(o, create) for o in bench.outcomes(scenario, args.repeats)]
            for run in runs:
                log(f"    n={jobs}: {run['succeeded']}/{jobs} ok, {run['requests']} requests, "
                    f"{run['refused']} 429 {run['refused_by_route']}, {run['searches']} "
                    f"searches, last rent after {run['first_submit_to_last_rent_s']} s")
            figures += figures_for(jobs, runs, create)
    finally:
        if args.keep:
            log(f"work directory kept: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    seconds = time.monotonic() - started
    info = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "mode": "ratelimit",
            "duration_s": round(seconds, 1), "machine": machine(),
            "setup": {"interval_s": args.interval, "boot_s": args.boot,
                      "documented_intervals": args.documented,
                      "repeats": args.repeats, "jobs": counts}}
    print(table(figures))
    print(f"\n{len(counts)} job counts x {args.repeats} repeats, {seconds:.0f} s, {info['date']}")
    write_json(args.json, figures, info)
    print(f"JSON: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
