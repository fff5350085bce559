"""What several ``journal`` subcommands share, and the timeline model with them.

The usage error every command may raise (:class:`CliError`), the run a command
is about (:func:`selected_run`, :func:`run_is_live`, :func:`run_status`), the
lookup of an id or unique prefix (:func:`_one`) and the small formatting helpers
of the tables and the JSON output. Nothing here imports a command module, so
every command (and ``cli/timeline.py``) can import it without a cycle.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from ...journal.store import Journal
from ...lifecycle.job_machine import JobState
from ...run import liveness as leases
from ...run.verdict import recorded_status
from .. import tables

PROG = "snakemake-vastai journal"
STATE_ORDER = [s.value for s in JobState]


class CliError(Exception):
    """A message for the user (no traceback) and the exit code that goes with it."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def run_status(run: dict) -> str:
    """The recorded outcome, else "running" or "unfinished" (``run/verdict.py``)."""
    return recorded_status(run)


def run_is_live(run: dict) -> bool:
    """True while the run has no end and its own process lives on this host (its lease,
    ``run/liveness.py``). A run on another host cannot be checked from here and counts as not
    live."""
    return leases.is_live(run)


def selected_run(journal: Journal, wanted: str | None) -> str | None:
    """The run named by id or unique prefix; the latest run when none is named."""
    if wanted is None:
        return journal.latest_run_id()
    exact = [run for run in journal.runs() if run["id"] == wanted]
    matches = exact or journal.runs_with_prefix(wanted)
    return _one(matches, "run", wanted, journal.path)["id"]


def emit_json(data: Any) -> int:
    print(json.dumps(data, indent=2, default=str))
    return 0


def _parse_json(text: str | None) -> Any:
    """Stored JSON as data; text that is not JSON (a plain detail) as it is."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _latest_run(journal: Journal) -> dict | None:
    runs = journal.runs()
    return runs[-1] if runs else None


def _one(matches: list[dict], what: str, wanted: str, path: Path) -> dict:
    """The single match for an id or prefix; a usage error naming the choices otherwise."""
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise CliError(f"no {what} {wanted!r} in {path}; list them with: {PROG} {what}s")
    shown = ", ".join(match["id"] for match in matches[:5])
    more = f" and {len(matches) - 5} more" if len(matches) > 5 else ""
    raise CliError(f"{what} {wanted!r} is ambiguous in {path}: {shown}{more}; type more of it")


def _ordered_states(counts: Counter) -> list[str]:
    known = [state for state in STATE_ORDER if counts[state]]
    return known + sorted(state for state in counts if state not in STATE_ORDER)


def _price(dph: float | None) -> str:
    return tables.money(dph)


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" if line else line for line in text.splitlines())
