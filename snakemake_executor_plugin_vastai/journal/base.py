"""What the journal's modules share: the base of its table groups, SQL built from names this
package chose, JSON after redaction.

:class:`~.store.Journal` is assembled from one mixin per table group (runs.py, jobs.py,
instances.py, costs.py) over the connection, lock and transactions of store.py. Each
mixin subclasses :class:`TableGroup`, which declares (for readers and type checkers only:
it adds nothing at run time) what the groups' methods use of the store and of one
another, and where it lives.

Table and column names in these statements come from the journal's own code, never from
callers (values always go as ``?`` parameters). Every dict stored as JSON is redacted first
(see ``run/redaction.py`` and the "No secrets" notes in store.py).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Collection, Mapping
from contextlib import AbstractContextManager
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlite_utils

from ..run.redaction import redact

if TYPE_CHECKING:
    from .errors import JournalError, UnknownInstance, UnknownJob


class TableGroup:
    """The base of the journal's table-group mixins: what their methods use of the
    :class:`~.store.Journal` they are mixed into, declared here so each module reads on
    its own. Only type checkers see these declarations; the journal defines them all."""

    if TYPE_CHECKING:
        # store.py: the file, the clock, the connection and its lock
        path: Path
        _clock: Callable[[], float]
        _lock: threading.RLock
        _run_id: str | None  # the run start_run() began in this process, if any
        _job_columns: frozenset[str]
        _instance_columns: frozenset[str]

        @property
        def label_prefix(self) -> str: ...

        def _write(self) -> AbstractContextManager[sqlite_utils.Database]: ...

        def _rows(self, sql: str, params: list[Any] | None = None) -> list[dict]: ...

        @staticmethod
        def _exists(db: sqlite_utils.Database, table: str, column: str, value: Any) -> bool:
            ...

        # runs.py
        def _unknown_run(self, run_id: str) -> JournalError: ...

        # jobs.py
        def _job_state(self, db: sqlite_utils.Database, job_id: str) -> str: ...

        def _unknown_job(self, job_id: str) -> UnknownJob: ...

        # instances.py
        def instances(self) -> list[dict]: ...

        def _unknown_instance(self, what: str) -> UnknownInstance: ...


def _to_json(value: Mapping[str, Any]) -> str:
    """Strict JSON of a redacted dict: arbitrary objects are refused, as their repr could
    carry a secret past the key-based redaction."""
    return json.dumps(redact(value), default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable for the journal")


def _insert(db: sqlite_utils.Database, table: str, **row: Any) -> None:
    """INSERT one row; table and column names come from the journal's code, never from
    callers."""
    db.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({_marks(row)})",
               list(row.values()))


def _plain(value: Any) -> Any:
    """Enum members (JobState) as their plain value, so SQLite stores text."""
    return value.value if isinstance(value, Enum) else value


def _assignments(columns: Mapping[str, Any]) -> str:
    """``a = ?, b = ?`` for validated column names (never caller-chosen text)."""
    return ", ".join(f"{name} = ?" for name in columns)


def _marks(values: Collection[Any]) -> str:
    return ", ".join("?" for _ in values)

