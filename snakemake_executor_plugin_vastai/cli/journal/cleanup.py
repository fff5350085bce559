"""``journal cleanup``: destroy every instance of this workflow that may still bill.

The only command that writes to the journal, and only the destroy bookkeeping.
It plans first (:func:`plan_cleanup` changes nothing: what to destroy, what to
mark gone, what to refuse), asks, then destroys one by one through the plugin's
own teardown (``run/teardown.py``). It refuses while a run of the workflow may
still be using its instances, in a journal copied from another workflow, and
for any row whose label lacks this workflow's prefix.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ...journal.store import RELATIVE_PATH, Journal, JournalError
from ...lifecycle import instance_life
from ...run import liveness as leases
from ...run.redaction import scrub
from ...run.teardown import Teardown
from ...vastai.api import VastAPI
from .. import tables
from .api import _api_options, _status, api_errors, match_listing, open_api
from .common import CliError, _price, emit_json

GONE_WAIT = 60.0  # seconds cleanup waits for a destroyed instance to leave the listing


def _configure_cleanup(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    parser.add_argument("--dry-run", action="store_true", help="show what would be destroyed")
    parser.add_argument(
        "--force",
        action="store_true",
        help="clean up although a run of this workflow is still running (its jobs will fail)",
    )
    parser.add_argument(
        "--orphans",
        nargs="*",
        type=int,
        metavar="ID",
        help="instead: destroy the plugin's instances that no journal here knows once their "
        "watchdog has stopped them (Vast.ai lists them stopped: no run feeds them); running "
        "ones may be fed by a live run elsewhere and are only listed, with why. Without IDs: "
        "this directory's label prefix (works after rm -rf .snakemake); other workflows' "
        "instances are only reported. With IDs: exactly those, of any workflow, each "
        "labelled smk-...; an instance the plugin did not rent is refused. Writes nothing "
        "to the journal",
    )
    _api_options(parser)


@dataclass
class Target:
    """A listed instance of this workflow to destroy, and its journal row if any."""

    instance_id: int
    label: str
    listed: dict
    row: dict | None
    note: str = "not in journal"  # what the journal says, for the confirmation table


@dataclass
class CleanupPlan:
    targets: list[Target] = field(default_factory=list)
    gone: list[dict] = field(default_factory=list)  # journal says maybe alive; listing: no
    refused: list[dict] = field(default_factory=list)  # journal rows without our prefix


def cmd_cleanup(journal: Journal, args: argparse.Namespace) -> int:
    """Destroy every instance of this workflow that may still bill, after asking.

    Candidates: journal rows not known destroyed, and every instance in the
    account whose label starts with this journal's prefix (also those whose
    id never reached the journal). Nothing without that prefix is touched:
    a journal row whose label lacks it is refused and reported (exit 1).
    Each destroy is journaled before the call and confirmed by the API.
    With --json the plan and questions go to stderr, the outcome to stdout.

    --orphans [ID ...] removes instead the plugin's instances that no journal
    here knows, once their watchdog has stopped them (see its help below; the
    rule is in run/orphans.py); it needs no journal.

    Example:

        $ snakemake-vastai journal cleanup
        INSTANCE   LABEL                      API      $/H      JOURNAL
        393107267  smk-b7fb4a81-1c2d3e4f5a6b  running  $0.1343  job 1c2d3e4f5a6b running
        Destroy 1 instance(s)? [y/N] y
        destroyed 393107267 (smk-b7fb4a81-1c2d3e4f5a6b)
        $ snakemake-vastai journal cleanup --orphans --dry-run
    """
    _refuse_while_running(journal, args)
    _refuse_copied(journal)
    api, source = open_api(journal, args)
    with api_errors(api, source):
        listing = api.list_instances(journal.label_prefix)
    plan = plan_cleanup(journal, listing)
    stream = sys.stderr if args.json else sys.stdout  # stdout holds only the JSON
    say = _say_to(stream)
    say(plan_text(plan, journal.label_prefix))
    outcome: dict[str, list] = {"destroyed": [], "failed": [], "marked_gone": []}
    if not args.dry_run and (plan.targets or plan.gone):
        if plan.targets and not args.yes and not confirm(len(plan.targets), stream):
            say("nothing destroyed")
        else:
            outcome = apply_plan(api, journal, plan, say)
    if args.json:
        emit_json({"dry_run": args.dry_run, **plan_json(plan), **outcome})
    return 1 if outcome["failed"] or plan.refused else 0


def apply_plan(
    api: VastAPI, journal: Journal, plan: CleanupPlan, say: Callable[[str], None]
) -> dict[str, list]:
    """Mark the unlisted rows gone, destroy the targets one by one (a failure does not stop
    the others)."""
    for row in plan.gone:
        instance_life.destroyed(journal, label=row["label"])
    destroyed, failed = [], []
    for target in plan.targets:
        error = destroy(api, journal, target)
        if error is None:
            destroyed.append(target.instance_id)
            say(f"destroyed {target.instance_id} ({target.label})")
        else:
            failed.append({"instance_id": target.instance_id, "error": error})
            print(f"NOT destroyed: {error}", file=sys.stderr)
    return {
        "destroyed": destroyed,
        "failed": failed,
        "marked_gone": [row["label"] for row in plan.gone],
    }


def plan_json(plan: CleanupPlan) -> dict[str, list]:
    return {
        "targets": [
            {
                "instance_id": t.instance_id,
                "label": t.label,
                "api_status": _status(t.listed),
                "dph_total": t.listed.get("dph_total"),
                "journaled": t.row is not None,
                "job_id": t.row["job_id"] if t.row else None,
            }
            for t in plan.targets
        ],
        "gone": [row["label"] for row in plan.gone],
        "refused": [{"label": r["label"], "instance_id": r["instance_id"]} for r in plan.refused],
    }


def _say_to(stream: Any) -> Callable[[str], None]:
    return lambda text: print(text, file=stream, flush=True)


def _refuse_copied(journal: Journal) -> None:
    """A journal copied along with its directory names the original's instances."""
    if journal.path.parent.parts[-2:] != RELATIVE_PATH.parent.parts:
        return  # a journal file outside a workflow directory, named with --journal
    original = journal.copied_from(journal.path.parent.parent.parent)
    if original is not None:
        raise CliError(
            f"this directory's journal was copied from {original}: its instances belong to "
            "that workflow. Run cleanup there; a snakemake run here first gives this copy a "
            "fresh label prefix of its own"
        )


