"""``snakemake-vastai journal``: the journal, answered without SQL.

What ran where, what it cost, why a job failed, whether anything still bills,
and destroying what does. Run it in the workflow's directory, or name the
journal (or the workflow directory) with ``--journal``::

    snakemake-vastai journal runs
    snakemake-vastai journal jobs --state failed
    snakemake-vastai journal show 9b07
    snakemake-vastai journal instances --alive
    snakemake-vastai journal cost --json
    snakemake-vastai journal cleanup --dry-run
    snakemake-vastai journal timeline -o run.html

Every subcommand prints aligned tables for people and, with ``--json``, the
full rows for scripts (epoch-second times, untruncated errors). Reading never
creates a journal; only ``cleanup`` writes to one (``cleanup --orphans`` never does),
and only the destroy bookkeeping (``destroy_requested_at``, ``destroyed_at``).

Vast.ai is asked only by ``instances --alive`` and ``cleanup``: one listing of
the account, of which only instances whose label starts with this journal's
label prefix are ever considered (``cleanup --orphans``: also other workflows' ``smk-``
instances, reported, and destroyed only when named: ``run/orphans.py``). The API key comes from
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

Where the code is
-----------------
This module is the entry point: the parser (one subparser per command, its
help the handler's docstring), opening the journal, and errors as exit codes.
Each command is a module of its own: ``runs.py``, ``jobs.py`` (with
``--follow``), ``show.py``, ``instances.py``, ``cost.py``, ``timeline.py``,
``cleanup.py``; each holds its ``cmd_*`` handler and the ``_configure_*`` that
adds its options. ``cleanup --orphans`` is ``orphans.py`` (here, ``main`` picks it
and opens no journal when there is none). ``api.py`` is the Vast.ai side of
``instances --alive`` and ``cleanup``; ``common.py`` what several commands share. No
command imports this module, so the imports run one way: here, commands, ``api.py``, ``common.py``.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sqlite3
import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from ...journal.store import RELATIVE_PATH, Journal, JournalError
from .cleanup import _configure_cleanup, cmd_cleanup
from .common import PROG, CliError
from .cost import _configure_cost, cmd_cost
from .instances import _configure_instances, cmd_instances
from .jobs import _configure_jobs, cmd_jobs
from .orphans import cmd_orphans
from .runs import _configure_runs, cmd_runs
from .show import _configure_show, cmd_show
from .timeline import _configure_timeline, cmd_timeline

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
    orphans = getattr(args, "orphans", None) is not None  # cleanup --orphans
    handler = cmd_orphans if orphans else args.handler
    try:
        with open_journal(args.journal, missing_ok=orphans) as journal:
            return int(handler(journal, args))
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


def open_journal(path: Path, missing_ok: bool = False) -> AbstractContextManager[Any]:
    """The existing journal at ``path`` (or in the workflow directory ``path``).

    ``Journal()`` creates a missing file, which is right for a run and wrong
    here: a typo in ``--journal`` must not leave an empty journal behind.
    ``missing_ok`` (``cleanup --orphans``, which works after ``rm -rf .snakemake``):
    no file gives None.
    """
    if path.is_dir():
        path = path / RELATIVE_PATH
    if missing_ok and not path.exists():
        return nullcontext(None)
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


COMMANDS: list[tuple[str, Handler, Callable[[argparse.ArgumentParser], None]]] = [
    ("runs", cmd_runs, _configure_runs),
    ("jobs", cmd_jobs, _configure_jobs),
    ("show", cmd_show, _configure_show),
    ("instances", cmd_instances, _configure_instances),
    ("cost", cmd_cost, _configure_cost),
    ("cleanup", cmd_cleanup, _configure_cleanup),
    ("timeline", cmd_timeline, _configure_timeline),
]
