"""``journal jobs``: the jobs of a run (or of all), and ``--follow`` while the run lives.

One line per job: its instance, GPU, price, duration, cost and the first line
of its last error; :func:`job_view` (a job row plus what people ask of it) is
also what ``journal show`` prints a job with. ``--follow`` redraws the table
and the transfers in flight until the latest run ends.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from ...costs import rules as rule_costs
from ...journal.store import Journal
from ...run.verdict import run_verdict
from ...transports import progress
from .. import tables
from .common import (
    STATE_ORDER,
    _latest_run,
    _price,
    run_is_live,
    selected_run,
)

ERROR_WIDTH = 60  # characters of a last error shown in the jobs table


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return value


def _configure_jobs(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--run", metavar="ID", help="this run (id or unique prefix)")
    which.add_argument("--all-runs", action="store_true", help="jobs of every run")
    parser.add_argument("--state", choices=STATE_ORDER, help="only jobs in this state")
    parser.add_argument("--rule", help="only jobs of this rule")
    parser.add_argument(
        "--follow", action="store_true", help="refresh while the latest run is running"
    )
    parser.add_argument(
        "--interval",
        type=_positive,
        default=2.0,
        metavar="SECONDS",
        help="seconds between refreshes with --follow (default: 2)",
    )


def cmd_jobs(journal: Journal, args: argparse.Namespace) -> int:
    """Jobs of the latest run (or --run ID, --all-runs), filtered by --state and --rule.

    Each job with its instance, GPU, price, duration, cost and the first line
    of its last error (the whole error: ``show JOB`` or ``--json``).
    ``--follow`` refreshes every ``--interval`` seconds until the latest run ends.

    Example:

        $ snakemake-vastai journal jobs --state failed
        JOB           RULE  TRY  STATE   INSTANCE  GPU          ...     COST  ERROR
        9b07a0422a73  boom    1  failed  392958068  1x RTX 3090  ...  $0.0002  rule boom: the ...
    """
    if args.follow:
        return follow_jobs(journal, args)
    print_jobs(journal, args)
    return 0


def print_jobs(journal: Journal, args: argparse.Namespace, *, compact: bool = False) -> None:
    """One rendering of the selected jobs (compact: one JSON line, for --follow --json)."""
    views = job_views(journal, args)
    if args.json:
        print(json.dumps(views, indent=None if compact else 2, default=str))
    elif views:
        print(jobs_table(views, with_run=args.all_runs))
    else:
        print("no jobs match")


def job_views(journal: Journal, args: argparse.Namespace) -> list[dict]:
    run_id = None if args.all_runs else selected_run(journal, args.run)
    if run_id is None and not args.all_runs:
        return []
    rows = journal.instances_with_cost()
    now = time.time()
    shares = rule_costs.by_job(rows, journal.jobs(), now)  # every job: the shares need all
    jobs = journal.jobs(run_id=run_id, state=args.state, rule=args.rule)
    return [job_view(job, shares.get(job["id"], {}), now) for job in jobs]


def job_view(job: dict, share: dict, now: float) -> dict:
    """A job row plus what people ask of it: GPU, duration, its share of the bill.

    The share is ``costs/rules.py``'s: the whole bill of an instance it had alone,
    else its part by the time it held the instance, so a rule's jobs add up to the
    rule's figure in ``journal cost``.
    """
    end = job["ended_at"] if job["ended_at"] is not None else now
    return {
        **job,
        "gpu": tables.gpu_text(job),
        "duration_seconds": max(0.0, float(end) - float(job["created_at"])),
        "instance_seconds": share.get("instance_seconds", 0.0),
        "dollars": share.get("dollars", 0.0),
    }


def jobs_table(views: list[dict], *, with_run: bool = False) -> str:
    """The jobs, one line each; ``with_run`` adds the run column (for --all-runs)."""
    headers = ["JOB", "RULE", "TRY", "STATE", "INSTANCE", "GPU", "$/H", "TIME", "COST"]
    headers += ["RUN", "ERROR"] if with_run else ["ERROR"]
    rows = [
        [
            v["id"],
            v["rule"],
            v["attempt"],
            v["state"],
            v["instance_id"],
            v["gpu"],
            _price(v["dph_total"]),
            tables.duration(v["duration_seconds"]),
            tables.money(v["dollars"]),
            *([v["run_id"]] if with_run else []),
            tables.one_line(v["last_error"], ERROR_WIDTH),
        ]
        for v in views
    ]
    return tables.render(headers, rows, right={2, 4, 6, 7, 8})


def follow_jobs(journal: Journal, args: argparse.Namespace) -> int:
    """Print, wait, print again while the latest run is live; Ctrl-C ends it quietly.

    Liveness is read *before* each rendering, so the last table printed is
    the one taken after the run ended.
    """
    clear = sys.stdout.isatty() and not args.json
    try:
        while True:
            latest = _latest_run(journal)
            live = latest is not None and run_is_live(latest)
            if clear:
                print("\x1b[H\x1b[2J", end="")
            if not args.json:
                print(_follow_header(journal, latest, live))
            print_jobs(journal, args, compact=True)
            moving = transfers_text(journal, latest) if live and not args.json else ""
            if moving:
                print(moving)
            sys.stdout.flush()
            if not live:
                return 0
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0


def transfers_text(journal: Journal, run: dict | None) -> str:
    """Uploads and downloads of the run still in flight (progress.py writes their rows)."""
    if run is None:
        return ""
    rows = [t for t in journal.transfers(in_flight=True) if t["run_id"] == run["id"]]
    if not rows:
        return ""
    now = time.time()
    body = []
    for t in rows:
        elapsed = max(float(t["updated_at"]) - float(t["started_at"]), 1e-9)
        done, total = int(t["bytes_done"]), t["bytes_total"]
        body.append([t["job_id"], t["direction"], progress.human_bytes(done),
                     "?" if not total else progress.human_bytes(int(total)),
                     "-" if not total else f"{100.0 * done / int(total):.0f}%",
                     f"{progress.human_bytes(done / elapsed)}/s",
                     tables.duration(now - float(t["started_at"]))])
    table = tables.render(["TRANSFER OF JOB", "DIRECTION", "DONE", "TOTAL", "%", "RATE",
                           "FOR"], body, right={2, 3, 4, 5, 6})
    return "\n" + table


def _follow_header(journal: Journal, run: dict | None, live: bool) -> str:
    if run is None:
        return "no runs yet"
    ended = run_verdict(run, journal.jobs(run_id=run["id"]))
    state = "running (Ctrl-C to stop following)" if live else ended
    return f"run {run['id']}: {state}  [{tables.when(time.time())}]"
