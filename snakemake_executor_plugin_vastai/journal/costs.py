"""The journal's cost facts and what instances and runs cost from them.

Vast.ai bills an instance for its time from its ``start_date`` to its accepted destroy
(``dph_total``), for its disk while stopped (``storage_dph``) and for the bytes it moved
(the offer's $/GB). The journal keeps those facts as they happen: the bytes each
instance moved, split by the run that moved them (``instance_run_bytes``: a resumed run
answers for what it moved on an earlier run's instance), the transfers in flight
(``transfers``, for ``journal jobs --follow``) and the account balance around a run. The
prices and the arithmetic are ``costs/ledger.py``'s; this module reads the rows for it.
"""

from __future__ import annotations

from collections.abc import Collection

import sqlite_utils

from ..costs import ledger
from .base import TableGroup, _assignments, _marks


class CostsMixin(TableGroup):
    """The ``transfers`` and ``instance_run_bytes`` tables, the byte and balance columns of
    ``instances`` and ``runs``, and the cost reads, as methods of :class:`~.store.Journal`."""

    def add_instance_bytes(self, instance_id: int, uploaded: int, downloaded: int) -> None:
        """Add bytes moved to or from an instance (deltas: reconnects and reuse add on), to
        its totals and to this run's share of them."""
        if uploaded <= 0 and downloaded <= 0:
            return
        with self._write() as db:
            self._add_bytes(db, int(instance_id), uploaded, downloaded)

    def _add_bytes(self, db: sqlite_utils.Database, instance_id: int, uploaded: int,
                   downloaded: int) -> None:
        """Within a write transaction: the instance's totals and the (instance, run) row
        (the current run's; the renting run's when no run is current)."""
        up, down = max(int(uploaded), 0), max(int(downloaded), 0)
        if up == 0 and down == 0:
            return
        db.execute(
            "UPDATE instances SET bytes_uploaded = bytes_uploaded + ?, "
            "bytes_downloaded = bytes_downloaded + ? WHERE instance_id = ?",
            [up, down, instance_id],
        )
        db.execute(
            "INSERT INTO instance_run_bytes (instance_id, run_id, bytes_uploaded, "
            "bytes_downloaded) SELECT instance_id, COALESCE(?, run_id), ?, ? FROM instances "
            "WHERE instance_id = ? AND COALESCE(?, run_id) IS NOT NULL LIMIT 1 "
            "ON CONFLICT (instance_id, run_id) DO UPDATE SET "
            "bytes_uploaded = bytes_uploaded + excluded.bytes_uploaded, "
            "bytes_downloaded = bytes_downloaded + excluded.bytes_downloaded",
            [self._run_id, up, down, instance_id, self._run_id],
        )

    def run_bytes(self, run_id: str) -> dict[int, tuple[int, int]]:
        """instance id -> (uploaded, downloaded) that ``run_id`` moved on it."""
        return {int(r["instance_id"]): (int(r["bytes_uploaded"]), int(r["bytes_downloaded"]))
                for r in self._rows("SELECT * FROM instance_run_bytes WHERE run_id = ?",
                                    [run_id])}

    def record_balance(self, run_id: str, *, before: float | None = None,
                       after: float | None = None) -> None:
        """The account credit at the run's start or end (None leaves it as it is)."""
        columns = {k: v for k, v in (("balance_before", before), ("balance_after", after))
                   if v is not None}
        if not columns:
            return
        with self._write() as db:
            db.execute(f"UPDATE runs SET {_assignments(columns)} WHERE id = ?",
                       [*columns.values(), run_id])

    def start_transfer(self, *, job_id: str | None, instance_id: int | None, direction: str,
                       total: int | None, started_at: float | None = None) -> int:
        """A transfer in flight (``direction`` upload/download, begun at ``started_at``,
        default now); its row id."""
        now = self._clock()
        with self._write() as db:
            cursor = db.execute(
                "INSERT INTO transfers (job_id, run_id, instance_id, direction, bytes_total, "
                "started_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [job_id, self._run_id, instance_id, direction, total,
                 now if started_at is None else started_at, now],
            )
            return int(cursor.lastrowid or 0)

    def update_transfer(self, transfer_id: int, done: int, *, ended: bool = False,
                        uploaded: int = 0, downloaded: int = 0) -> None:
        """A transfer's progress and, in the same transaction, the bytes its instance
        moved since the last write (``uploaded``/``downloaded``, deltas): a crash then
        loses at most the bytes of one progress interval from the ledger."""
        now = self._clock()
        with self._write() as db:
            db.execute(
                "UPDATE transfers SET bytes_done = ?, updated_at = ?, "
                "ended_at = CASE WHEN ? THEN ? ELSE ended_at END WHERE id = ?",
                [int(done), now, int(ended), now, int(transfer_id)],
            )
            if uploaded > 0 or downloaded > 0:
                row = db.execute("SELECT instance_id FROM transfers WHERE id = ?",
                                 [int(transfer_id)]).fetchone()
                if row is not None and row[0] is not None:
                    self._add_bytes(db, int(row[0]), uploaded, downloaded)

    def close_transfers(self, run_ids: Collection[str]) -> int:
        """End the in-flight transfer rows of runs that are over (a crash left them open);
        they end at their last update. The number closed."""
        runs = list(run_ids)
        if not runs:
            return 0
        with self._write() as db:
            cursor = db.execute(
                f"UPDATE transfers SET ended_at = updated_at WHERE ended_at IS NULL "
                f"AND run_id IN ({_marks(runs)})",
                runs,
            )
            return int(cursor.rowcount or 0)

    def transfers(self, *, in_flight: bool = False) -> list[dict]:
        where = "WHERE ended_at IS NULL " if in_flight else ""
        return self._rows(f"SELECT * FROM transfers {where}ORDER BY started_at, id")


    def instance_cost(self, label: str) -> tuple[float, float]:
        """Billed (seconds, dollars) from created_at to destroyed_at (or now) at dph_total."""
        rows = self._rows("SELECT * FROM instances WHERE label = ?", [label])
        if not rows:
            raise self._unknown_instance(f"label {label}")
        return ledger.billed(rows[0], self._clock())

    def run_cost(self, run_id: str) -> tuple[float, float]:
        """Total (seconds, dollars) a run is answerable for: the time of the instances it
        rented, and the bandwidth it moved on any instance (a resumed run moves bytes on
        an earlier run's instance; those bytes are the earlier run's no more)."""
        now = self._clock()
        moved = {
            int(r["instance_id"]): r
            for r in self._rows("SELECT * FROM instance_run_bytes WHERE run_id = ?", [run_id])
        }
        rows = self._rows(
            "SELECT * FROM instances WHERE run_id = ? OR instance_id IN "
            "(SELECT instance_id FROM instance_run_bytes WHERE run_id = ?)",
            [run_id, run_id],
        )
        seconds = dollars = 0.0
        for row in rows:
            mine = moved.get(int(row["instance_id"])) if row["instance_id"] is not None \
                else None
            row = {**row, "bytes_uploaded": mine["bytes_uploaded"] if mine else 0,
                   "bytes_downloaded": mine["bytes_downloaded"] if mine else 0}
            billed, total = ledger.billed(row, now)
            if row["run_id"] == run_id:
                seconds, dollars = seconds + billed, dollars + total
            else:  # only the bytes this run moved on another run's instance
                dollars += ledger.bandwidth_dollars(row, billed)
        return seconds, dollars

    def instances_with_cost(self) -> list[dict]:
        """Every instance row plus ``billed_seconds`` and ``billed_dollars`` (as
        :meth:`instance_cost` computes them), from one read with one clock reading."""
        now = self._clock()
        rows = self.instances()
        for row in rows:
            row["billed_seconds"], row["billed_dollars"] = ledger.billed(row, now)
            row["components"] = ledger.components(row, row["billed_seconds"])
        return rows