def _refuse_while_running(journal: Journal, args: argparse.Namespace) -> None:
    # Any run not provably dead may be using its instances, on this host or another.
    live = [run for run in journal.runs() if not leases.is_provably_dead(run)]
    if live and not args.force and not args.dry_run:
        run = live[-1]
        raise CliError(
            f"run {run['id']} (pid {run['pid']} on {run.get('hostname')}) is still running, or "
            "cannot be proven dead: cleanup would destroy the instances its jobs use. Stop "
            "snakemake first (it "
            "destroys what it rented); a run that crashed on another host counts as running "
            f"until its heartbeat is {leases.STALE_AFTER / 60:.0f} minutes old; or pass --force"
        )


def plan_cleanup(journal: Journal, listing: list[dict]) -> CleanupPlan:
    """What to destroy, what to mark gone and what to refuse; changes nothing."""
    prefix = journal.label_prefix
    ours = [row for row in listing if str(row.get("label") or "").startswith(prefix)]
    rows = [row for row in journal.instances() if row["label"].startswith(prefix)]
    matched, _unmatched = match_listing(rows, ours)
    by_listed = {int(listed["id"]): label for label, listed in matched.items()}
    by_label = {row["label"]: row for row in rows}
    states = {job["id"]: job["state"] for job in journal.jobs()}
    plan = CleanupPlan()
    for listed in ours:
        row = by_label.get(by_listed.get(int(listed["id"]), ""))
        target = Target(int(listed["id"]), str(listed["label"]), listed, row)
        if row is not None:
            target.note = _journal_note(row, states)
        plan.targets.append(target)
    for row in journal.instances_possibly_alive():
        if not row["label"].startswith(prefix):
            plan.refused.append(row)
        elif row["label"] not in matched:
            plan.gone.append(row)
    return plan


def plan_text(plan: CleanupPlan, prefix: str) -> str:
    parts = []
    if plan.targets:
        rows = [
            [
                t.instance_id,
                t.label,
                _status(t.listed),
                _price(t.listed.get("dph_total")),
                t.note,
            ]
            for t in plan.targets
        ]
        headers = ["INSTANCE", "LABEL", "API", "$/H", "JOURNAL"]
        parts.append(tables.render(headers, rows, right={0, 3}))
    else:
        parts.append(f"no instance with a label starting {prefix!r} is alive")
    if plan.gone:
        labels = ", ".join(row["label"] for row in plan.gone)
        parts.append(f"not listed by Vast.ai, to be marked gone in the journal: {labels}")
    for row in plan.refused:
        parts.append(
            f"REFUSED: journal row {row['label']!r} (instance {row['instance_id']}) does not "
            f"carry this workflow's label prefix {prefix!r}; not touching it. Check it in the "
            "Vast.ai console"
        )
    return "\n".join(parts)


def _journal_note(row: dict, states: dict[str, str]) -> str:
    if row["destroyed_at"] is not None:
        return "journal says destroyed"
    if row["job_id"] is None:
        return "no job"
    return f"job {row['job_id']} {states.get(row['job_id'], '?')}"


def confirm(count: int, stream: Any) -> bool:
    """Ask, read one line from stdin; anything but y/yes (or EOF) is no."""
    print(f"Destroy {count} instance(s)? [y/N]", end=" ", file=stream, flush=True)
    answer = sys.stdin.readline() if sys.stdin else ""
    if not (sys.stdin and sys.stdin.isatty()):
        print(file=stream)  # a piped answer is not echoed: end the prompt's line
    return answer.strip().lower() in ("y", "yes")


def destroy(api: VastAPI, journal: Journal, target: Target) -> str | None:
    """The one teardown (teardown.py), bounded by GONE_WAIT; an error message or None."""
    if not target.label.startswith(journal.label_prefix):  # never reached: a last guard
        return f"instance {target.instance_id}: label {target.label!r} is not this workflow's"
    teardown = Teardown(api, journal, _CliLog())
    deadline = time.monotonic() + GONE_WAIT
    row = target.row
    try:
        if row is not None and row["instance_id"] is None:
            instance_life.created(journal, row["label"], target.instance_id)
    except JournalError as exc:
        return f"instance {target.instance_id} ({target.label}): {exc}"
    if row is None:
        done = teardown.destroy_stray(target.listed, "not in the journal (journal cleanup)",
                                      deadline=deadline)
    else:
        done = teardown.destroy(target.instance_id, label=target.label, deadline=deadline)
    if not done:
        return (f"instance {target.instance_id} ({target.label}) is not confirmed gone "
                f"{GONE_WAIT:.0f}s after the destroy request; run cleanup again")
    return None


class _CliLog:
    """The teardown's log, for the CLI: errors and warnings on stderr."""

    def _say(self, event: str, **kw: Any) -> None:
        details = ", ".join(f"{k}={v}" for k, v in kw.items() if v is not None)
        print(scrub(f"{event}" + (f" ({details})" if details else "")), file=sys.stderr)

    warning = error = _say

    def info(self, event: str, **kw: Any) -> None:
        pass
