"""``journal cost``: what the workflow cost, in one summary, and per run, rule and GPU model.

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
from ...costs import rules as rule_costs
from ...costs import warm as warm_cost
from ...costs.totals import total
from ...journal.store import Journal
from ...run.commands import own_command
from ...transports import progress
from .. import tables
from .common import emit_json


def _configure_cost(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--detail", action="store_true",
                        help="the tables per run, rule, GPU model and charge, the account "
                             "balance and the warm instances' boot/leased/idle shares")


def cmd_cost(journal: Journal, args: argparse.Namespace) -> int:
    """What the workflow's instances cost: one short summary; the tables with --detail.

    Each instance is counted once, for the run that rented it; one not yet known
    destroyed is billed up to now. Per rule, each instance's whole bill is shared
    over the jobs it served by the time each held it (``costs/rules.py``), so the
    rules add up to the total.

    Example:

        $ snakemake-vastai journal cost
        $0.0006 for 3 instances (0.005 instance-hours) in 1 run
        by rule: boom $0.0002 (1 job), ok $0.0004 (2 jobs)
        details (per run, rule, GPU, charge, balance): snakemake-vastai journal cost --detail
    """
    report = cost_report(journal)
    if args.json:
        return emit_json(report)
    if not args.detail:
        print(summary_text(report))
        return 0
    print(cost_text(report))
    if report.get("bids") is not None:
        print(bid_costs.cost_text(report["bids"]))
    if any(r["boots_avoided"] for r in report["warm"]["runs"]):  # only where shared
        print(f"\n{warm_cost_text(report['warm'])}")
    return 0


def cost_report(journal: Journal) -> dict[str, Any]:
    """Every figure ``journal cost`` shows, from one read of the instances."""
    rows = journal.instances_with_cost()
    jobs = journal.jobs()
    report = {
        "total": total(rows),
        "runs": _totals(rows, lambda r: r["run_id"], "run"),
        "rules": rule_costs.by_rule(rows, jobs),
        "gpus": _totals(rows, tables.gpu_text, "gpu"),
        "balances": balances(journal, rows),
        "warm": {"runs": warm_cost.report(rows, jobs)["runs"]},
    }
    bid_part = bid_costs.cost_report(rows)  # bid instances: storage while stopped, on demand
    if bid_part is not None:
        report["bids"] = bid_part
    return report


def summary_text(report: dict) -> str:
    """Three lines: the total, the rules' shares of it, and how to see more."""
    t = report["total"]
    runs = len(report["runs"])
    head = (f"{tables.money(t['dollars'])} for {_n(t['instances'], 'instance')} "
            f"({tables.hours(t['instance_seconds'])} instance-hours) in {_n(runs, 'run')}")
    rules = ", ".join(f"{r['rule']} {tables.money(r['dollars'])} ({_n(r['jobs'], 'job')})"
                      for r in report["rules"])
    return "\n".join([head, f"by rule: {rules or 'no jobs'}",
                      "details (per run, rule, GPU, charge, balance): "
                      f"{own_command()} journal cost --detail"])


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def warm_cost_text(warm: dict) -> str:
    """Warm instances: the boot, leased (the jobs') and idle shares of each run's bill."""
    runs = [[r["run"], int(r["boots"]), int(r["jobs"]), int(r["boots_avoided"]),
             f"{r['boot_seconds']:.1f}", f"{r['leased_seconds']:.1f}",
             f"{r['idle_seconds']:.1f}", tables.money(r["boot_dollars"]),
             tables.money(r["leased_dollars"]), tables.money(r["idle_dollars"])]
            for r in warm["runs"]]
    return tables.render(["RUN", "BOOTS", "JOBS", "AVOIDED", "BOOT-S", "LEASED-S", "IDLE-S",
                          "BOOT", "LEASED", "IDLE"], runs, right=set(range(1, 10)))


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
        _rule_table(report["rules"]),
        _cost_table("GPU", "gpu", report["gpus"]),
        _cost_table("TOTAL", "name", [{"name": "all", **report["total"]}]),
    ]
    if report.get("balances"):
        sections.append(_balance_table(report["balances"]))
    return "\n\n".join(sections)


def _rule_table(rules: list[dict]) -> str:
    """Per rule: its jobs, the seconds they held instances and their share of the bill."""
    rows = [[r["rule"], r["jobs"], r["instances"], f"{r['held_seconds']:.1f}",
             f"{r['instance_seconds']:.1f}", tables.hours(r["instance_seconds"]),
             tables.money(r["dollars"])] for r in rules]
    return tables.render(["RULE", "JOBS", "INSTANCES", "HELD-S", "SECONDS", "INST-H", "COST"],
                         rows, right={1, 2, 3, 4, 5, 6})


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
