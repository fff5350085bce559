"""The journal's schema migrations, one function per schema version, in order.

``MIGRATIONS`` is the list :class:`.store.Journal` runs when it opens a file: version n
is ``MIGRATIONS[n - 1]``, and each step runs once, in the transaction that records it in
the ``migrations`` table under its function name. Those recorded names are checked on
every open (a journal whose version n has another name was written by a different build
and is refused), so a migration is never renamed, reordered or removed: a schema change
is a new function appended at the end. Steps only ever add: tables, columns, indexes,
triggers (and rows a new table is filled with from existing ones).

The schema they build is documented in ``docs/journal-schema.md``, generated from this
list by ``python -m snakemake_executor_plugin_vastai.journal.schema`` (``schema.py``);
the first paragraph of a migration's docstring says there what its version adds.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

import sqlite_utils

Migration = Callable[[sqlite_utils.Database], None]
MIGRATIONS: list[Migration] = []  # version n is MIGRATIONS[n - 1]; only ever append


def migration(fn: Migration) -> Migration:
    """Register the next schema version; its number is its position."""
    MIGRATIONS.append(fn)
    return fn


@migration
def m001_initial(db: sqlite_utils.Database) -> None:
    """The tables of the first release and this workflow's id (so it is created once)."""
    statements = [
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)",
        "CREATE TABLE migrations (version INTEGER PRIMARY KEY, name TEXT, applied_at REAL)",
        """CREATE TABLE runs (
            id TEXT PRIMARY KEY, started_at REAL NOT NULL, ended_at REAL, outcome TEXT,
            pid INTEGER, hostname TEXT, snakemake_version TEXT, plugin_version TEXT,
            settings TEXT)""",
        """CREATE TABLE jobs (
            id TEXT PRIMARY KEY, run_id TEXT NOT NULL REFERENCES runs(id),
            snakemake_jobid INTEGER, rule TEXT NOT NULL, fingerprint TEXT NOT NULL,
            attempt INTEGER, state TEXT NOT NULL, created_at REAL NOT NULL,
            updated_at REAL NOT NULL, ended_at REAL, label TEXT, instance_id INTEGER,
            offer_id INTEGER, machine_id INTEGER, gpu_name TEXT, num_gpus INTEGER,
            dph_total REAL, ssh_host TEXT, ssh_port INTEGER, exit_code INTEGER,
            log_path TEXT, last_error TEXT, resumed_from TEXT REFERENCES jobs(id))""",
        "CREATE INDEX jobs_fingerprint ON jobs(fingerprint)",
        "CREATE INDEX jobs_run_id ON jobs(run_id)",
        "CREATE INDEX jobs_state ON jobs(state)",
        "CREATE INDEX jobs_resumed_from ON jobs(resumed_from)",
        """CREATE TABLE instances (
            label TEXT PRIMARY KEY, instance_id INTEGER UNIQUE,
            job_id TEXT REFERENCES jobs(id), run_id TEXT REFERENCES runs(id),
            offer_id INTEGER, machine_id INTEGER, gpu_name TEXT, num_gpus INTEGER,
            dph_total REAL, geolocation TEXT, offer TEXT, ssh_host TEXT, ssh_port INTEGER,
            host_key TEXT, requested_at REAL NOT NULL, created_at REAL, contacted_at REAL,
            destroy_requested_at REAL, destroyed_at REAL, last_status TEXT,
            last_status_at REAL)""",
        "CREATE INDEX instances_destroyed_at ON instances(destroyed_at)",
        "CREATE INDEX instances_job_id ON instances(job_id)",
        """CREATE TABLE transitions (
            id INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL REFERENCES jobs(id),
            run_id TEXT REFERENCES runs(id), from_state TEXT, to_state TEXT NOT NULL,
            trigger TEXT NOT NULL, at REAL NOT NULL, detail TEXT)""",
        "CREATE INDEX transitions_job_id ON transitions(job_id)",
        """CREATE TRIGGER transitions_no_update BEFORE UPDATE ON transitions
            BEGIN SELECT RAISE(ABORT, 'transitions is append-only'); END""",
        """CREATE TRIGGER transitions_no_delete BEFORE DELETE ON transitions
            BEGIN SELECT RAISE(ABORT, 'transitions is append-only'); END""",
    ]
    for sql in statements:
        db.execute(sql)
    db.execute("INSERT INTO meta (key, value) VALUES ('workflow_id', ?)", [secrets.token_hex(4)])
    db.execute("INSERT INTO meta (key, value) VALUES ('created_at', ?)", [repr(time.time())])


