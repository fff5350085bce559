"""``python -m snakemake_executor_plugin_vastai journal``: the journal, answered without SQL.

What ran where, what it cost, why a job failed, whether anything still bills,
and destroying what does. Run it in the workflow's directory, or name the
journal (or the workflow directory) with ``--journal``::

    python -m snakemake_executor_plugin_vastai journal runs
    python -m snakemake_executor_plugin_vastai journal jobs --state failed
    python -m snakemake_executor_plugin_vastai journal show 9b07
    python -m snakemake_executor_plugin_vastai journal instances --alive
    python -m snakemake_executor_plugin_vastai journal cost --json
    python -m snakemake_executor_plugin_vastai journal cleanup --dry-run
    python -m snakemake_executor_plugin_vastai journal timeline -o run.html

Every subcommand prints aligned tables for people and, with ``--json``, the
full rows for scripts (epoch-second times, untruncated errors). Reading never
creates a journal; only ``cleanup`` writes to one, and only the destroy
bookkeeping (``destroy_requested_at``, ``destroyed_at``).

Vast.ai is asked only by ``instances --alive`` and ``cleanup``: one listing of
the account, of which only instances whose label starts with this journal's
label prefix are ever considered. The API key comes from
``SNAKEMAKE_VASTAI_API_KEY`` / ``VAST_API_KEY`` or ``--api-key-file`` (never
from a plain option, which would show in the process list and shell history);
the URL from ``--api-url``, ``VAST_URL``, the latest run's settings, or the
real service.

Exit codes
----------
0  fine.
1  something bills that should not, or may: ``instances --alive`` found a live
   instance no running job uses, or Vast.ai could not be asked; ``cleanup``
   could not destroy something, or refused to touch a journal row whose label
   lacks this workflow's prefix.
2  usage error; journal missing, empty, damaged or too new; unknown or
   ambiguous job or run; no API key, or the key was refused; ``cleanup``
   while a run of this workflow is still running (without ``--force``).
"""

from __future__ import annotations

import argparse
import inspect
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...journal.store import RELATIVE_PATH, Journal, JournalError
from ...run import liveness as leases
from ...run.redaction import scrub
from ...run.teardown import Teardown
from ...vastai.api import VastAPI
from .. import tables
from .api import _api_options, _status, api_errors, match_listing, open_api
from .common import PROG, CliError, _price, emit_json
from .cost import _configure_cost, cmd_cost
from .instances import _configure_instances, cmd_instances
from .jobs import _configure_jobs, cmd_jobs
from .runs import _configure_runs, cmd_runs
from .show import _configure_show, cmd_show
from .timeline import _configure_timeline, cmd_timeline

GONE_WAIT = 60.0  # seconds cleanup waits for a destroyed instance to leave the listing
DESCRIPTION = (
    "Inspect this workflow's Vast.ai journal (runs, jobs, instances, cost) "
    "and destroy leftover instances. 'COMMAND --help' shows each command's options."
)
EPILOG = """\
exit codes:
  0  fine
  1  something bills that should not, or may (instances --alive, cleanup)
  2  usage error; journal missing, damaged or too new; no or refused API key"""


Handler = Callable[[Journal, argparse.Namespace], int]


# -- entry point ---------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """Parse, open the journal read-mostly, run one subcommand; return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # --help (0) or a usage error (2): argparse printed why
        return int(exc.code or 0)
    try:
        with open_journal(args.journal) as journal:
            return int(args.handler(journal, args))
    except CliError as exc:
        print(f"journal: {exc}", file=sys.stderr)
        return exc.code
    except JournalError as exc:  # damaged, too new, locked: the message says what to do
        print(f"journal: {exc}", file=sys.stderr)
        return 2
    except sqlite3.Error as exc:  # e.g. a directory we may not write the WAL index into
        print(f"journal: cannot read {args.journal}: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `journal jobs | head`
        _silence_stdout()
        return 0
    except KeyboardInterrupt:  # a destroy already journaled is finished by the next cleanup
        print(file=sys.stderr)
        return 130


def open_journal(path: Path) -> Journal:
    """The existing journal at ``path`` (or in the workflow directory ``path``).

    ``Journal()`` creates a missing file, which is right for a run and wrong
    here: a typo in ``--journal`` must not leave an empty journal behind.
    """
    if path.is_dir():
        path = path / RELATIVE_PATH
    if not path.exists():
        raise CliError(
            f"no journal at {path}: run this in the workflow directory (where snakemake ran "
            "with --executor vastai), or pass --journal PATH"
        )
    if not path.is_file() or path.stat().st_size == 0:
        raise CliError(f"{path} is not a journal (empty or not a file); pass --journal PATH")
    return Journal(path)


def _silence_stdout() -> None:
    """After a closed pipe, point stdout at /dev/null so the interpreter exits quietly."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


# -- the parser ----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """One subparser per command; its description is the handler's docstring."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # `--api-key SECRET` must not pass as --api-key-file
    )
    _journal_option(parser, default=RELATIVE_PATH)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, handler, configure in COMMANDS:
        doc = inspect.getdoc(handler) or ""
        child = sub.add_parser(
            name,
            help=doc.splitlines()[0],
            description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            allow_abbrev=False,
        )
        _journal_option(child, default=argparse.SUPPRESS)  # also accepted after COMMAND
        child.add_argument("--json", action="store_true", help="print JSON for scripts")
        configure(child)
        child.set_defaults(handler=handler)
    return parser


def _journal_option(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "--journal",
        type=Path,
        default=default,
        metavar="PATH",
        help=f"the journal file, or a workflow directory (default: ./{RELATIVE_PATH})",
    )


def _configure_cleanup(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    parser.add_argument("--dry-run", action="store_true", help="show what would be destroyed")
    parser.add_argument(
        "--force",
        action="store_true",
        help="clean up although a run of this workflow is still running (its jobs will fail)",
    )
    _api_options(parser)




# -- cleanup -------------------------------------------------------------------------------
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

    Example:

        $ python -m snakemake_executor_plugin_vastai journal cleanup
        INSTANCE   LABEL                      API      $/H      JOURNAL
        393107267  smk-b7fb4a81-1c2d3e4f5a6b  running  $0.1343  job 1c2d3e4f5a6b running
        Destroy 1 instance(s)? [y/N] y
        destroyed 393107267 (smk-b7fb4a81-1c2d3e4f5a6b)
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
        journal.record_instance_destroyed(label=row["label"])
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
            journal.record_instance_created(row["label"], target.instance_id)
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


COMMANDS: list[tuple[str, Handler, Callable[[argparse.ArgumentParser], None]]] = [
    ("runs", cmd_runs, _configure_runs),
    ("jobs", cmd_jobs, _configure_jobs),
    ("show", cmd_show, _configure_show),
    ("instances", cmd_instances, _configure_instances),
    ("cost", cmd_cost, _configure_cost),
    ("cleanup", cmd_cleanup, _configure_cleanup),
    ("timeline", cmd_timeline, _configure_timeline),
]
