"""The journal's runs: one row per Snakemake invocation, and which run owns what.

A run's row is its lease (``pid``, ``hostname``, ``pid_started_at``, ``heartbeat_at``;
see ``run/liveness.py``): while its process lives, no other run touches its jobs or
instances. When it is dead, a later run takes its instances over (``instances.claimed_by``)
in one guarded update, so two live runs never both act on one.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Collection, Mapping
from typing import Any

from .base import TableGroup, _insert, _marks, _to_json
from .errors import JournalError


class RunsMixin(TableGroup):
    """The ``runs`` table and instance ownership, as methods of :class:`~.store.Journal`."""

    def start_run(
        self,
        *,
        snakemake_version: str,
        plugin_version: str,
        settings: Mapping[str, Any],
        pid_started_at: float | None = None,
    ) -> str:
        """Journal a new Snakemake invocation; later transitions are attributed to it.

        ``pid``, ``hostname`` and ``pid_started_at`` form the run's lease (see
        ``run/liveness.py``): while that process lives, no other run touches this one's work.
        """
        now = self._clock()
        run_id = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}-{secrets.token_hex(3)}"
        with self._write() as db:
            _insert(
                db,
                "runs",
                id=run_id,
                started_at=now,
                pid=os.getpid(),
                hostname=socket.gethostname(),
                pid_started_at=pid_started_at,
                snakemake_version=snakemake_version,
                plugin_version=plugin_version,
                settings=_to_json(settings),
            )
        with self._lock:
            self._run_id = run_id
        return run_id

    def end_run(self, run_id: str, outcome: str) -> None:
        """Record how the run ended; a run without an end crashed."""
        with self._write() as db:
            cursor = db.execute(
                "UPDATE runs SET ended_at = ?, outcome = ? WHERE id = ?",
                [self._clock(), outcome, run_id],
            )
            if cursor.rowcount != 1:
                raise self._unknown_run(run_id)
            if self._run_id == run_id:
                self._run_id = None

    def runs(self) -> list[dict]:
        return self._rows("SELECT * FROM runs ORDER BY started_at, rowid")

    def latest_run_id(self) -> str | None:
        rows = self._rows("SELECT id FROM runs ORDER BY started_at DESC, rowid DESC LIMIT 1")
        return rows[0]["id"] if rows else None

    def _unknown_run(self, run_id: str) -> JournalError:
        return JournalError(
            f"run {run_id} is not in journal {self.path}; call start_run() first", self.path
        )

    def runs_with_prefix(self, prefix: str) -> list[dict]:
        """Runs whose id starts with ``prefix``: people type the first few characters."""
        return self._rows(
            "SELECT * FROM runs WHERE substr(id, 1, ?) = ? ORDER BY started_at, rowid",
            [len(prefix), prefix],
        )


    # -- who owns what (run leases) ---------------------------------------------------------
    def instance_owner_runs(self) -> dict[str, str]:
        """label -> the run that owns the instance: the one that took it over, else the run
        whose job last used it (a resume moves ownership), else the renting run."""
        rows = self._rows("SELECT label, run_id, claimed_by FROM instances")
        owners = {row["label"]: row["run_id"] for row in rows}
        for row in self._rows(
            "SELECT label, run_id FROM jobs WHERE label IS NOT NULL ORDER BY created_at, rowid"
        ):
            owners[row["label"]] = row["run_id"]
        owners.update({row["label"]: row["claimed_by"] for row in rows if row["claimed_by"]})
        return owners

    def take_over(self, label: str, run_id: str, *, from_runs: Collection[str]) -> bool:
        """Make ``run_id`` the owner of a dead run's instance; False if another run was
        quicker (then it is that run's to resume or destroy)."""
        owner = self.instance_owner_runs().get(label)
        if owner == run_id:
            return True
        if owner not in from_runs:
            return False
        with self._write() as db:
            cursor = db.execute(
                "UPDATE instances SET claimed_by = ? WHERE label = ? AND "
                f"(claimed_by IS NULL OR claimed_by IN ({_marks(from_runs)}))",
                [run_id, label, *from_runs],
            )
            return cursor.rowcount == 1

    def heartbeat(self, run_id: str) -> None:
        """The run lives (see run/liveness.py): other runs may not take its work."""
        with self._write() as db:
            db.execute("UPDATE runs SET heartbeat_at = ? WHERE id = ?", [self._clock(), run_id])

