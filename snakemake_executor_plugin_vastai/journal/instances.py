"""The journal's instances: one row per label, written before the create call that rents it.

An instance's label (it starts with the workflow's prefix) is journaled with the offer
before the create call, so a crash during the call still leaves a way to find (and
destroy) whatever it rented. Its id, SSH host key (pinned at first contact), Vast.ai's
billing clock and the destroy's intent and answer follow. Its life cycle (``state`` and
the append-only ``instance_transitions``) is moved only by the machine of
``lifecycle/instance_life.py``, through :meth:`move_instance`; warm instances move between
leased and idle (``run/pool.py``). ``strays`` are instances listed with the workflow's
prefix that no row owns, journaled before their teardown like any other.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any

import sqlite_utils

from ..lifecycle.instance_machine import InstanceState
from ..run.redaction import scrub
from .base import TableGroup, _assignments, _insert, _marks, _plain, _to_json
from .errors import JournalError, StaleTransition, UnknownInstance
from .jobs import JOB_IDENTITY

# Instance columns only this module's own methods write (pinning, life cycle).
INSTANCE_MANAGED = frozenset(
    {
        "label",
        "instance_id",
        "job_id",
        "run_id",
        "requested_at",
        "host_key",
        "contacted_at",
        "destroy_requested_at",
        "destroy_accepted_at",
        "destroyed_at",
        "started_at",
        "offer",
        "state",
        "leased_by",
        "idle_since",
        "served",
    }
)
# What a move may set beside the state (lifecycle/instance_life.py), and its time stamps.
MOVE_COLUMNS = frozenset({"leased_by", "idle_since", "served"})
MOVE_STAMPS = frozenset({"destroy_requested_at", "destroyed_at"})
OFFER_FACTS = ("offer_id", "machine_id", "gpu_name", "num_gpus", "dph_total", "geolocation")


class InstancesMixin(TableGroup):
    """The ``instances``, ``instance_transitions`` and ``strays`` tables, as methods of
    :class:`~.store.Journal`."""

    def record_rent_intent(
        self, *, job_id: str, run_id: str, label: str, offer: Mapping[str, Any]
    ) -> None:
        """Write-ahead: journal the label before the create call that may rent it.

        If the process dies during the create call, the next run finds the
        instance (if any) by this label. Renting again under the same label
        (the first offer was gone) reuses the row, as long as no instance id
        was ever recorded for it.
        """
        if not label.startswith(self.label_prefix):
            raise ValueError(
                f"instance label {label!r} must start with this workflow's "
                f"prefix {self.label_prefix!r}, or cleanup could not find it"
            )
        facts = _offer_facts(offer)
        now = self._clock()
        with self._write() as db:
            self._job_state(db, job_id)  # raises UnknownJob
            if not self._exists(db, "runs", "id", run_id):
                raise self._unknown_run(run_id)
            existing = self._instance_row(db, "label = ?", [label])
            if existing is None:
                _insert(
                    db,
                    "instances",
                    label=label,
                    job_id=job_id,
                    run_id=run_id,
                    **facts,
                    offer=_to_json(offer),
                    requested_at=now,
                    state=InstanceState.RENTING.value,
                )
                self._instance_history(db, label, None, InstanceState.RENTING.value,
                                       "rent_intent", now, job_id=job_id)
            else:
                self._check_reusable(existing, job_id)
                columns = {
                    **facts,
                    "offer": _to_json(offer),
                    "run_id": run_id,
                    "requested_at": now,
                    "destroy_requested_at": None,
                    "destroyed_at": None,
                    "state": InstanceState.RENTING.value,
                }
                db.execute(
                    f"UPDATE instances SET {_assignments(columns)} WHERE label = ?",
                    [*columns.values(), label],
                )
                if existing["state"] != InstanceState.RENTING.value:  # a label born again
                    self._instance_history(db, label, existing["state"],
                                           InstanceState.RENTING.value, "rent_intent", now,
                                           job_id=job_id)
            job_columns = {
                "label": label,
                **{k: v for k, v in facts.items() if k in self._job_columns},
                "updated_at": now,
            }
            cursor = db.execute(
                f"UPDATE jobs SET {_assignments(job_columns)} WHERE id = ?",
                [*job_columns.values(), job_id],
            )
            if cursor.rowcount != 1:
                raise self._unknown_job(job_id)

    def _check_reusable(self, existing: dict, job_id: str) -> None:
        if existing["instance_id"] is not None:
            raise JournalError(
                f"label {existing['label']} already names instance "
                f"{existing['instance_id']} in {self.path}; use a new label",
                self.path,
            )
        if existing["job_id"] != job_id:
            raise JournalError(
                f"label {existing['label']} belongs to job {existing['job_id']}, "
                f"not {job_id}, in {self.path}",
                self.path,
            )

    def record_instance_created(self, label: str, instance_id: int, **facts: Any) -> None:
        """The create call answered (or a lookup by label found it): journal its id.

        ``facts`` are further instance columns (ssh_host, machine_id, created_at
        ...). Learning the id also clears ``destroyed_at``: a row marked gone
        because the label was not found is alive after all.
        """
        values = self._instance_facts(facts)
        now = self._clock()
        with self._write() as db:
            row = self._instance_row(db, "label = ?", [label])
            if row is None:
                raise UnknownInstance(
                    f"no rent intent for label {label} in {self.path}: "
                    "record_rent_intent() must come before the create call",
                    self.path,
                )
            if row["instance_id"] not in (None, instance_id):
                raise JournalError(
                    f"label {label} already names instance {row['instance_id']}"
                    f", not {instance_id}, in {self.path}",
                    self.path,
                )
            clear = {"destroyed_at": None} if row["instance_id"] is None else {}
            values.setdefault("created_at", now if row["created_at"] is None else row["created_at"])
            columns = {"instance_id": instance_id, **clear, **values}
            try:
                db.execute(
                    f"UPDATE instances SET {_assignments(columns)} WHERE label = ?",
                    [*columns.values(), label],
                )
            except sqlite3.IntegrityError as exc:
                raise JournalError(
                    f"instance {instance_id} is already journaled under "
                    f"another label in {self.path}: {exc}",
                    self.path,
                ) from exc
            job_values = {
                k: v for k, v in values.items() if k in self._job_columns and k not in JOB_IDENTITY
            }
            job_values.update(instance_id=instance_id, updated_at=now)
            db.execute(
                f"UPDATE jobs SET {_assignments(job_values)} WHERE id = ?",
                [*job_values.values(), row["job_id"]],
            )

    def record_instance_contact(
        self, instance_id: int, *, ssh_host: str, ssh_port: int, host_key: str
    ) -> None:
        """First SSH contact: pin the instance's public host key (never re-pinned)."""
        if "PRIVATE KEY" in host_key:
            raise ValueError(
                f"instance {instance_id}: refusing to journal a private key as "
                "host key; pass the server's public host key"
            )
        now = self._clock()
        with self._write() as db:
            row = self._instance_row(db, "instance_id = ?", [instance_id])
            if row is None:
                raise self._unknown_instance(f"instance {instance_id}")
            if row["host_key"] not in (None, host_key):
                raise JournalError(
                    f"instance {instance_id} presented a host key other than "
                    f"the one pinned in {self.path} at first contact; refusing "
                    "to re-pin (destroy the instance if in doubt)",
                    self.path,
                )
            db.execute(
                "UPDATE instances SET ssh_host = ?, ssh_port = ?, host_key = ?, "
                "contacted_at = COALESCE(contacted_at, ?) WHERE instance_id = ?",
                [ssh_host, ssh_port, host_key, now, instance_id],
            )
            db.execute(
                "UPDATE jobs SET ssh_host = ?, ssh_port = ?, updated_at = ? WHERE instance_id = ?",
                [ssh_host, ssh_port, now, instance_id],
            )

    def pinned_host_key(self, instance_id: int) -> str | None:
        rows = self._rows("SELECT host_key FROM instances WHERE instance_id = ?", [instance_id])
        return rows[0]["host_key"] if rows else None

    def update_instance_status(self, instance_id: int, status: str | None) -> None:
        """The last ``actual_status`` Vast.ai reported, for the post-mortem."""
        with self._write() as db:
            cursor = db.execute(
                "UPDATE instances SET last_status = ?, last_status_at = ? WHERE instance_id = ?",
                [status, self._clock(), instance_id],
            )
            if cursor.rowcount != 1:
                raise self._unknown_instance(f"instance {instance_id}")

    def record_instance_stop(self, instance_id: int, *, stopped: bool) -> None:
        """A bid instance was outbid (``stopped``) or runs again: its stopped time is
        billed for storage only (ledger.storage_dollars)."""
        now = self._clock()
        with self._write() as db:
            if stopped:
                # one preemption, however often it is seen (a resumed run sees it again)
                db.execute("UPDATE instances SET preemptions = COALESCE(preemptions, 0) + "
                           "(stopped_since IS NULL), stopped_since = COALESCE(stopped_since, ?)"
                           " WHERE instance_id = ?", [now, instance_id])
            else:
                db.execute("UPDATE instances SET stopped_seconds = COALESCE(stopped_seconds, 0)"
                           " + MAX(0, ? - stopped_since), stopped_since = NULL "
                           "WHERE instance_id = ? AND stopped_since IS NOT NULL",
                           [now, instance_id])

    def record_stopped_unseen(self, instance_id: int, seconds: float) -> None:
        """A stop the run journaled only when it saw it (its watchdog's, while the run was
        away) began ``seconds`` earlier: that time billed storage only as well."""
        with self._write() as db:
            db.execute("UPDATE instances SET stopped_seconds = COALESCE(stopped_seconds, 0) "
                       "+ ? WHERE instance_id = ?", [max(float(seconds), 0.0), instance_id])

    def record_instance_started(self, instance_id: int, start_date: float) -> None:
        """Vast.ai's ``start_date`` of the instance (the billing clock starts there)."""
        with self._write() as db:
            db.execute(
                "UPDATE instances SET started_at = COALESCE(started_at, ?) WHERE instance_id = ?",
                [float(start_date), instance_id],
            )

    def record_destroy_accepted(self, instance_id: int) -> None:
        """The API accepted a destroy request (the billing clock stops there)."""
        self._instance_or_stray_update(
            "destroy_accepted_at = COALESCE(destroy_accepted_at, ?)", [self._clock()],
            None, instance_id, strict=False)

    def record_destroy_requested(
        self, *, label: str | None = None, instance_id: int | None = None
    ) -> None:
        """Write-ahead for the destroy call (the first request's time is kept). A holding
        instance's move to destroying is the machine's (``instance_life.destroy_requested``)."""
        self._instance_or_stray_update(
            "destroy_requested_at = COALESCE(destroy_requested_at, ?)", [self._clock()],
            label, instance_id)

    def record_instance_destroyed(
        self, *, label: str | None = None, instance_id: int | None = None, at: float | None = None
    ) -> None:
        """The instance is known gone (or, for a label never created, never existed); its move
        to gone is the machine's (``instance_life.destroyed``)."""
        when = self._clock() if at is None else at
        self._instance_or_stray_update(
            "destroyed_at = COALESCE(destroyed_at, ?)", [when], label, instance_id)

    def _instance_or_stray_update(
        self, assignment: str, values: list[Any], label: str | None, instance_id: int | None,
        *, strict: bool = True,
    ) -> None:
        """Update the instance row (by label and/or id), else the stray with that id."""
        where, params = _instance_match(label, instance_id)
        with self._write() as db:
            cursor = db.execute(f"UPDATE instances SET {assignment} WHERE {where}",
                                [*values, *params])
            if cursor.rowcount == 1:
                return
            if instance_id is not None:
                cursor = db.execute(f"UPDATE strays SET {assignment} WHERE instance_id = ?",
                                    [*values, instance_id])
                if cursor.rowcount == 1:
                    return
            if strict:
                raise self._unknown_instance(_describe(label, instance_id))


    def instances(self) -> list[dict]:
        return self._rows("SELECT * FROM instances ORDER BY requested_at, label")

    def instances_possibly_alive(self) -> list[dict]:
        """Every instance not known destroyed, including labels whose create never answered."""
        return self._rows(
            "SELECT * FROM instances WHERE destroyed_at IS NULL ORDER BY requested_at, label"
        )


    def _instance_facts(self, facts: Mapping[str, Any]) -> dict[str, Any]:
        allowed = self._instance_columns - INSTANCE_MANAGED
        unknown = sorted(set(facts) - allowed)
        if unknown:
            raise ValueError(
                f"cannot set instance column(s) {', '.join(unknown)}; "
                f"settable: {', '.join(sorted(allowed))}"
            )
        return {key: _plain(value) for key, value in facts.items()}

    @staticmethod
    def _instance_row(db: sqlite_utils.Database, where: str, params: list[Any]) -> dict | None:
        rows = list(db.query(f"SELECT * FROM instances WHERE {where}", params))
        return rows[0] if rows else None

    def _unknown_instance(self, what: str) -> UnknownInstance:
        return UnknownInstance(
            f"{what} is not in journal {self.path}; was its rent intent recorded?", self.path
        )


    # -- the instance life cycle: moves decided by lifecycle/instance_life.py's machine
    def instance_row(self, *, label: str | None = None,
                     instance_id: int | None = None) -> dict | None:
        """The instance row with this label and/or id (None: not journaled). A closed
        journal raises JournalError, as every read does (a reaper thread may ask late)."""
        where, params = _instance_match(label, instance_id)
        rows = self._rows(f"SELECT * FROM instances WHERE {where}", params)
        return rows[0] if rows else None

    def move_instance(
        self, label: str, *, source: str, dest: str, trigger: str, job_id: str | None = None,
        detail: str | Mapping[str, Any] | None = None, stamps: tuple[str, ...] = (),
        at: float | None = None, **columns: Any,
    ) -> None:
        """Commit a move the instance machine decided: a compare-and-set of the row's state
        (``source`` -> ``dest``) with its columns, plus the append-only history row, in one
        transaction. ``stamps`` name time columns set to ``at`` (default: now) unless already
        set. StaleTransition, changing nothing, if the row is no longer in ``source``."""
        unknown = sorted(set(columns) - MOVE_COLUMNS) + sorted(set(stamps) - MOVE_STAMPS)
        if unknown:
            raise ValueError(f"cannot set instance column(s) {', '.join(unknown)} in a move")
        now = self._clock()
        when = now if at is None else at
        values = {"state": dest, **{k: _plain(v) for k, v in columns.items()}}
        stamp_sql = "".join(f", {name} = COALESCE({name}, ?)" for name in stamps)
        with self._write() as db:
            cursor = db.execute(
                f"UPDATE instances SET {_assignments(values)}{stamp_sql} "
                "WHERE label = ? AND state IS ?",
                [*values.values(), *([when] * len(stamps)), label, source])
            if cursor.rowcount != 1:
                row = self._instance_row(db, "label = ?", [label])
                if row is None:
                    raise self._unknown_instance(f"label {label}")
                raise StaleTransition(
                    f"instance {label}: {trigger!r} expected state {source!r}, found "
                    f"{row['state']!r} (another job or process moved it; journal {self.path})",
                    self.path, job_id=job_id or "", expected=(source,), actual=row["state"])
            self._instance_history(db, label, source, dest, trigger, now, job_id=job_id,
                                   detail=detail)

    def instance_history(self, label: str) -> list[dict]:
        """An instance's life, oldest first."""
        return self._rows(
            "SELECT * FROM instance_transitions WHERE label = ? ORDER BY id", [label])

    def instances_in_state(self, *states: str) -> list[dict]:
        return self._rows(
            f"SELECT * FROM instances WHERE state IN ({_marks(states)}) "
            "ORDER BY requested_at, label", list(states))

    def _instance_history(
        self, db: sqlite_utils.Database, label: str, source: str | None, dest: str,
        trigger: str, at: float, *, job_id: str | None = None,
        detail: str | Mapping[str, Any] | None = None,
    ) -> None:
        text = scrub(detail) if isinstance(detail, str) else (
            None if detail is None else _to_json(detail))
        _insert(db, "instance_transitions", label=label, run_id=self._run_id, job_id=job_id,
                from_state=source, to_state=dest, trigger=trigger, at=at, detail=text)

    # -- strays: instances with our prefix that no instance row owns ---------------------
    def record_stray(
        self, instance_id: int, *, label: str | None, reason: str, dph_total: float | None = None
    ) -> bool:
        """Journal a stray before tearing it down; False if an instance row owns the id."""
        with self._write() as db:
            if self._instance_row(db, "instance_id = ?", [instance_id]) is not None:
                return False
            db.execute(
                "INSERT OR IGNORE INTO strays (instance_id, label, run_id, reason, dph_total, "
                "found_at) VALUES (?, ?, ?, ?, ?, ?)",
                [instance_id, label, self._run_id, scrub(reason), dph_total, self._clock()],
            )
            return True

    def strays(self) -> list[dict]:
        return self._rows("SELECT * FROM strays ORDER BY found_at, instance_id")

    def strays_possibly_alive(self) -> list[dict]:
        return self._rows(
            "SELECT * FROM strays WHERE destroyed_at IS NULL ORDER BY found_at, instance_id"
        )



def _offer_facts(offer: Mapping[str, Any]) -> dict[str, Any]:
    """The offer columns, from our offer facts (``offer_id``) or a raw offer (``id``)."""
    facts = {key: _plain(offer.get(key)) for key in OFFER_FACTS}
    if facts["offer_id"] is None:
        facts["offer_id"] = _plain(offer.get("id"))
    return facts


def _instance_match(label: str | None, instance_id: int | None) -> tuple[str, list[Any]]:
    if label is None and instance_id is None:
        raise ValueError("name the instance by label or instance_id")
    where, params = [], []
    if label is not None:
        where.append("label = ?")
        params.append(label)
    if instance_id is not None:
        where.append("instance_id = ?")
        params.append(instance_id)
    return " AND ".join(where), params


def _describe(label: str | None, instance_id: int | None) -> str:
    return " / ".join(
        part
        for part in (
            label and f"label {label}",
            instance_id is not None and f"instance {instance_id}",
        )
        if part
    )

