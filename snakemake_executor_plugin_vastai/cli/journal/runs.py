"""``journal runs``: every run of the workflow, how it ended, its jobs by state and its bill."""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict

from ...journal.store import Journal
from ...run.verdict import run_verdict
from .. import tables
from .common import _ordered_states, _parse_json, emit_json


def _configure_runs(parser: argparse.ArgumentParser) -> None:
    pass


def cmd_runs(journal: Journal, args: argparse.Namespace) -> int:
    """Every run: when, how it ended, its jobs by state, instance-hours and dollars.

    A run that never recorded its end is "running" while its snakemake process
    lives (same host) and "unfinished" otherwise (it crashed or was killed). A run
    in which jobs failed reads "failed (1 of 3 jobs)" whatever else it recorded
    (``--json`` keeps the recorded ``outcome`` beside this ``status``).

    Example:

        $ snakemake-vastai journal runs
        RUN                     ...  OUTCOME               JOBS                   ...
        20261128T133559-6a6039  ...  failed (1 of 3 jobs)  2 succeeded, 1 failed  ...
    """
    views = run_views(journal)
    if args.json:
        return emit_json(views)
    print(runs_table(views) if views else f"no runs in {journal.path}")
    return 0


def run_views(journal: Journal) -> list[dict]:
    jobs_by_run: dict[str, list[dict]] = defaultdict(list)
    for job in journal.jobs():
        jobs_by_run[job["run_id"]].append(job)
    views = []
    for run in journal.runs():
        seconds, dollars = journal.run_cost(run["id"])
        counts = Counter(job["state"] for job in jobs_by_run[run["id"]])
        views.append(
            {
                **run,
                "settings": _parse_json(run["settings"]),
                "status": run_verdict(run, jobs_by_run[run["id"]]),
                "jobs": {state: counts[state] for state in _ordered_states(counts)},
                "instance_seconds": seconds,
                "instance_hours": seconds / 3600.0,
                "dollars": dollars,
            }
        )
    return views


def runs_table(views: list[dict]) -> str:
    rows = [
        [
            v["id"],
            tables.when(v["started_at"]),
            tables.when(v["ended_at"]),
            v["status"],
            ", ".join(f"{n} {state}" for state, n in v["jobs"].items()) or "no jobs",
            tables.hours(v["instance_seconds"]),
            tables.money(v["dollars"]),
        ]
        for v in views
    ]
    headers = ["RUN", "STARTED", "ENDED", "OUTCOME", "JOBS", "INST-H", "COST"]
    return tables.render(headers, rows, right={5, 6})
