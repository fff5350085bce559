"""``journal cleanup --orphans``: remove the plugin's instances that no journal here knows,
once their watchdog has stopped them.

Which instances go and which are left (and why) is the rule in ``run/orphans.py``: only
an instance Vast.ai lists as stopped, which no run is feeding. This module finds the
label prefix (the journal's; without a journal, as after ``rm -rf .snakemake``, the one
derived from this machine and directory, as the next run would take it), asks for one
listing of the account, prints the plan, asks, and destroys one by one through the
plugin's own teardown (``run/teardown.py``), after reading each instance's status again.

It writes nothing to the journal and never creates one: the instances it removes are in
no journal by definition, and a row for another workflow's instance would be one this
directory's recovery later has to explain. A destroy not confirmed is reported (exit 1);
running ``--orphans`` again finishes it. It does not refuse while a run of this directory
is live, unlike plain ``cleanup``: everything a live run rented is in its journal (each
label is journaled before its create, and the journal is read after the listing), and
only what no journal row knows is considered.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ...journal.store import RELATIVE_PATH, Journal, derived_label_prefix
from ...run import orphans
from ...run.commands import own_command
from ...run.teardown import Teardown
from ...vastai.api import VastAPI
from .. import tables
from .api import _status, api_errors, open_api
from .cleanup import GONE_WAIT, _CliLog, _refuse_copied, _say_to, confirm
from .common import CliError, _price, emit_json


def cmd_orphans(journal: Journal | None, args: argparse.Namespace) -> int:
    """``journal cleanup --orphans [ID ...]`` (its help is in ``cleanup.py``)."""
    if journal is not None:
        _refuse_copied(journal)
        prefix = journal.label_prefix
    else:
        prefix = derived_label_prefix(workdir_of(args.journal))
    api, source = open_api(journal, args)
    with api_errors(api, source):
        listed = api.list_instances()
    labels, ids = known(journal)  # read after the listing: see the module docstring
    plan = orphans.plan(listed, own_prefix=prefix, known_labels=labels, known_ids=ids,
                        named=args.orphans or None)
    if plan.refused:
        named = "; ".join(f"instance {r['id']} (label {r.get('label')!r})"
                          for r in plan.refused)
        raise CliError(f"{named}: not rented by this plugin (its label does not start with "
                       f"{orphans.PLUGIN_PREFIX!r}); not touching it, nothing was destroyed. "
                       "Check it in the Vast.ai console")
    stream = sys.stderr if args.json else sys.stdout  # stdout holds only the JSON
    say = _say_to(stream)
    say(plan_text(plan, prefix, named=bool(args.orphans)))
    outcome: dict[str, list] = {"destroyed": [], "failed": [], "skipped": []}
    if plan.remove and not args.dry_run:
        if not args.yes and not confirm(len(plan.remove), stream):
            say("nothing destroyed")
        else:
            outcome = remove(api, plan.remove, say)
    if args.json:
        emit_json({"dry_run": args.dry_run, "prefix": prefix, **plan_json(plan), **outcome})
    return 1 if outcome["failed"] else 0


def workdir_of(path: Path) -> Path:
    """The workflow directory that ``--journal`` names (the default: this one)."""
    if path.is_dir():
        return path
    if path.parts[-len(RELATIVE_PATH.parts):] == RELATIVE_PATH.parts:
        workdir = path.parent.parent.parent
        if workdir.is_dir():
            return workdir
    raise CliError(f"no journal at {path}, and it is not in a workflow directory: run this "
                   "in the workflow directory, or pass --journal DIR")


def known(journal: Journal | None) -> tuple[set[str], set[int]]:
    """Labels and ids this journal knows: its instance rows and the strays it recorded."""
    if journal is None:
        return set(), set()
    rows = journal.instances()
    ids = {int(r["instance_id"]) for r in rows if r["instance_id"] is not None}
    ids |= {int(r["instance_id"]) for r in journal.strays()}
    return {r["label"] for r in rows}, ids


def remove(api: VastAPI, targets: list[orphans.Orphan], say) -> dict[str, list]:
    """Destroy each target that is still stopped (read again: a run may have started it
    since the listing), through the one teardown, with no journal."""
    teardown = Teardown(api, None, _CliLog())
    destroyed, failed, skipped = [], [], []
    for target in targets:
        iid = target.instance_id
        try:
            row = api.show_instance(iid)
        except Exception as exc:  # VastError, a garbled answer: not destroyed blind
            failed.append({"instance_id": iid, "error": f"status unknown: {exc}"})
            print(f"NOT destroyed: instance {iid}: its status could not be read again "
                  f"({type(exc).__name__}); run --orphans again", file=sys.stderr)
            continue
        if row is not None and not orphans.proven_unfed(row):
            skipped.append({"instance_id": iid, "reason": orphans.why_left(row)})
            say(f"left {iid} ({target.label}): started again since the listing")
            continue
        if teardown.destroy(iid, label=target.label, deadline=time.monotonic() + GONE_WAIT):
            destroyed.append(iid)
            say(f"destroyed {iid} ({target.label})")
        else:
            failed.append({"instance_id": iid, "error": "not confirmed gone"})
            print(f"NOT destroyed: instance {iid} ({target.label}) is not confirmed gone "
                  f"{GONE_WAIT:.0f}s after the destroy request; run --orphans again",
                  file=sys.stderr)
    return {"destroyed": destroyed, "failed": failed, "skipped": skipped}


def plan_text(plan: orphans.OrphanPlan, prefix: str, *, named: bool) -> str:
    headers = ["INSTANCE", "LABEL", "API", "$/H"]
    parts = []

    def table(items: list[orphans.Orphan], why: str) -> str:
        rows = [[o.instance_id, o.label, _status(o.row), _price(o.row.get("dph_total")),
                 o.reason] for o in items]
        return tables.render([*headers, why], rows, right={0, 3})

    if plan.remove:
        parts.append("to destroy (stopped by their watchdog or by hand; no run feeds them):")
        parts.append(table(plan.remove, "WHY"))
    if plan.left:
        parts.append("left alone:")
        parts.append(table(plan.left, "WHY LEFT"))
    if not plan.remove and not plan.left and not named:
        parts.append(f"no orphan: every instance with a label starting {prefix!r} is in "
                     "this directory's journal, or there is none")
    for iid in plan.missing:
        parts.append(f"instance {iid} is not listed by Vast.ai (gone already, or not this "
                     "account's)")
    if plan.foreign:
        ids = " ".join(str(r.get("id")) for r in plan.foreign)
        now = time.time()
        lines = "\n".join(f"  {orphans.describe(r, now)}" for r in plan.foreign)
        parts.append(f"other workflows' or machines' instances, never touched unless named:\n"
                     f"{lines}\n  to remove those stopped: {own_command()} journal cleanup "
                     f"--orphans {ids}")
    return "\n".join(parts)


def plan_json(plan: orphans.OrphanPlan) -> dict[str, list]:
    def item(o: orphans.Orphan) -> dict:
        return {"instance_id": o.instance_id, "label": o.label, "api_status": _status(o.row),
                "intended_status": o.row.get("intended_status"),
                "dph_total": o.row.get("dph_total"), "reason": o.reason}

    return {
        "remove": [item(o) for o in plan.remove],
        "left": [item(o) for o in plan.left],
        "foreign": [{"instance_id": r.get("id"), "label": r.get("label"),
                     "api_status": _status(r)} for r in plan.foreign],
        "missing": plan.missing,
    }