@migration
def m002_billing_clock(db: sqlite_utils.Database) -> None:
    """Vast.ai's own start time of an instance and the moment its destroy was accepted:
    the client's create/destroy-confirmed times drift from the billing clock by the
    request latencies (seconds under load), which costs were priced on before."""
    db.execute("ALTER TABLE instances ADD COLUMN started_at REAL")
    db.execute("ALTER TABLE instances ADD COLUMN destroy_accepted_at REAL")


@migration
def m003_leases_and_strays(db: sqlite_utils.Database) -> None:
    """Run leases, fingerprint parts and stray instances.

    ``runs.pid_started_at`` (the process's start time) makes "this run is dead"
    provable despite pid reuse, and ``runs.heartbeat_at`` (refreshed while the run
    lives) proves it on any host once it is old, so a run never touches a live
    run's jobs. ``instances.claimed_by`` moves a dead run's instance to the run that
    took it over (for resume or teardown), in one guarded update, so two live runs
    never both act on it.
    ``jobs.fingerprint_parts`` (JSON, component -> short hash) lets a restart say
    *what* changed in a job it will not re-attach to. ``strays`` holds instances
    found with this workflow's prefix that no instance row owns (a duplicate from
    a create whose answer was lost, or a label whose row says gone), so their
    teardown is journaled like any other.
    """
    db.execute("ALTER TABLE runs ADD COLUMN pid_started_at REAL")
    db.execute("ALTER TABLE runs ADD COLUMN heartbeat_at REAL")
    db.execute("ALTER TABLE instances ADD COLUMN claimed_by TEXT REFERENCES runs(id)")
    db.execute("ALTER TABLE jobs ADD COLUMN fingerprint_parts TEXT")
    db.execute(
        """CREATE TABLE strays (
            instance_id INTEGER PRIMARY KEY, label TEXT, run_id TEXT REFERENCES runs(id),
            reason TEXT, dph_total REAL, found_at REAL NOT NULL, destroy_requested_at REAL,
            destroy_accepted_at REAL, destroyed_at REAL)"""
    )


@migration
def m004_cost_ledger(db: sqlite_utils.Database) -> None:
    """Bytes each instance moved, the account balance around a run, transfers in flight.

    ``instances.bytes_uploaded``/``bytes_downloaded`` (SSH payload, our side's view)
    price bandwidth with the offer's $/GB (see costs/ledger.py). ``runs.balance_before``/
    ``balance_after`` are the account credit at start and end. ``transfers`` holds one
    row per upload or download: bytes so far, total if known, updated a few times a
    second at most, so ``journal jobs --follow`` can show what is moving.
    """
    db.execute("ALTER TABLE instances ADD COLUMN bytes_uploaded INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE instances ADD COLUMN bytes_downloaded INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE runs ADD COLUMN balance_before REAL")
    db.execute("ALTER TABLE runs ADD COLUMN balance_after REAL")
    db.execute(
        """CREATE TABLE transfers (
            id INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT REFERENCES jobs(id),
            run_id TEXT REFERENCES runs(id), instance_id INTEGER, direction TEXT NOT NULL,
            bytes_done INTEGER NOT NULL DEFAULT 0, bytes_total INTEGER,
            started_at REAL NOT NULL, updated_at REAL NOT NULL, ended_at REAL)"""
    )
    db.execute("CREATE INDEX transfers_job_id ON transfers(job_id)")


