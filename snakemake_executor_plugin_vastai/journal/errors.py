"""The journal's exceptions, apart from the store so that every table group can raise them.

Every message names the journal file and says what to do; ``path`` carries the file.
Callers import them from :mod:`.store` as before (it re-exports them).
"""

from __future__ import annotations

from pathlib import Path


class JournalError(Exception):
    """The journal cannot be used as asked; the message names the file and what to do."""

    def __init__(self, message: str, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


class JournalCorrupt(JournalError):
    """The file is not an SQLite database, or fails its integrity check."""


class JournalTooNew(JournalError):
    """A newer plugin wrote this journal; this code must not guess at its schema."""


class StaleTransition(JournalError):
    """A guarded state change found the job in another state than the caller expected."""

    def __init__(
        self,
        message: str,
        path: Path,
        *,
        job_id: str,
        expected: tuple[str, ...],
        actual: str | None,
    ) -> None:
        super().__init__(message, path)
        self.job_id = job_id
        self.expected = expected
        self.actual = actual


class UnknownJob(JournalError):
    """No job with that id is journaled."""


class UnknownInstance(JournalError):
    """No instance with that label or id is journaled."""

