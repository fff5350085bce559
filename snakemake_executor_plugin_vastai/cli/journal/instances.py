"""``journal instances``: every instance the workflow rented, and with ``--alive`` which bill now.

``--alive`` asks Vast.ai once (``api.py``) and names each live instance that no
running job uses: the exit code 1 that tells a script something bills that
should not. :func:`public_instance` and :func:`_destroyed` are also how
``journal show`` prints a job's instance.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

from ...journal.store import TERMINAL_STATES, Journal
from .. import tables
from .api import _api_options, _status, list_ours, match_listing
from .common import PROG, _parse_json, _price, emit_json, run_is_live


def _configure_instances(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--alive", action="store_true", help="ask Vast.ai which instances exist now"
    )
    _api_options(parser)


def cmd_instances(journal: Journal, args: argparse.Namespace) -> int:
    """Every instance the workflow rented: requested, created, destroyed, billed time, dollars.

    ``--alive`` lists the account once and adds what Vast.ai says now; it
    exits 1 if an instance of this workflow lives that no running job uses
    (its job ended, its run ended or crashed, or no journal row names it).

    Example:

        $ snakemake-vastai journal instances --alive
        INSTANCE   JOB           RULE  GPU          $/H      ...  COST     API
        392958068  9b07a0422a73  boom  1x RTX 3090  $0.1378  ...  $0.0002  gone
    """
    views = [instance_view(row) for row in journal.instances_with_cost()]
    _attach_rules(journal, views)
    unexpected = 0
    if args.alive:
        views, unexpected = check_alive(journal, args, views)
    if args.json:
        emit_json(views)
    else:
        print(instances_table(views, alive=args.alive) if views else "no instances rented")
        if unexpected:
            print(
                f"\n{unexpected} instance(s) of this workflow are alive although no running "
                f"job uses them; destroy them with: {PROG} cleanup"
            )
    return 1 if unexpected else 0


def instance_view(row: dict) -> dict:
    return {**public_instance(row), "journaled": True}


def public_instance(row: dict) -> dict:
    """An instance row as shown: the offer parsed, the pinned host key left out (noise)."""
    view = {key: value for key, value in row.items() if key != "host_key"}
    if "offer" in view:
        view["offer"] = _parse_json(view["offer"])
    return view


def _attach_rules(journal: Journal, views: list[dict]) -> None:
    rules = {job["id"]: job["rule"] for job in journal.jobs()}
    for view in views:
        view["rule"] = rules.get(view.get("job_id"))


def check_alive(
    journal: Journal, args: argparse.Namespace, views: list[dict]
) -> tuple[list[dict], int]:
    """Add ``api_status`` and ``unexpected`` from one listing; count the unexpected."""
    listing = list_ours(journal, args)
    matched, unmatched = match_listing(views, listing)
    users = _live_users(journal)
    for view in views:
        listed = matched.get(view["label"])
        view["api_status"] = _status(listed) if listed else "gone"
        view["unexpected"] = _why_unexpected(view, listed, users)
    for row in unmatched:
        views.append(
            {
                "label": row.get("label"),
                "instance_id": int(row["id"]),
                "journaled": False,
                "gpu_name": row.get("gpu_name"),
                "num_gpus": row.get("num_gpus"),
                "dph_total": row.get("dph_total"),
                "api_status": _status(row),
                "unexpected": "no journal row names it",
            }
        )
    return views, sum(1 for view in views if view["unexpected"])


def _live_users(journal: Journal) -> dict[str, list[dict]]:
    """label -> every job using it, ``live`` set when it is unfinished in a live run."""
    live_runs = {run["id"] for run in journal.runs() if run_is_live(run)}
    users: dict[str, list[dict]] = defaultdict(list)
    for job in journal.jobs():
        if job["label"]:
            live = job["state"] not in TERMINAL_STATES and job["run_id"] in live_runs
            users[job["label"]].append({**job, "live": live})
    return users


def _why_unexpected(view: dict, listed: dict | None, users: dict[str, list[dict]]) -> str | None:
    """Why a listed instance should not exist, or None (gone, or a running job uses it)."""
    if listed is None:
        return None
    jobs = users.get(view["label"], [])
    if any(job["live"] for job in jobs):
        return None
    if not jobs:
        return "no job in the journal uses it"
    last = jobs[-1]
    if last["state"] in TERMINAL_STATES:
        return f"its job {last['id']} is {last['state']}"
    return f"its run {last['run_id']} is not running"


def instances_table(views: list[dict], *, alive: bool) -> str:
    headers = ["INSTANCE", "JOB", "RULE", "GPU", "$/H", "REQUESTED", "CREATED", "DESTROYED"]
    headers += ["BILLED", "COST"]
    rows = []
    for v in views:
        row = [
            v["instance_id"],
            v.get("job_id"),
            v.get("rule"),
            tables.gpu_text(v),
            _price(v["dph_total"]),
            tables.when(v.get("requested_at")),
            tables.when(v.get("created_at")),
            _destroyed(v) if v["journaled"] else "not in journal",
            tables.duration(v.get("billed_seconds")),
            tables.money(v.get("billed_dollars")),
        ]
        if alive:
            row.append(v["api_status"] + (f" (! {v['unexpected']})" if v["unexpected"] else ""))
        rows.append(row)
    return tables.render([*headers, *(["API"] if alive else [])], rows, right={0, 4, 8, 9})


def _destroyed(row: dict) -> str:
    """When it went; or what the journal knows about an instance it has no end for."""
    if row.get("destroyed_at") is not None:
        return tables.when(row["destroyed_at"])
    if row.get("instance_id") is None:
        return "create unanswered"
    return "still billing?"