@migration
def m005_bids(db: sqlite_utils.Database) -> None:
    """Interruptible (bid) instances (vastai/bids.py): the bid, the disk's hourly storage price
    (billed while stopped too), what the machine costs on demand, and how long it was
    stopped by preemptions (``stopped_since`` while it is stopped now)."""
    for column in ("bid_price REAL", "storage_dph REAL", "ondemand_dph REAL",
                   "stopped_seconds REAL", "stopped_since REAL", "preemptions INTEGER"):
        db.execute(f"ALTER TABLE instances ADD COLUMN {column}")


@migration
def m006_warm_instances(db: sqlite_utils.Database) -> None:
    """Instances as first-class: their own state (``lifecycle/instance_machine.py``) and history.

    ``instances.state`` is the instance's state (NULL on rows written before this
    version: they never served a second job), ``leased_by`` the job holding it,
    ``idle_since`` when it was given back, ``served`` how many jobs it served.
    ``instance_transitions`` is append-only like ``transitions``. ``jobs.work_dir``
    is the job's own directory on its instance (several jobs share one instance),
    ``leased_at`` / ``released_at`` the job's hold on it: a job's cost is that time.
    """
    db.execute("ALTER TABLE instances ADD COLUMN state TEXT")
    db.execute("ALTER TABLE instances ADD COLUMN leased_by TEXT")
    db.execute("ALTER TABLE instances ADD COLUMN idle_since REAL")
    db.execute("ALTER TABLE instances ADD COLUMN served INTEGER NOT NULL DEFAULT 0")
    db.execute("CREATE INDEX instances_state ON instances(state)")
    db.execute("ALTER TABLE jobs ADD COLUMN work_dir TEXT")
    db.execute("ALTER TABLE jobs ADD COLUMN leased_at REAL")
    db.execute("ALTER TABLE jobs ADD COLUMN released_at REAL")
    db.execute(
        """CREATE TABLE instance_transitions (
            id INTEGER PRIMARY KEY AUTOINCREMENT, label TEXT NOT NULL REFERENCES
            instances(label), run_id TEXT REFERENCES runs(id), job_id TEXT, from_state TEXT,
            to_state TEXT NOT NULL, trigger TEXT NOT NULL, at REAL NOT NULL, detail TEXT)"""
    )
    db.execute("CREATE INDEX instance_transitions_label ON instance_transitions(label)")
    db.execute("""CREATE TRIGGER instance_transitions_no_update BEFORE UPDATE ON
        instance_transitions BEGIN SELECT RAISE(ABORT, 'append-only'); END""")
    db.execute("""CREATE TRIGGER instance_transitions_no_delete BEFORE DELETE ON
        instance_transitions BEGIN SELECT RAISE(ABORT, 'append-only'); END""")


@migration
def m007_bytes_per_run(db: sqlite_utils.Database) -> None:
    """Bytes moved per (instance, run): a resumed run moves bytes on an instance an
    earlier run rented, and its ``--vastai-max-spend`` must count them (the instance
    row's totals stay, for the instance's own bill). Rows journaled before this version
    are the renting run's."""
    db.execute(
        """CREATE TABLE instance_run_bytes (
            instance_id INTEGER NOT NULL, run_id TEXT NOT NULL REFERENCES runs(id),
            bytes_uploaded INTEGER NOT NULL DEFAULT 0,
            bytes_downloaded INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (instance_id, run_id))"""
    )
    db.execute(
        "INSERT OR IGNORE INTO instance_run_bytes (instance_id, run_id, bytes_uploaded, "
        "bytes_downloaded) SELECT instance_id, run_id, bytes_uploaded, bytes_downloaded "
        "FROM instances WHERE instance_id IS NOT NULL AND run_id IS NOT NULL "
        "AND (bytes_uploaded > 0 OR bytes_downloaded > 0)"
    )

