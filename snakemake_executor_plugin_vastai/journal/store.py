"""The SQLite journal: what every job and every rented instance went through.

Renting costs money by the second, and the laptop running Snakemake may crash
at any moment. So every step is written here *before* its side effect: a job's
state change is committed before the state's work begins, and an instance's
label is committed before the create call that rents it. A restarted run reads
this file to re-attach to jobs whose instance still lives, and to destroy what
an earlier run rented; the instance label (which starts with
:attr:`Journal.label_prefix`) finds an instance even when the create call's
answer never came back.

This module holds the connection, its lock, the transactions and the ``meta`` table;
:class:`Journal` combines them with one mixin per table group (``runs.py``, ``jobs.py``,
``instances.py``, ``costs.py``).

Where and how
-------------
``<workdir>/.snakemake/vastai/journal.sqlite`` (directory 0700; the database
and its ``-wal``/``-shm`` files 0600). WAL mode with ``synchronous=FULL`` (a
committed transition survives a power cut), a busy timeout (several processes
may open it: a run, a restarted run, ``sqlite-utils``), foreign keys on. It is
plain SQLite, readable with ``sqlite-utils rows journal.sqlite jobs`` or
``datasette journal.sqlite``. All timestamps are ``time.time()`` epoch seconds.

Schema
------
``docs/journal-schema.md``: every table, column, index and trigger, the migration that
added it and what it is for. It is generated from the migrations (``migrations.py``) by
``python -m snakemake_executor_plugin_vastai.journal.schema`` (see ``schema.py``), and a
test fails when it and the code disagree.

No secrets
----------
The journal is a file that users copy, attach to bug reports and browse. It
must never hold an API key, a credential value or a private key. Callers must
not pass secrets in any field. As a second line of defence, every dict that is
stored as JSON (transition details, run settings, offers) is redacted first:
values under keys matching ``key|token|secret|passw(or)d|credential|auth``
(any case, at any depth) become ``"***"`` (``None`` and booleans are kept:
they cannot carry a secret). Every string written, detail texts and error
messages included, is scrubbed of the registered secrets (``run/redaction.py``)
first, in whatever escaped form an exception quoted them. A host key that
looks like a private key is refused.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlite_utils

from .base import _insert
from .costs import CostsMixin
from .errors import (
    JournalCorrupt,
    JournalError,
    JournalTooNew,
    StaleTransition,
    UnknownInstance,
    UnknownJob,
)
from .instances import InstancesMixin
from .jobs import TERMINAL_STATES, JobsMixin
from .migrations import MIGRATIONS
from .runs import RunsMixin

# What the rest of the plugin imports from here (the errors, job states and migrations
# are defined in their own modules of this package and re-exported).
__all__ = [
    "MIGRATIONS",
    "RELATIVE_PATH",
    "TERMINAL_STATES",
    "WORKFLOW_ID_FILE",
    "Journal",
    "JournalCorrupt",
    "JournalError",
    "JournalTooNew",
    "StaleTransition",
    "UnknownInstance",
    "UnknownJob",
    "derived_label_prefix",
    "derived_workflow_id",
]

RELATIVE_PATH = Path(".snakemake") / "vastai" / "journal.sqlite"
DIR_MODE = 0o700
FILE_MODE = 0o600
SIDE_SUFFIXES = ("-wal", "-shm", "-journal")
# Seconds a writer waits for another process's transaction (the environment variable
# lets tests make a locked journal fail fast).
BUSY_TIMEOUT = float(os.environ.get("SNAKEMAKE_VASTAI_JOURNAL_BUSY_TIMEOUT") or 30.0)
SQLITE_HEADER = b"SQLite format 3\x00"
SQLITE_CORRUPT, SQLITE_NOTADB = 11, 26
SQLITE_BUSY, SQLITE_LOCKED = 5, 6

WORKFLOW_ID_FILE = "workflow-id"


# -- the journal ---------------------------------------------------------------------------
class Journal(RunsMixin, JobsMixin, InstancesMixin, CostsMixin):
    """The journal of one working directory; safe to share between threads.

    One connection (``check_same_thread=False``) behind a re-entrant lock:
    Snakemake calls the executor from several threads, and every public method
    takes the lock. Every write method commits before it returns.
    """

    SCHEMA_VERSION: int = len(MIGRATIONS)

    def __init__(
        self,
        path: Path | str,
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout: float = BUSY_TIMEOUT,
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.RLock()
        self._writing = False  # a write transaction of this connection is open (_write)
        self._run_id: str | None = None
        self._closed = False
        try:
            _create_private(self.path)
        except OSError as exc:
            raise JournalError(
                f"cannot create journal {self.path}: {exc}; check the permissions of "
                f"{self.path.parent}",
                self.path,
            ) from exc
        self._check_readable(busy_timeout)
        self._conn = sqlite3.connect(
            str(self.path), timeout=busy_timeout, check_same_thread=False, isolation_level=None
        )
        try:
            self.db = sqlite_utils.Database(
                self._conn, recursive_triggers=False, execute_plugins=False
            )
            self._configure(busy_timeout)
            self._migrate()
            self.workflow_id: str = self._adopt_workflow_id()
            self._job_columns = self._columns("jobs")
            self._instance_columns = self._columns("instances")
        except BaseException:
            self._conn.close()
            raise
        _restrict_side_files(self.path)

    def _adopt_workflow_id(self) -> str:
        """The workflow id, kept in a side file too so it outlives a lost journal.

        A journal moved aside as corrupt must not make the next run blind to the
        instances it rented: a fresh journal (no runs yet) takes the id, and so
        the label prefix, from ``workflow-id`` next to it.
        """
        sidecar = self.path.with_name(WORKFLOW_ID_FILE)
        current = self._meta("workflow_id")
        try:
            kept = sidecar.read_text().strip()
        except OSError:
            kept = ""
        fresh = not self._rows("SELECT id FROM runs LIMIT 1", [])
        if fresh and re.fullmatch(r"[0-9a-f]{8}", kept) and kept != current:
            with self._lock:
                self._conn.execute("UPDATE meta SET value = ? WHERE key = 'workflow_id'", [kept])
                # The journal that knew this prefix's labels is lost: until a reconcile has
                # looked, instances with the prefix that this journal does not know are ours.
                self._conn.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('adopted_after_loss', '1')")
            return kept
        if fresh and not kept:
            current = self._derive_workflow_id(current)
        if kept != current:
            fd = os.open(sidecar, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(current + "\n")
        return current

    def _derive_workflow_id(self, current: str) -> str:
        """A new workflow's id, derived from this machine's name and the working
        directory's real path: a run after ``rm -rf .snakemake`` (which takes the journal
        and the ``workflow-id`` file with it) gets the same label prefix back, so the
        instances a crashed run left are found and named, not invisible. (Another
        directory, or the same path on another machine, gets another id.)"""
        derived = derived_workflow_id(self.path.parent.parent.parent)
        if derived != current:
            with self._lock:
                self._conn.execute("UPDATE meta SET value = ? WHERE key = 'workflow_id'",
                                   [derived])
        return derived

    @classmethod
    def for_workdir(cls, workdir: Path | str, **kwargs: Any) -> Journal:
        """The journal of a Snakemake working directory (its directory made private)."""
        path = Path(workdir) / RELATIVE_PATH
        path.parent.parent.mkdir(parents=True, exist_ok=True)
        path.parent.mkdir(mode=DIR_MODE, exist_ok=True)
        os.chmod(path.parent, DIR_MODE)
        return cls(path, **kwargs)

    @property
    def label_prefix(self) -> str:
        """Every instance label of this workflow starts with this, and no other's does."""
        return f"smk-{self.workflow_id}-"

    def close(self) -> None:
        """Close the connection (idempotent); the last closer checkpoints the WAL."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def move_aside(path: Path | str, why: str = "corrupt") -> Path:
        """Rename a journal (and its -wal/-shm) out of the way; return the new path.

        Nothing is deleted: the renamed files may still name instances that bill.
        """
        path = Path(path)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = path.with_name(f"{path.name}.{why}-{stamp}")
        n = 1
        while any(Path(f"{target}{s}").exists() for s in ("", *SIDE_SUFFIXES)):
            n += 1
            target = path.with_name(f"{path.name}.{why}-{stamp}-{n}")
        for suffix in SIDE_SUFFIXES:
            side = Path(f"{path}{suffix}")
            if side.exists():
                side.rename(f"{target}{suffix}")
        path.rename(target)
        return target

    # -- opening ---------------------------------------------------------------------------
    def _check_readable(self, busy_timeout: float) -> None:
        """Refuse a damaged or too new file before anything writes to it.

        The checks use a read-only connection: a read-write one could checkpoint
        a leftover WAL into the very file we are refusing to touch.
        """
        with self.path.open("rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
        if header and header != SQLITE_HEADER:
            raise self._corrupt("it is not an SQLite database")
        uri = f"file:{quote(str(self.path.resolve()))}?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=busy_timeout)
        except sqlite3.Error as exc:
            raise JournalError(
                f"cannot open journal {self.path}: {exc}; check that the "
                "file and its directory are readable and writable by you",
                self.path,
            ) from exc
        try:
            problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise self._corrupt("integrity check failed: " + "; ".join(problems[:3]))
            _refuse_newer(self.path, _schema_version(conn), self.SCHEMA_VERSION)
        except sqlite3.DatabaseError as exc:
            translated = self._translate(exc)
            if translated is exc:
                translated = JournalError(f"cannot read journal {self.path}: {exc}", self.path)
            raise translated from exc
        finally:
            conn.close()

    def _configure(self, busy_timeout: float) -> None:
        """Connection settings: WAL (readers never block the writer), FULL sync, FKs."""
        self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        self._conn.execute("PRAGMA foreign_keys = ON")
        mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise JournalError(
                f"journal {self.path} cannot use WAL mode (got {mode!r}); "
                "keep the working directory on a local file system",
                self.path,
            )
        self._conn.execute("PRAGMA synchronous = FULL")

    def _migrate(self) -> None:
        """Bring the schema up to SCHEMA_VERSION in one transaction, each step once."""
        with self._write() as db:
            current = _schema_version(self._conn)
            _refuse_newer(self.path, current, self.SCHEMA_VERSION)
            self._refuse_foreign_migrations(current)
            for version in range(current + 1, self.SCHEMA_VERSION + 1):
                step = MIGRATIONS[version - 1]
                step(db)
                db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                    [str(version)],
                )
                _insert(
                    db, "migrations", version=version, name=step.__name__, applied_at=self._clock()
                )

    def _refuse_foreign_migrations(self, current: int) -> None:
        """Version n must be the migration this plugin calls n: a journal written by a
        build that numbered its migrations differently would otherwise be 'migrated'
        by steps that do not fit its schema."""
        if current == 0:
            return
        rows = self._conn.execute("SELECT version, name FROM migrations").fetchall()
        for version, name in rows:
            if not 1 <= int(version) <= len(MIGRATIONS):
                continue  # _refuse_newer has judged versions above ours
            expected = MIGRATIONS[int(version) - 1].__name__
            if name != expected:
                raise JournalError(
                    f"journal {self.path} records schema version {version} as {name!r}, but "
                    f"this plugin's version {version} is {expected!r}: a different build "
                    "wrote it. Use the plugin version that wrote it; do not delete the "
                    "journal, it may name instances that still bill.",
                    self.path,
                )

    def _columns(self, table: str) -> frozenset[str]:
        return frozenset(row["name"] for row in self._rows(f"PRAGMA table_info({table})"))

    def _meta(self, key: str) -> str:
        rows = self._rows("SELECT value FROM meta WHERE key = ?", [key])
        if not rows:
            raise self._corrupt(f"meta has no {key!r}")
        return str(rows[0]["value"])

    # -- transactions and errors -----------------------------------------------------------
    @contextmanager
    def _write(self) -> Iterator[sqlite_utils.Database]:
        """One write transaction, committed on success, rolled back on any error.

        BEGIN IMMEDIATE takes the write lock up front, so a transaction that
        reads and then writes never fails half-way on another process's commit.
        BEGIN is inside the ``try``, and a transaction still open when a (not nested) write
        starts is rolled back first, under the lock: Ctrl-C raises
        KeyboardInterrupt wherever the main thread is, also right after BEGIN, and a
        transaction left open there made every later write fail, the teardown's too.
        """
        with self._lock, self._errors():
            self._check_open()
            if not self._writing and self.db.conn.in_transaction:  # an interrupted write's
                self.db.conn.rollback()  # leftover (a nested write fails at BEGIN, as ever)
            outer, self._writing = self._writing, True
            try:
                self.db.execute("BEGIN IMMEDIATE")
                yield self.db
                self.db.execute("COMMIT")
            except BaseException:
                if not outer and self.db.conn.in_transaction:
                    self.db.conn.rollback()
                raise
            finally:
                self._writing = outer

    def _rows(self, sql: str, params: list[Any] | None = None) -> list[dict]:
        """Read rows as dicts, fully fetched while the lock is held."""
        with self._lock, self._errors():
            self._check_open()
            return list(self.db.query(sql, params or []))

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.DatabaseError as exc:
            translated = self._translate(exc)
            if translated is exc:
                raise
            raise translated from exc

    def _translate(self, exc: sqlite3.DatabaseError) -> Exception:
        """SQLite's corruption and lock errors as messages that say what to do."""
        code = (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF
        if code in (SQLITE_CORRUPT, SQLITE_NOTADB):
            return self._corrupt(str(exc))
        if code in (SQLITE_BUSY, SQLITE_LOCKED):
            return JournalError(
                f"journal {self.path} stayed locked by another process: {exc}; "
                "is another snakemake running in this directory?",
                self.path,
            )
        return exc

    def _corrupt(self, why: str) -> JournalCorrupt:
        return JournalCorrupt(
            f"journal {self.path} is damaged ({why}). It was left untouched. Move it aside "
            f"with Journal.move_aside() (renames it to {self.path.name}.corrupt-<timestamp>) "
            "or rename it by hand, then rerun. Instances it recorded may still be billing: "
            "check the Vast.ai console for labels starting with 'smk-'.",
            self.path,
        )

    def _check_open(self) -> None:
        if self._closed:
            raise JournalError(f"journal {self.path} is closed", self.path)

    # -- where this journal lives --------------------------------------------------------
    def home(self) -> str | None:
        """The working directory this journal was last used in (None before it was recorded)."""
        rows = self._rows("SELECT value FROM meta WHERE key = 'workdir'")
        return str(rows[0]["value"]) if rows else None

    def copied_from(self, workdir: Path | str) -> str | None:
        """The directory this journal came from, if ``workdir`` is a copy of it: the journal
        was last used elsewhere and that directory still holds the same workflow (a moved
        directory leaves nothing behind)."""
        home = self.home()
        if home is None or home == str(Path(workdir).resolve()):
            return None
        sidecar = Path(home) / RELATIVE_PATH.parent / WORKFLOW_ID_FILE
        try:
            same = sidecar.read_text().strip() == self.workflow_id
        except OSError:
            return None
        return home if same else None

    @property
    def adopted_after_loss(self) -> bool:
        """The prefix was taken over from a lost journal (see ``_adopt_workflow_id``)."""
        return bool(self._rows("SELECT 1 FROM meta WHERE key = 'adopted_after_loss'"))

    def clear_adopted_after_loss(self) -> None:
        with self._write() as db:
            db.execute("DELETE FROM meta WHERE key = 'adopted_after_loss'")

    def set_home(self, workdir: Path | str) -> None:
        with self._write() as db:
            db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('workdir', ?)", [str(workdir)]
            )

    # -- helpers -----------------------------------------------------------------------------
    @staticmethod
    def _exists(db: sqlite_utils.Database, table: str, column: str, value: Any) -> bool:
        return bool(list(db.query(f"SELECT 1 FROM {table} WHERE {column} = ?", [value])))


