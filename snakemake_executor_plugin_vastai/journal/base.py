"""What the journal's modules share: SQL built from names this package chose, JSON after
redaction.

Table and column names in these statements come from the journal's own code, never from
callers (values always go as ``?`` parameters). Every dict stored as JSON is redacted first
(see ``run/redaction.py`` and the "No secrets" notes in store.py).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from enum import Enum
from pathlib import Path
from typing import Any

import sqlite_utils

from ..run.redaction import redact


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
    """INSERT one row; table and column names come from this module, never from callers."""
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

