"""``journal show JOB``: one job in full: its fields, its instance, its history, its last error.

It prints a job as ``jobs.py`` views it and its instance as ``instances.py``
does, so the three commands agree about durations and dollars.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from ...costs import rules as rule_costs
from ...journal.store import Journal
from .. import tables
from .common import _indent, _one, _parse_json, _price, emit_json
from .instances import _destroyed, public_instance
from .jobs import job_view


def _configure_show(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", metavar="JOB", help="job id or a unique prefix of one")


def cmd_show(journal: Journal, args: argparse.Namespace) -> int:
    """One job: its full history, its instance, log file and last error.

    JOB is a job id or any prefix of one that names a single job.

    Example:

        $ snakemake-vastai journal show 9b07
        job        9b07a0422a73
        rule       boom (attempt 1, snakemake job 3)
        state      failed
        ...
        TIME                 TRIGGER       FROM       TO         DETAIL
        2026-11-28 13:35:59  submit        -          searching  -
    """
    job = _one(journal.jobs_with_prefix(args.job), "job", args.job, journal.path)
    rows = journal.instances_with_cost()
    instance = next((row for row in rows if row["label"] == job["label"]), None)
    now = time.time()
    share = rule_costs.by_job(rows, journal.jobs(), now).get(job["id"], {})
    view = {
        "job": job_view(job, share, now),
        "instance": public_instance(instance) if instance else None,
        "transitions": [
            {**t, "detail": _parse_json(t["detail"])} for t in journal.transitions_of(job["id"])
        ],
    }
    if args.json:
        return emit_json(view)
    print(show_text(view))
    return 0


def show_text(view: dict) -> str:
    job, instance = view["job"], view["instance"]
    parts = [tables.fields(_job_fields(job))]
    if instance:
        parts.append("instance\n" + _indent(tables.fields(_instance_fields(instance))))
    history = [
        [
            tables.when(t["at"]),
            t["trigger"],
            t["from_state"],
            t["to_state"],
            _detail_text(t["detail"]),
        ]
        for t in view["transitions"]
    ]
    parts.append(
        "history\n" + _indent(tables.render(["TIME", "TRIGGER", "FROM", "TO", "DETAIL"], history))
    )
    if job["last_error"]:
        parts.append("last error\n" + _indent(job["last_error"].rstrip()))
    return "\n\n".join(parts)


def _job_fields(job: dict) -> list[tuple[str, object]]:
    rule = f"{job['rule']} (attempt {job['attempt']}, snakemake job {job['snakemake_jobid']})"
    return [
        ("job", job["id"]),
        ("rule", rule),
        ("state", job["state"]),
        ("run", job["run_id"]),
        ("submitted", tables.when(job["created_at"])),
        ("ended", tables.when(job["ended_at"])),
        ("duration", tables.duration(job["duration_seconds"])),
        ("exit code", job["exit_code"]),
        ("resumed from", job["resumed_from"]),
        ("log", job["log_path"]),
    ]


def _instance_fields(row: dict) -> list[tuple[str, object]]:
    ssh = f"{row['ssh_host']}:{row['ssh_port']}" if row["ssh_host"] else None
    return [
        ("id", row["instance_id"]),
        ("label", row["label"]),
        ("offer", row["offer_id"]),
        ("machine", row["machine_id"]),
        ("GPU", tables.gpu_text(row)),
        ("price", f"{_price(row['dph_total'])}/h"),
        ("where", row["geolocation"]),
        ("ssh", ssh),
        ("requested", tables.when(row["requested_at"])),
        ("created", tables.when(row["created_at"])),
        ("destroyed", _destroyed(row)),
        ("last status", row["last_status"]),
        (
            "billed",
            f"{tables.duration(row['billed_seconds'])}, {tables.money(row['billed_dollars'])}",
        ),
    ]


def _detail_text(detail: Any) -> str | None:
    if detail is None or isinstance(detail, str):
        return tables.one_line(detail, 100) if detail else None
    return tables.one_line(json.dumps(detail, default=str), 100)
