"""``journal cost``: instance-seconds and dollars per run, rule and GPU model.

Also the one total of a set of instance rows (:func:`_total`), which the
timeline page (``cli/timeline.py``) uses for its header, so the page and this
table can never disagree about a run's dollars.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from ...costs import bids as bid_costs
from ...costs import ledger
from ...costs import warm as warm_cost
from ...costs.totals import total
from ...journal.store import Journal
from ...transports import progress
from .. import tables
from .common import emit_json


def _configure_cost(parser: argparse.ArgumentParser) -> None:
    pass


def cmd_cost(journal: Journal, args: argparse.Namespace) -> int:
    """Totals per run, per rule and per GPU model: instance-seconds, -hours and dollars.

    Each instance is counted once, for the run that rented it and the rule of
    the job it was rented for; one not yet known destroyed is billed up to now.

    Example:

        $ python -m snakemake_executor_plugin_vastai journal cost
        RUN                     INSTANCES  SECONDS  INST-H     COST
        20261128T133559-6a6039          3     17.2   0.005  $0.0006
        ...
    """
    rows = journal.instances_with_cost()
    rules = {job["id"]: job["rule"] for job in journal.jobs()}
    report = {
        "total": total(rows),
        "runs": _totals(rows, lambda r: r["run_id"], "run"),
        "rules": _totals(rows, lambda r: rules.get(r["job_id"]), "rule"),
        "gpus": _totals(rows, tables.gpu_text, "gpu"),
        "balances": balances(journal, rows),
    }
    bid_part = bid_costs.cost_report(rows)  # bid instances: storage while stopped, on demand
    if bid_part is not None:
        report["bids"] = bid_part
    report["warm"] = warm_cost.report(rows, journal.jobs())
    if args.json:
        return emit_json(report)
    print(cost_text(report))
    if bid_part is not None:
        print(bid_costs.cost_text(bid_part))
    if any(r["boots_avoided"] for r in report["warm"]["runs"]):  # only where shared
        print(f"\n{warm_cost_text(report['warm'])}")
    return 0


def warm_cost_text(warm: dict) -> str:
    """Warm instances: the boot, leased (the jobs') and idle shares of each run's bill,
    and each rule's jobs' leased time (what a job costs when instances are shared)."""
    runs = [[r["run"], int(r["boots"]), int(r["jobs"]), int(r["boots_avoided"]),
             f"{r['boot_seconds']:.1f}", f"{r['leased_seconds']:.1f}",
             f"{r['idle_seconds']:.1f}", tables.money(r["boot_dollars"]),
             tables.money(r["leased_dollars"]), tables.money(r["idle_dollars"])]
            for r in warm["runs"]]
    rules = [[r["rule"], int(r["jobs"]), f"{r['seconds']:.1f}", tables.money(r["dollars"])]
             for r in warm["rules"]]
    return "\n\n".join([
        tables.render(["RUN", "BOOTS", "JOBS", "AVOIDED", "BOOT-S", "LEASED-S", "IDLE-S",
                       "BOOT", "LEASED", "IDLE"], runs, right=set(range(1, 10))),
        tables.render(["RULE", "JOBS", "LEASED-S", "JOB COST"], rules, right={1, 2, 3}),
    ])


def balances(journal: Journal, rows: list[dict]) -> list[dict]:
    """Per run with a known start balance: the account credit before and after, what it
    fell by, and the ledger's total for the run (they agree when nothing else billed)."""
    ledger_total = {t["run"]: t["dollars"] for t in _totals(rows, lambda r: r["run_id"], "run")}
    return [
        {"run": run["id"], "before": run.get("balance_before"),
         "after": run.get("balance_after"),
         "fell_by": (None if run.get("balance_after") is None
                     else run["balance_before"] - run["balance_after"]),
         "ledger": ledger_total.get(run["id"], 0.0)}
        for run in journal.runs() if run.get("balance_before") is not None
    ]


def _totals(rows: list[dict], key: Callable[[dict], Any], name: str) -> list[dict]:
    groups: dict[Any, list[dict]] = defaultdict(list)
    for row in rows:
        groups[key(row)].append(row)
    return [{name: group, **total(members)} for group, members in groups.items()]


def cost_text(report: dict) -> str:
    sections = [
        _cost_table("RUN", "run", report["runs"]),
        _cost_table("RULE", "rule", report["rules"]),
        _cost_table("GPU", "gpu", report["gpus"]),
        _cost_table("TOTAL", "name", [{"name": "all", **report["total"]}]),
    ]
    if report.get("balances"):
        sections.append(_balance_table(report["balances"]))
    return "\n\n".join(sections)


def _balance_table(rows: list[dict]) -> str:
    def money(value: float | None) -> str:
        return "-" if value is None else tables.money(value)

    body = [[b["run"], money(b["before"]), money(b["after"]), money(b["fell_by"]),
             money(b["ledger"])] for b in rows]
    return tables.render(["BALANCE OF RUN", "BEFORE", "AFTER", "FELL BY", "LEDGER"], body,
                         right={1, 2, 3, 4})


def _cost_table(title: str, key: str, totals: list[dict]) -> str:
    names = [c.name for c in ledger.COMPONENTS]
    rows = [
        [
            t[key],
            t["instances"],
            f"{t['instance_seconds']:.1f}",
            tables.hours(t["instance_seconds"]),
            progress.human_bytes(t["bytes_uploaded"] + t["bytes_downloaded"]),
            *(tables.money(t["components"][name]) for name in names),
            tables.money(t["dollars"]),
        ]
        for t in totals
    ]
    headers = [title, "INSTANCES", "SECONDS", "INST-H", "MOVED",
               *(name.upper() for name in names), "COST"]
    return tables.render(headers, rows, right=set(range(1, len(headers))))