# -- module helpers --------------------------------------------------------------------------
def _create_private(path: Path) -> None:
    """Create the file 0600 if missing, so SQLite's -wal/-shm inherit that mode.

    An explicit mode at creation (rather than a temporary umask, which is
    process-wide and would race with Snakemake's other threads) and a chmod
    for files left looser by someone else.
    """
    path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE)
    except FileExistsError:
        pass
    else:
        os.close(fd)
    os.chmod(path, FILE_MODE)


def _restrict_side_files(path: Path) -> None:
    for suffix in SIDE_SUFFIXES:
        side = Path(f"{path}{suffix}")
        if side.exists():
            os.chmod(side, FILE_MODE)


def _schema_version(conn: sqlite3.Connection) -> int:
    """The journal's schema version; 0 for an empty file."""
    has_meta = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
    ).fetchone()
    if has_meta is None:
        return 0
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row else 0


def _refuse_newer(path: Path, found: int, known: int) -> None:
    if found > known:
        raise JournalTooNew(
            f"journal {path} has schema version {found}, but this plugin knows only up to "
            f"{known}: a newer snakemake-executor-plugin-vastai wrote it. Upgrade the plugin "
            "(pip install -U snakemake-executor-plugin-vastai); do not delete the journal, "
            "it may name instances that still bill.",
            path,
        )


def derived_workflow_id(workdir: Path | str) -> str:
    """The workflow id a fresh journal in ``workdir`` takes: eight hex digits of a hash of
    this machine's name and the directory's real path. ``journal cleanup --orphans`` uses
    it when ``.snakemake`` is gone, to find what this directory rented without a journal."""
    real = os.path.realpath(workdir)
    seed = f"{socket.gethostname()}\0{real}".encode("utf-8", "surrogateescape")
    return hashlib.sha256(seed).hexdigest()[:8]


def derived_label_prefix(workdir: Path | str) -> str:
    """The label prefix of :func:`derived_workflow_id` (as :attr:`Journal.label_prefix`)."""
    return f"smk-{derived_workflow_id(workdir)}-"
