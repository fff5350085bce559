"""The journal's jobs: each job's current state, and its append-only history.

A job's state changes only through :meth:`JobsMixin.transition`: a guarded update (it
refuses, changing nothing, unless the job is in the state the caller expects) and its
``transitions`` row, in one transaction, committed before the new state's work begins.
The states and their moves are ``lifecycle/job_machine.py``'s. A restart finds the jobs a
crash left unfinished here, and the one it may re-attach to by fingerprint.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping
from typing import Any

import sqlite_utils

from ..lifecycle.job_machine import TERMINAL_STATES as _TERMINAL_JOB_STATES
from ..run.redaction import scrub
from .base import TableGroup, _assignments, _insert, _marks, _plain, _to_json
from .errors import StaleTransition, UnknownJob

TERMINAL_STATES: tuple[str, ...] = tuple(sorted(s.value for s in _TERMINAL_JOB_STATES))

# Columns set once at submit; everything else on a job may be updated.
JOB_IDENTITY = frozenset(
    {"id", "run_id", "rule", "fingerprint", "fingerprint_parts", "attempt", "snakemake_jobid",
     "created_at"}
)
JOB_BOOKKEEPING = frozenset({"state", "updated_at", "ended_at"})
FREE_TEXT = frozenset({"last_error"})


class JobsMixin(TableGroup):
    """The ``jobs`` and ``transitions`` tables, as methods of :class:`~.store.Journal`."""

    def add_job(
        self,
        *,
        run_id: str,
        rule: str,
        snakemake_jobid: int | None,
        fingerprint: str,
        attempt: int,
        state: str,
        log_path: str | None = None,
        fingerprint_parts: Mapping[str, str] | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> str:
        """Journal a submitted job in its first state; returns the job id.

        ``detail`` goes on the submit row (a group job's members, for instance)."""
        job_id = uuid.uuid4().hex[:12]
        state = _state(state)
        now = self._clock()
        with self._write() as db:
            if not self._exists(db, "runs", "id", run_id):
                raise self._unknown_run(run_id)
            _insert(
                db,
                "jobs",
                id=job_id,
                run_id=run_id,
                snakemake_jobid=snakemake_jobid,
                rule=rule,
                fingerprint=fingerprint,
                attempt=attempt,
                state=state,
                created_at=now,
                updated_at=now,
                log_path=log_path,
                fingerprint_parts=None if fingerprint_parts is None else _to_json(
                    fingerprint_parts),
            )
            _insert_transition(db, job_id, run_id, None, state, "submit", now, detail)
        return job_id

    def transition(
        self,
        job_id: str,
        *,
        source: str | Collection[str],
        dest: str,
        trigger: str,
        detail: str | Mapping[str, Any] | None = None,
        **job_fields: Any,
    ) -> None:
        """Guarded state change plus its append-only row, in one transaction.

        Raises StaleTransition, changing nothing, unless the job is in one of
        ``source``: two threads (or processes) can never both move a job on.
        ``job_fields`` set other job columns in the same update.
        """
        sources = _states(source)
        dest = _state(dest)
        fields = self._job_fields(job_fields)
        now = self._clock()
        fields.update(state=dest, updated_at=now)
        if dest in TERMINAL_STATES:
            fields["ended_at"] = now
        with self._write() as db:
            actual = self._job_state(db, job_id)
            cursor = db.execute(
                f"UPDATE jobs SET {_assignments(fields)} WHERE id = ? "
                f"AND state IN ({_marks(sources)})",
                [*fields.values(), job_id, *sources],
            )
            if cursor.rowcount != 1:
                raise StaleTransition(
                    f"job {job_id}: {trigger!r} expects state {' or '.join(sources)} but the "
                    f"journal {self.path} says {actual}; another thread or process moved it",
                    self.path,
                    job_id=job_id,
                    expected=sources,
                    actual=actual,
                )
            _insert_transition(db, job_id, self._run_id, actual, dest, trigger, now, detail)

    def update_job(self, job_id: str, **fields: Any) -> None:
        """Record facts about a job that are not its state (exit code, last error, ...)."""
        values = self._job_fields(fields)
        if not values:
            return
        values["updated_at"] = self._clock()
        with self._write() as db:
            cursor = db.execute(
                f"UPDATE jobs SET {_assignments(values)} WHERE id = ?", [*values.values(), job_id]
            )
            if cursor.rowcount != 1:
                raise self._unknown_job(job_id)

    def job(self, job_id: str) -> dict:
        rows = self._rows("SELECT * FROM jobs WHERE id = ?", [job_id])
        if not rows:
            raise self._unknown_job(job_id)
        return rows[0]

    def jobs(
        self, run_id: str | None = None, state: str | None = None, rule: str | None = None
    ) -> list[dict]:
        """Jobs in submission order, optionally filtered."""
        where, params = [], []
        for column, value in (("run_id", run_id), ("state", state), ("rule", rule)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(_plain(value))
        sql = "SELECT * FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return self._rows(sql + " ORDER BY created_at, rowid", params)

    def transitions_of(self, job_id: str) -> list[dict]:
        """A job's history, oldest first (``detail`` as stored: text or JSON text)."""
        return self._rows("SELECT * FROM transitions WHERE job_id = ? ORDER BY id", [job_id])

    def unfinished_jobs(self, exclude_run: str | None = None) -> list[dict]:
        """Non-terminal jobs not yet taken over by a later job (optionally not this run's).

        A crash leaves these behind; the next run resumes or cleans them up.
        """
        return self._rows(
            f"SELECT * FROM jobs j WHERE state NOT IN ({_marks(TERMINAL_STATES)}) "
            "AND (? IS NULL OR run_id != ?) "
            "AND NOT EXISTS (SELECT 1 FROM jobs later WHERE later.resumed_from = j.id) "
            "ORDER BY created_at, rowid",
            [*TERMINAL_STATES, exclude_run, exclude_run],
        )

    def find_resumable(self, fingerprint: str, *, exclude_run: str | None = None) -> dict | None:
        """The newest unfinished job with this fingerprint whose instance may still run it.

        Excluded: terminal or ``destroying`` jobs, jobs already resumed by a
        later job, jobs without an instance row, and instances destroyed or
        asked to be destroyed. The instance row comes as ``result["instance"]``
        (its ``instance_id`` may be NULL: then only the label can find it).
        """
        closed = (*TERMINAL_STATES, "destroying")
        with self._lock:
            rows = self._rows(
                "SELECT j.*, i.label AS instance_label FROM jobs j JOIN instances i "
                "ON i.label = j.label OR (j.instance_id IS NOT NULL "
                "AND i.instance_id = j.instance_id) "
                f"WHERE j.fingerprint = ? AND j.state NOT IN ({_marks(closed)}) "
                "AND i.destroyed_at IS NULL AND i.destroy_requested_at IS NULL "
                "AND (? IS NULL OR j.run_id != ?) "
                "AND NOT EXISTS (SELECT 1 FROM jobs later WHERE later.resumed_from = j.id) "
                "ORDER BY j.created_at DESC, j.rowid DESC LIMIT 1",
                [fingerprint, *closed, exclude_run, exclude_run],
            )
            if not rows:
                return None
            job = rows[0]
            label = job.pop("instance_label")
            job["instance"] = self._rows("SELECT * FROM instances WHERE label = ?", [label])[0]
            return job

    def failed_machines(self, fingerprint: str) -> list[int]:
        """Machines on which a job with this fingerprint failed: the retry avoids them."""
        rows = self._rows(
            "SELECT DISTINCT machine_id FROM jobs WHERE fingerprint = ? AND state = 'failed' "
            "AND machine_id IS NOT NULL ORDER BY machine_id",
            [fingerprint],
        )
        return [int(row["machine_id"]) for row in rows]

    def jobs_with_prefix(self, prefix: str) -> list[dict]:
        """Jobs whose id starts with ``prefix`` (substr, not LIKE: ``_`` is no wildcard)."""
        return self._rows(
            "SELECT * FROM jobs WHERE substr(id, 1, ?) = ? ORDER BY created_at, rowid",
            [len(prefix), prefix],
        )


    def _job_fields(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Validate caller-given job columns: known, and neither identity nor state."""
        if "state" in fields:
            raise ValueError("a job's state changes only through transition()")
        allowed = self._job_columns - JOB_IDENTITY - JOB_BOOKKEEPING
        unknown = sorted(set(fields) - allowed)
        if unknown:
            raise ValueError(
                f"cannot set job column(s) {', '.join(unknown)}; "
                f"settable: {', '.join(sorted(allowed))}"
            )
        # Free text (an error message may quote a secret) is scrubbed; ids, labels and
        # paths are stored as they are.
        return {key: scrub(value) if key in FREE_TEXT and isinstance(value, str)
                else _plain(value) for key, value in fields.items()}

    def _job_state(self, db: sqlite_utils.Database, job_id: str) -> str:
        rows = list(db.query("SELECT state FROM jobs WHERE id = ?", [job_id]))
        if not rows:
            raise self._unknown_job(job_id)
        return str(rows[0]["state"])

    def _unknown_job(self, job_id: str) -> UnknownJob:
        return UnknownJob(f"job {job_id} is not in journal {self.path}", self.path)


def _insert_transition(
    db: sqlite_utils.Database,
    job_id: str,
    run_id: str | None,
    source: str | None,
    dest: str,
    trigger: str,
    at: float,
    detail: str | Mapping[str, Any] | None,
) -> None:
    """The append-only row; encoding the detail here keeps a bad detail inside the
    transaction, so it aborts the state change too."""
    # A text is scrubbed; a dict is redacted before encoding (never the encoded JSON,
    # which a registered short value could break).
    text = scrub(detail) if isinstance(detail, str) else (
        None if detail is None else _to_json(detail))
    _insert(
        db,
        "transitions",
        job_id=job_id,
        run_id=run_id,
        from_state=source,
        to_state=dest,
        trigger=trigger,
        at=at,
        detail=text,
    )


def _state(state: str) -> str:
    value = _plain(state)
    if not isinstance(value, str) or not value:
        raise ValueError(f"a job state must be a non-empty string, not {state!r}")
    return str(value)


def _states(states: str | Collection[str]) -> tuple[str, ...]:
    if isinstance(states, str):
        return (_state(states),)
    result = tuple(_state(s) for s in states)
    if not result:
        raise ValueError("a transition needs at least one source state")
    return result

