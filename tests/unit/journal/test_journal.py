"""The SQLite journal, run for real on files in tmp_path.

Each test names the promise it checks: write-ahead intent survives a crash,
guarded transitions refuse stale callers and change nothing, a failure inside
a transaction leaves no half-written state, no secret reaches the file, and a
damaged or too new file is never silently overwritten.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from snakemake_executor_plugin_vastai.journal import schema
from snakemake_executor_plugin_vastai.journal import store as journal_module
from snakemake_executor_plugin_vastai.journal.store import (
    MIGRATIONS,
    Journal,
    JournalCorrupt,
    JournalError,
    JournalTooNew,
    StaleTransition,
    UnknownInstance,
    UnknownJob,
)
from snakemake_executor_plugin_vastai.lifecycle.job_machine import JobState
from snakemake_executor_plugin_vastai.run.redaction import redact

SECRET = "sk-PLANTED-5e3c9a1f7b2d4e6a"


class FakeClock:
    """A settable clock, so costs and orderings are exact."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal.for_workdir(tmp_path)
    yield j
    j.close()


@pytest.fixture
def run_id(journal: Journal) -> str:
    return journal.start_run(snakemake_version="9.3.0", plugin_version="0.1.0", settings={})


def new_job(j: Journal, run: str, *, state: str = "searching", fingerprint: str = "fp") -> str:
    return j.add_job(
        run_id=run,
        rule="train",
        snakemake_jobid=7,
        fingerprint=fingerprint,
        attempt=1,
        state=state,
        log_path="/tmp/train.log",
    )


def rent(j: Journal, run: str, job_id: str, instance_id: int | None = None, **facts) -> str:
    """A job's rent intent (and its creation, if an id is given); returns the label."""
    label = f"{j.label_prefix}{job_id}"
    j.record_rent_intent(
        job_id=job_id,
        run_id=run,
        label=label,
        offer={
            "id": 100 + (instance_id or 0),
            "machine_id": 42,
            "gpu_name": "RTX 4090",
            "num_gpus": 1,
            "dph_total": 0.4,
        },
    )
    if instance_id is not None:
        j.record_instance_created(label, instance_id, **facts)
    return label


def raw(path: Path, sql: str, params: tuple = ()) -> list[tuple]:
    """Read with a plain sqlite3 connection, as sqlite-utils or Datasette would."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- opening, schema, files ---------------------------------------------------------------
def test_fresh_journal_has_documented_schema(journal: Journal) -> None:
    path = journal.path
    tables = {name for (name,) in raw(path, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"meta", "migrations", "runs", "jobs", "instances", "transitions"} <= tables
    jobs = {row[1] for row in raw(path, "PRAGMA table_info(jobs)")}
    assert {
        "id",
        "run_id",
        "snakemake_jobid",
        "rule",
        "fingerprint",
        "attempt",
        "state",
        "created_at",
        "updated_at",
        "label",
        "instance_id",
        "offer_id",
        "machine_id",
        "gpu_name",
        "num_gpus",
        "dph_total",
        "ssh_host",
        "ssh_port",
        "exit_code",
        "log_path",
        "last_error",
        "resumed_from",
    } <= jobs
    instances = {row[1] for row in raw(path, "PRAGMA table_info(instances)")}
    assert {
        "label",
        "instance_id",
        "job_id",
        "run_id",
        "offer_id",
        "machine_id",
        "gpu_name",
        "num_gpus",
        "dph_total",
        "ssh_host",
        "ssh_port",
        "host_key",
        "requested_at",
        "created_at",
        "destroy_requested_at",
        "destroyed_at",
        "last_status",
    } <= instances
    indexed = {
        row[0]
        for row in raw(
            path,
            "SELECT sql FROM sqlite_master WHERE type='index' "
            "AND tbl_name='jobs' AND sql IS NOT NULL",
        )
    }
    for column in ("fingerprint", "run_id", "state"):
        assert any(f"(jobs({column})" in sql.replace("ON ", "(") for sql in indexed), column
    meta = dict(raw(path, "SELECT key, value FROM meta"))
    assert meta["schema_version"] == str(Journal.SCHEMA_VERSION)
    assert re.fullmatch(r"[0-9a-f]{8}", meta["workflow_id"])
    assert journal.workflow_id == meta["workflow_id"]
    assert journal.label_prefix == f"smk-{meta['workflow_id']}-"
    assert journal.path == path.parent.parent.parent / ".snakemake/vastai/journal.sqlite"


def test_committed_schema_doc_is_what_the_migrations_make() -> None:
    """docs/journal-schema.md is the schema's documentation: it must not drift."""
    if not schema.DOC.parent.is_dir():
        pytest.skip("no docs/ in this tree (an sdist); a checkout's run compares it")
    assert not schema.drift(), f"{schema.DOC} is out of date; run: {schema.COMMAND}"


def test_schema_doc_describes_the_journal_the_store_opens(journal: Journal) -> None:
    """The in-memory build the document is drawn from is what a real journal file holds,
    and the document names every table and column of it."""
    described = schema.describe(journal.db)
    assert described == schema.describe(schema.build()[0])
    doc = schema.render()
    for table, parts in described.items():
        assert f"\n### {table}\n" in doc, table
        for name, *_ in parts["columns"]:
            assert f"| `{name}` |" in doc, f"{table}.{name}"


def test_schema_command_writes_and_checks(tmp_path: Path) -> None:
    out = tmp_path / "journal-schema.md"
    assert schema.main(["--check", "--out", str(out)]) == 1  # missing
    assert schema.main(["--out", str(out)]) == 0
    assert schema.main(["--check", "--out", str(out)]) == 0
    out.write_text(out.read_text().replace("| `served` |", "| `servings` |"))
    assert schema.main(["--check", "--out", str(out)]) == 1


def test_a_new_migration_shows_in_the_schema_doc(monkeypatch: pytest.MonkeyPatch) -> None:
    def m008_priority(db) -> None:
        """Jobs get a priority."""
        db.execute("ALTER TABLE jobs ADD COLUMN priority INTEGER")

    def m009_extra(db) -> None:
        db.execute("CREATE TABLE extra (x INTEGER)")

    monkeypatch.setattr(schema, "MIGRATIONS", [*MIGRATIONS, m008_priority])
    text = schema.render()
    assert "| 8 | `m008_priority` | Jobs get a priority. |" in text
    assert "| `priority` | INTEGER |  | `m008_priority` |" in text
    assert schema.drift()
    monkeypatch.setattr(schema, "MIGRATIONS", [*MIGRATIONS, m009_extra])
    with pytest.raises(ValueError, match=r"no note for table.*extra"):
        schema.render()  # a new table needs a note saying what it is for


def test_connection_settings(journal: Journal) -> None:
    assert raw(journal.path, "PRAGMA journal_mode") == [("wal",)]  # persistent, any reader
    assert next(journal.db.query("PRAGMA busy_timeout"))["timeout"] >= 1000
    assert next(journal.db.query("PRAGMA foreign_keys"))["foreign_keys"] == 1
    assert next(journal.db.query("PRAGMA synchronous"))["synchronous"] == 2  # FULL


def test_files_are_private_even_under_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        j = Journal.for_workdir(tmp_path)
        run = j.start_run(snakemake_version="9", plugin_version="0", settings={})
        new_job(j, run)
        side = [Path(f"{j.path}{suffix}") for suffix in ("-wal", "-shm")]
        assert all(p.exists() for p in side)
        assert {p.name: mode(p) for p in [j.path, *side]} == {
            "journal.sqlite": 0o600,
            "journal.sqlite-wal": 0o600,
            "journal.sqlite-shm": 0o600,
        }
        assert mode(j.path.parent) == 0o700
        j.close()
    finally:
        os.umask(old)


def test_reopen_tightens_a_loosened_file_and_directory(tmp_path: Path) -> None:
    Journal.for_workdir(tmp_path).close()
    path = tmp_path / ".snakemake/vastai/journal.sqlite"
    os.chmod(path, 0o644)
    os.chmod(path.parent, 0o755)
    Journal.for_workdir(tmp_path).close()
    assert (mode(path), mode(path.parent)) == (0o600, 0o700)


def test_reopen_keeps_workflow_id_and_runs_migrations_once(tmp_path: Path) -> None:
    first = Journal.for_workdir(tmp_path)
    workflow_id = first.workflow_id
    first.close()
    for _ in range(2):
        again = Journal.for_workdir(tmp_path)
        assert again.workflow_id == workflow_id
        again.close()
    rows = raw(first.path, "SELECT version, name FROM migrations ORDER BY version")
    assert rows[:3] == [(1, "m001_initial"), (2, "m002_billing_clock"),
                        (3, "m003_leases_and_strays")]
    assert rows == [(n, m.__name__) for n, m in enumerate(MIGRATIONS, start=1)]


def test_a_new_migration_runs_once_and_keeps_the_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    j = Journal.for_workdir(tmp_path)
    run = j.start_run(snakemake_version="9", plugin_version="0", settings={})
    job_id = new_job(j, run)
    j.close()
    calls = []

    def m002_add_column(db) -> None:
        calls.append(1)
        db.execute("ALTER TABLE jobs ADD COLUMN priority INTEGER")

    monkeypatch.setattr(journal_module, "MIGRATIONS", [*journal_module.MIGRATIONS, m002_add_column])
    version = len(journal_module.MIGRATIONS)  # the patched list, with the new step
    monkeypatch.setattr(Journal, "SCHEMA_VERSION", version)
    for _ in range(2):
        upgraded = Journal.for_workdir(tmp_path)
        upgraded.update_job(job_id, priority=5)  # the new column is settable at once
        upgraded.close()
    assert calls == [1]
    assert raw(j.path, "SELECT value FROM meta WHERE key='schema_version'") == [(str(version),)]
    assert raw(j.path, "SELECT state, priority FROM jobs") == [("searching", 5)]


def test_a_journal_whose_migration_names_differ_is_refused(tmp_path: Path) -> None:
    """A build that numbered its migrations differently wrote it: steps would not fit."""
    j = Journal.for_workdir(tmp_path)
    j.close()
    conn = sqlite3.connect(j.path)
    with conn:
        conn.execute("UPDATE migrations SET name = 'm005_warm_instances' WHERE version = 5")
    conn.close()
    with pytest.raises(JournalError, match=r"version 5 as 'm005_warm_instances'.*'m005_bids'"):
        Journal.for_workdir(tmp_path)


def test_transfers_of_dead_runs_are_closed_at_their_last_update(tmp_path: Path) -> None:
    clock = [1000.0]
    j = Journal(tmp_path / "j.sqlite", clock=lambda: clock[0])
    dead = j.start_run(snakemake_version="9", plugin_version="0", settings={})
    crashed = j.start_transfer(job_id=None, instance_id=1, direction="upload", total=10)
    clock[0] += 3.0
    j.update_transfer(crashed, 4)
    live = j.start_run(snakemake_version="9", plugin_version="0", settings={})
    mine = j.start_transfer(job_id=None, instance_id=1, direction="download", total=None)
    assert j.close_transfers([dead]) == 1
    assert [t["id"] for t in j.transfers(in_flight=True)] == [mine]
    row = next(t for t in j.transfers() if t["id"] == crashed)
    assert row["ended_at"] == 1003.0 and row["run_id"] == dead and live != dead
    assert j.close_transfers([]) == 0
    j.close()


# -- damaged and too new files --------------------------------------------------------------
def test_garbage_file_is_refused_untouched_and_can_be_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / ".snakemake/vastai/journal.sqlite"
    path.parent.mkdir(parents=True)
    garbage = bytes(range(256)) * 16
    path.write_bytes(garbage)
    with pytest.raises(JournalCorrupt) as info:
        Journal.for_workdir(tmp_path)
    message = str(info.value)
    assert str(path) in message and "move_aside" in message and "corrupt-" in message
    assert info.value.path == path
    assert path.read_bytes() == garbage
    assert sorted(p.name for p in path.parent.iterdir()) == ["journal.sqlite"]

    moved = Journal.move_aside(path)
    assert re.fullmatch(r"journal\.sqlite\.corrupt-\d{8}T\d{6}", moved.name)
    assert moved.read_bytes() == garbage and not path.exists()
    fresh = Journal.for_workdir(tmp_path)  # the directory is usable again
    assert fresh.runs() == []
    fresh.close()


def test_damaged_pages_are_refused_untouched(tmp_path: Path) -> None:
    j = Journal.for_workdir(tmp_path)
    run = j.start_run(snakemake_version="9", plugin_version="0", settings={})
    for _ in range(30):
        new_job(j, run)
    j.close()
    data = bytearray(j.path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    data[page_size:] = b"\xa5" * (len(data) - page_size)  # header and page 1 intact
    j.path.write_bytes(bytes(data))
    before = digest(j.path)
    with pytest.raises(JournalCorrupt):
        Journal(j.path)
    assert digest(j.path) == before


def test_a_damaged_index_is_caught_by_the_integrity_check(tmp_path: Path) -> None:
    """Tables still read fine; only the integrity check sees the broken index page."""
    j = Journal.for_workdir(tmp_path)
    run = j.start_run(snakemake_version="9", plugin_version="0", settings={})
    for _ in range(30):
        new_job(j, run)
    j.close()
    [(root,)] = raw(j.path, "SELECT rootpage FROM sqlite_master WHERE name='jobs_fingerprint'")
    data = bytearray(j.path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    start = (root - 1) * page_size
    data[start + 8 : start + page_size] = b"\xa5" * (page_size - 8)  # keep the page header
    j.path.write_bytes(bytes(data))
    assert raw(j.path, "SELECT count(*) FROM jobs") == [(30,)]  # a plain read succeeds
    before = digest(j.path)
    with pytest.raises(JournalCorrupt, match="integrity check failed"):
        Journal(j.path)
    assert digest(j.path) == before


def test_move_aside_takes_the_wal_and_shm_along(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    for suffix, content in (("", b"main"), ("-wal", b"wal"), ("-shm", b"shm")):
        Path(f"{path}{suffix}").write_bytes(content)
    first = Journal.move_aside(path)
    for suffix, content in (("", b"main"), ("-wal", b"wal"), ("-shm", b"shm")):
        assert Path(f"{first}{suffix}").read_bytes() == content
        assert not Path(f"{path}{suffix}").exists()
    path.write_bytes(b"again")
    second = Journal.move_aside(path)  # same second: a distinct name, nothing overwritten
    assert second != first and second.read_bytes() == b"again"
    assert Path(first).read_bytes() == b"main"


def test_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    Journal.for_workdir(tmp_path).close()
    path = tmp_path / ".snakemake/vastai/journal.sqlite"
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            "UPDATE meta SET value = ? WHERE key = 'schema_version'",
            [str(Journal.SCHEMA_VERSION + 1)],
        )
    conn.close()
    before = digest(path)
    with pytest.raises(JournalTooNew) as info:
        Journal.for_workdir(tmp_path)
    assert str(path) in str(info.value) and "Upgrade the plugin" in str(info.value)
    assert digest(path) == before


# -- runs and jobs ---------------------------------------------------------------------------
def test_runs_are_recorded_and_the_latest_is_found(tmp_path: Path) -> None:
    clock = FakeClock()
    j = Journal.for_workdir(tmp_path, clock=clock)
    assert j.latest_run_id() is None
    first = j.start_run(
        snakemake_version="9.3.0",
        plugin_version="0.1.0",
        settings={"image": "pytorch", "disk": 20.0},
    )
    clock.now += 10
    second = j.start_run(snakemake_version="9.3.0", plugin_version="0.1.0", settings={})
    j.end_run(first, "success")
    assert j.latest_run_id() == second
    rows = {r["id"]: r for r in j.runs()}
    assert rows[first]["outcome"] == "success" and rows[first]["ended_at"] == clock.now
    assert rows[second]["ended_at"] is None and rows[second]["pid"] == os.getpid()
    assert rows[first]["settings"] == '{"image": "pytorch", "disk": 20.0}'
    with pytest.raises(JournalError, match="not in journal"):
        j.end_run("nope", "x")
    j.close()


def test_add_job_writes_the_job_and_its_submit_row(journal: Journal, run_id: str) -> None:
    job_id = new_job(journal, run_id, state=JobState.SEARCHING)
    job = journal.job(job_id)
    assert (job["state"], job["rule"], job["attempt"], job["run_id"]) == (
        "searching",
        "train",
        1,
        run_id,
    )
    [row] = journal.transitions_of(job_id)
    assert (row["from_state"], row["to_state"], row["trigger"], row["run_id"]) == (
        None,
        "searching",
        "submit",
        run_id,
    )
    assert raw(journal.path, "SELECT typeof(state) FROM jobs") == [("text",)]
    with pytest.raises(JournalError, match="start_run"):
        journal.add_job(
            run_id="nope",
            rule="r",
            snakemake_jobid=1,
            fingerprint="f",
            attempt=1,
            state="searching",
        )


def test_transition_moves_the_job_and_appends_a_row(journal: Journal, run_id: str) -> None:
    job_id = new_job(journal, run_id)
    journal.transition(
        job_id,
        source=[JobState.SEARCHING, JobState.RENTING],
        dest=JobState.RENTING,
        trigger="offers_found",
        detail={"offers": 3},
        offer_id=99,
    )
    journal.transition(
        job_id,
        source="renting",
        dest="destroying",
        trigger="fail",
        detail="no offer left",
        last_error="no offer",
    )
    journal.transition(job_id, source="destroying", dest="failed", trigger="destroyed")
    job = journal.job(job_id)
    assert (job["state"], job["offer_id"], job["last_error"]) == ("failed", 99, "no offer")
    assert job["ended_at"] is not None
    rows = [
        (r["from_state"], r["to_state"], r["trigger"], r["detail"])
        for r in journal.transitions_of(job_id)
    ]
    assert rows == [
        (None, "searching", "submit", None),
        ("searching", "renting", "offers_found", '{"offers": 3}'),
        ("renting", "destroying", "fail", "no offer left"),
        ("destroying", "failed", "destroyed", None),
    ]
    assert journal.jobs(state="failed") == [journal.job(job_id)]
    assert journal.jobs(run_id=run_id, rule="other") == []


def test_stale_transition_raises_and_changes_nothing(journal: Journal, run_id: str) -> None:
    job_id = new_job(journal, run_id)
    before = journal.job(job_id)
    with pytest.raises(StaleTransition) as info:
        journal.transition(
            job_id, source=["booting", "running"], dest="uploading", trigger="booted", exit_code=3
        )
    err = info.value
    assert (err.job_id, err.expected, err.actual) == (job_id, ("booting", "running"), "searching")
    assert job_id in str(err) and "booting" in str(err) and "searching" in str(err)
    assert journal.job(job_id) == before
    assert len(journal.transitions_of(job_id)) == 1
    with pytest.raises(UnknownJob):
        journal.transition("nope", source="searching", dest="renting", trigger="x")


def test_transition_and_its_row_are_atomic_when_the_detail_fails(
    journal: Journal, run_id: str
) -> None:
    job_id = new_job(journal, run_id)
    before = journal.job(job_id)
    with pytest.raises(TypeError):
        journal.transition(
            job_id,
            source="searching",
            dest="renting",
            trigger="offers_found",
            detail={"offer": object()},
            offer_id=5,
        )
    assert journal.job(job_id) == before
    assert len(journal.transitions_of(job_id)) == 1
    journal.transition(job_id, source="searching", dest="renting", trigger="offers_found")
    assert journal.job(job_id)["state"] == "renting"  # the connection is still usable


def test_transition_and_its_row_are_atomic_when_the_insert_fails(
    journal: Journal, run_id: str
) -> None:
    """The row insert runs after the guarded update: its failure must undo the update."""
    job_id = new_job(journal, run_id)
    journal.db.execute(
        "CREATE TEMP TRIGGER boom BEFORE INSERT ON main.transitions "
        "WHEN NEW.trigger = 'boom' BEGIN SELECT RAISE(ABORT, 'boom'); END"
    )
    with pytest.raises(sqlite3.IntegrityError, match="boom"):
        journal.transition(job_id, source="searching", dest="renting", trigger="boom", offer_id=5)
    assert raw(journal.path, "SELECT state, offer_id FROM jobs") == [("searching", None)]
    assert raw(journal.path, "SELECT count(*) FROM transitions") == [(1,)]


def test_transitions_are_append_only(journal: Journal, run_id: str) -> None:
    new_job(journal, run_id)
    conn = sqlite3.connect(journal.path)
    for sql in ("UPDATE transitions SET to_state = 'x'", "DELETE FROM transitions"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute(sql)
    conn.close()


def test_update_job_sets_facts_but_never_state(journal: Journal, run_id: str) -> None:
    job_id = new_job(journal, run_id)
    journal.update_job(job_id, exit_code=3, last_error="boom", log_path="/x.log")
    job = journal.job(job_id)
    assert (job["exit_code"], job["last_error"], job["log_path"]) == (3, "boom", "/x.log")
    for bad in ({"state": "failed"}, {"colour": "red"}, {"fingerprint": "other"}):
        with pytest.raises(ValueError):
            journal.update_job(job_id, **bad)
    assert journal.job(job_id)["state"] == "searching"
    with pytest.raises(UnknownJob):
        journal.update_job("nope", exit_code=1)


def test_transitions_are_attributed_to_the_run_that_made_them(tmp_path: Path) -> None:
    first = Journal.for_workdir(tmp_path)
    run1 = first.start_run(snakemake_version="9", plugin_version="0", settings={})
    job_id = new_job(first, run1)
    first.close()  # the first run crashed; a second process cleans up its job
    second = Journal.for_workdir(tmp_path)
    run2 = second.start_run(snakemake_version="9", plugin_version="0", settings={})
    second.transition(job_id, source="searching", dest="cancelled", trigger="cancel")
    second.end_run(run2, "success")
    second.transition(job_id, source="cancelled", dest="cancelled", trigger="note")
    assert [r["run_id"] for r in second.transitions_of(job_id)] == [run1, run2, None]
    second.close()


# -- instances ----------------------------------------------------------------------------
def test_rent_intent_is_visible_to_a_second_journal_before_creation(
    journal: Journal, run_id: str
) -> None:
    job_id = new_job(journal, run_id, state="renting")
    label = rent(journal, run_id, job_id)
    other = Journal(journal.path)  # as a restarted process would open it
    try:
        [row] = other.instances_possibly_alive()
        assert (row["label"], row["instance_id"], row["job_id"]) == (label, None, job_id)
        assert (row["offer_id"], row["gpu_name"], row["dph_total"]) == (100, "RTX 4090", 0.4)
        assert row["requested_at"] is not None
        assert other.job(job_id)["label"] == label
        journal.record_instance_created(label, 555)
        assert other.instances_possibly_alive()[0]["instance_id"] == 555
        assert other.job(job_id)["instance_id"] == 555
    finally:
        other.close()


def test_rent_intent_survives_a_crash_during_the_create_call(tmp_path: Path) -> None:
    """A process journals its intent and dies without closing: the next one sees the label."""
    script = textwrap.dedent(f"""
        import os
        from pathlib import Path
        from snakemake_executor_plugin_vastai.journal.store import Journal
        j = Journal.for_workdir(Path({str(tmp_path)!r}))
        run = j.start_run(snakemake_version="9", plugin_version="0", settings={{}})
        job = j.add_job(run_id=run, rule="r", snakemake_jobid=1, fingerprint="fp",
                        attempt=1, state="renting")
        j.record_rent_intent(job_id=job, run_id=run, label=j.label_prefix + job,
                             offer={{"id": 1, "dph_total": 0.3}})
        print(j.label_prefix + job, flush=True)
        os._exit(9)  # the create call never returns
    """)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 9, done.stderr
    label = done.stdout.strip()
    j = Journal.for_workdir(tmp_path)
    assert [r["label"] for r in j.instances_possibly_alive()] == [label]
    assert label.startswith(j.label_prefix)
    [crashed] = j.runs()
    assert crashed["ended_at"] is None
    j.close()


def test_rent_intent_refuses_foreign_labels_and_unknown_jobs(journal: Journal, run_id: str) -> None:
    job_id = new_job(journal, run_id)
    with pytest.raises(ValueError, match="prefix"):
        journal.record_rent_intent(
            job_id=job_id, run_id=run_id, label=f"other-{job_id}", offer={"id": 1}
        )
    with pytest.raises(UnknownJob):
        journal.record_rent_intent(
            job_id="nope", run_id=run_id, label=f"{journal.label_prefix}nope", offer={"id": 1}
        )
    assert journal.instances() == []


def test_renting_again_under_the_same_label(journal: Journal, run_id: str) -> None:
    """The first offer was gone: the same label is retried; once created, it is taken."""
    job_id = new_job(journal, run_id)
    label = f"{journal.label_prefix}{job_id}"
    journal.record_rent_intent(
        job_id=job_id, run_id=run_id, label=label, offer={"offer_id": 1, "dph_total": 0.2}
    )
    journal.record_rent_intent(
        job_id=job_id, run_id=run_id, label=label, offer={"offer_id": 2, "dph_total": 0.3}
    )
    [row] = journal.instances()
    assert (row["offer_id"], row["dph_total"]) == (2, 0.3)
    assert journal.job(job_id)["offer_id"] == 2
    journal.record_instance_created(label, 900)
    with pytest.raises(JournalError, match="already names instance 900"):
        journal.record_rent_intent(job_id=job_id, run_id=run_id, label=label, offer={"id": 3})


def test_instance_creation_needs_an_intent_and_a_unique_id(journal: Journal, run_id: str) -> None:
    with pytest.raises(UnknownInstance, match="record_rent_intent"):
        journal.record_instance_created(f"{journal.label_prefix}nope", 1)
    a = rent(journal, run_id, new_job(journal, run_id), 10)
    b = rent(journal, run_id, new_job(journal, run_id))
    with pytest.raises(JournalError, match="already journaled"):
        journal.record_instance_created(b, 10)
    with pytest.raises(JournalError, match="already names instance 10"):
        journal.record_instance_created(a, 11)
    journal.record_instance_created(a, 10)  # repeating the same fact is harmless
    with pytest.raises(ValueError, match="host_key"):
        journal.record_instance_created(b, 12, host_key="x")


def test_instances_possibly_alive(journal: Journal, run_id: str) -> None:
    intent_only = rent(journal, run_id, new_job(journal, run_id))
    created = rent(journal, run_id, new_job(journal, run_id), 1)
    destroying = rent(journal, run_id, new_job(journal, run_id), 2)
    destroyed = rent(journal, run_id, new_job(journal, run_id), 3)
    never_created = rent(journal, run_id, new_job(journal, run_id))
    journal.record_destroy_requested(instance_id=2)
    journal.record_destroy_requested(instance_id=3)
    journal.record_instance_destroyed(instance_id=3)
    journal.record_instance_destroyed(label=never_created)  # lookup by label found nothing
    alive = {r["label"] for r in journal.instances_possibly_alive()}
    assert alive == {intent_only, created, destroying}
    assert destroyed not in alive
    # the lookup was wrong after all: the instance appears and is alive again
    journal.record_instance_created(never_created, 4)
    assert never_created in {r["label"] for r in journal.instances_possibly_alive()}
    with pytest.raises(UnknownInstance):
        journal.record_instance_destroyed(instance_id=999)
    with pytest.raises(ValueError):
        journal.record_destroy_requested()


def test_destroy_times_keep_the_first_record(tmp_path: Path) -> None:
    clock = FakeClock()
    j = Journal.for_workdir(tmp_path, clock=clock)
    run = j.start_run(snakemake_version="9", plugin_version="0", settings={})
    label = rent(j, run, new_job(j, run), 5)
    j.record_destroy_requested(label=label)
    clock.now += 60
    j.record_destroy_requested(instance_id=5)
    j.record_instance_destroyed(label=label, instance_id=5, at=clock.now + 1)
    j.record_instance_destroyed(instance_id=5)
    [row] = j.instances()
    assert (row["destroy_requested_at"], row["destroyed_at"]) == (1_000_000.0, 1_000_061.0)
    j.close()


def test_host_key_is_pinned_on_first_contact(journal: Journal, run_id: str) -> None:
    job_id = new_job(journal, run_id)
    rent(journal, run_id, job_id, 77)
    assert journal.pinned_host_key(77) is None
    journal.record_instance_contact(
        77, ssh_host="ssh1.vast.ai", ssh_port=2222, host_key="ssh-ed25519 AAAAfirst"
    )
    journal.record_instance_contact(
        77, ssh_host="ssh2.vast.ai", ssh_port=2223, host_key="ssh-ed25519 AAAAfirst"
    )
    with pytest.raises(JournalError, match="re-pin"):
        journal.record_instance_contact(
            77, ssh_host="h", ssh_port=1, host_key="ssh-ed25519 AAAAother"
        )
    with pytest.raises(ValueError, match="private key"):
        journal.record_instance_contact(
            77, ssh_host="h", ssh_port=1, host_key="-----BEGIN OPENSSH PRIVATE KEY-----"
        )
    assert journal.pinned_host_key(77) == "ssh-ed25519 AAAAfirst"
    job = journal.job(job_id)
    assert (job["ssh_host"], job["ssh_port"]) == ("ssh2.vast.ai", 2223)
    journal.update_instance_status(77, "running")
    assert journal.instances()[0]["last_status"] == "running"


# -- resuming after a crash -----------------------------------------------------------------
def test_find_resumable_and_unfinished_jobs(tmp_path: Path) -> None:
    clock = FakeClock()
    j = Journal.for_workdir(tmp_path, clock=clock)
    run1 = j.start_run(snakemake_version="9", plugin_version="0", settings={})

    def job(state: str, fingerprint: str = "fp", instance_id: int | None = None) -> str:
        clock.now += 1
        job_id = new_job(j, run1, fingerprint=fingerprint)
        if instance_id is not None:
            rent(j, run1, job_id, instance_id)
        j.transition(job_id, source="searching", dest=state, trigger="t")
        return job_id

    older = job("running", instance_id=1)
    newest = job("booting", instance_id=2)
    job("succeeded", instance_id=3)  # finished: never resumed
    job("destroying", instance_id=4)  # its instance is going away
    job("searching")  # nothing rented
    asked = job("running", instance_id=5)
    j.record_destroy_requested(instance_id=5)
    gone = job("running", instance_id=6)
    j.record_instance_destroyed(instance_id=6)
    other = job("running", fingerprint="other", instance_id=7)
    clock.now += 1
    run2 = j.start_run(snakemake_version="9", plugin_version="0", settings={})

    found = j.find_resumable("fp")
    assert found is not None and found["id"] == newest
    assert found["instance"]["instance_id"] == 2 and found["instance"]["label"] == found["label"]
    assert j.find_resumable("fp", exclude_run=run1) is None
    assert j.find_resumable("unknown") is None
    unfinished = {r["id"] for r in j.unfinished_jobs(exclude_run=run2)}
    assert {older, newest, asked, gone, other} <= unfinished
    assert all(r["state"] not in ("succeeded", "failed", "cancelled") for r in j.unfinished_jobs())

    # run 2 re-attaches to the newest one: that job is taken over, run 2's is now the one
    clock.now += 1
    resumer = new_job(j, run2)
    j.transition(
        resumer,
        source="searching",
        dest="running",
        trigger="resume",
        resumed_from=newest,
        label=found["label"],
        instance_id=2,
    )
    assert j.find_resumable("fp")["id"] == resumer
    assert j.find_resumable("fp", exclude_run=run2)["id"] == older
    assert newest not in {r["id"] for r in j.unfinished_jobs(exclude_run=run2)}
    assert [r["id"] for r in j.unfinished_jobs(exclude_run=run1)] == [resumer]
    j.close()


def test_failed_machines(journal: Journal, run_id: str) -> None:
    for machine, state in ((1, "failed"), (2, "succeeded"), (3, "failed"), (3, "failed")):
        job_id = new_job(journal, run_id)
        journal.update_job(job_id, machine_id=machine)
        journal.transition(job_id, source="searching", dest=state, trigger="t")
    assert journal.failed_machines("fp") == [1, 3]
    assert journal.failed_machines("other") == []


# -- costs ------------------------------------------------------------------------------------
def test_instance_cost_arithmetic(tmp_path: Path) -> None:
    clock = FakeClock(10_000.0)
    j = Journal.for_workdir(tmp_path, clock=clock)
    run = j.start_run(snakemake_version="9", plugin_version="0", settings={})
    done = rent(j, run, new_job(j, run), 1, created_at=1_000.0, dph_total=0.8)
    j.record_instance_destroyed(label=done, at=1_000.0 + 5_400)
    live = rent(j, run, new_job(j, run), 2, created_at=clock.now - 1_800, dph_total=0.5)
    pending = rent(j, run, new_job(j, run))
    assert j.instance_cost(done) == pytest.approx((5_400.0, 1.2))
    assert j.instance_cost(live) == pytest.approx((1_800.0, 0.25))
    clock.now += 1_800  # still billing
    assert j.instance_cost(live) == pytest.approx((3_600.0, 0.5))
    assert j.instance_cost(pending) == (0.0, 0.0)
    assert j.run_cost(run) == pytest.approx((9_000.0, 1.7))
    with pytest.raises(UnknownInstance):
        j.instance_cost("nope")
    j.close()


# -- secrets ----------------------------------------------------------------------------------
def test_redact_masks_secret_keys_at_any_depth() -> None:
    value = {
        "API_KEY": "a",
        "nested": {"Authorization": "b", "ok": "c", "list": [{"password": 1}, "d"]},
        "keep_instances": True,
        "forward_credentials": False,
        "token": None,
    }
    assert redact(value) == {
        "API_KEY": "***",
        "nested": {"Authorization": "***", "ok": "c", "list": [{"password": "***"}, "d"]},
        "keep_instances": True,
        "forward_credentials": False,
        "token": None,
    }


def test_planted_secrets_never_reach_the_file(tmp_path: Path) -> None:
    j = Journal.for_workdir(tmp_path)
    run = j.start_run(
        snakemake_version="9",
        plugin_version="0",
        settings={"api_key": SECRET, "image": "visible-image-name"},
    )
    job_id = new_job(j, run)
    j.transition(
        job_id,
        source="searching",
        dest="renting",
        trigger="offers_found",
        detail={
            "request": {"headers": [{"Authorization": f"Bearer {SECRET}"}]},
            "env": {"HF_TOKEN": SECRET, "AWS_SECRET_ACCESS_KEY": SECRET},
            "note": "visible-detail-note",
        },
    )
    j.record_rent_intent(
        job_id=job_id,
        run_id=run,
        label=f"{j.label_prefix}{job_id}",
        offer={"id": 1, "ssh_key": SECRET, "credentials": {"x": SECRET}},
    )
    files = [j.path, Path(f"{j.path}-wal"), Path(f"{j.path}-shm")]
    before_close = b"".join(p.read_bytes() for p in files if p.exists())
    j.close()
    after_close = b"".join(p.read_bytes() for p in files if p.exists())
    for blob in (before_close, after_close):
        assert SECRET.encode() not in blob
        assert b"visible-detail-note" in blob and b"visible-image-name" in blob  # scan works
    assert (
        raw(j.path, "SELECT detail FROM transitions WHERE trigger='offers_found'")[0][0].count(
            '"***"'
        )
        == 3
    )


# -- threads --------------------------------------------------------------------------------
def _hammer(journals: list[Journal], run: str, threads: int, steps: int) -> list[str]:
    """Each thread moves its own job back and forth; returns the job ids."""
    job_ids = [new_job(journals[0], run, state="uploading") for _ in range(threads)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def work(n: int) -> None:
        j = journals[n % len(journals)]
        states = ("uploading", "running")
        try:
            barrier.wait()
            for i in range(steps):
                j.transition(
                    job_ids[n],
                    source=states[i % 2],
                    dest=states[(i + 1) % 2],
                    trigger="retry",
                    detail={"i": i},
                )
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    return job_ids


def test_eight_threads_share_one_journal(journal: Journal, run_id: str) -> None:
    job_ids = _hammer([journal], run_id, threads=8, steps=200)
    counts = dict(raw(journal.path, "SELECT job_id, count(*) FROM transitions GROUP BY job_id"))
    assert counts == dict.fromkeys(job_ids, 201)
    assert {journal.job(j)["state"] for j in job_ids} == {"uploading"}  # 200 steps: even


def test_two_connections_write_concurrently(journal: Journal, run_id: str) -> None:
    second = Journal(journal.path)
    try:
        job_ids = _hammer([journal, second], run_id, threads=4, steps=100)
    finally:
        second.close()
    assert raw(journal.path, "SELECT count(*) FROM transitions") == [(4 * 101,)]
    assert len(set(raw(journal.path, "SELECT job_id FROM transitions"))) == len(job_ids)


def test_racing_threads_move_a_job_only_once(journal: Journal, run_id: str) -> None:
    job_id = new_job(journal, run_id, state="destroying")
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def destroy() -> None:
        barrier.wait()
        try:
            journal.transition(job_id, source="destroying", dest="succeeded", trigger="destroyed")
            outcomes.append("won")
        except StaleTransition:
            outcomes.append("stale")

    workers = [threading.Thread(target=destroy) for _ in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert sorted(outcomes) == ["stale"] * 7 + ["won"]
    assert len(journal.transitions_of(job_id)) == 2


def test_a_closed_journal_says_so(tmp_path: Path) -> None:
    j = Journal.for_workdir(tmp_path)
    j.close()
    j.close()
    with pytest.raises(JournalError, match="closed"):
        j.runs()


def test_a_write_interrupted_between_begin_and_its_end_does_not_block_later_writes(
        journal: Journal, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C raises KeyboardInterrupt wherever the main thread is: right after BEGIN, the
    transaction stayed open and every later write (the teardown's too) failed with
    "cannot start a transaction within a transaction"."""
    run = journal.start_run(snakemake_version="9", plugin_version="0", settings={})
    real = journal.db.execute

    def interrupted(sql, *args, **kwargs):
        result = real(sql, *args, **kwargs)
        if sql == "BEGIN IMMEDIATE":
            raise KeyboardInterrupt  # as a signal lands after the statement ran
        return result

    monkeypatch.setattr(journal.db, "execute", interrupted)
    with pytest.raises(KeyboardInterrupt):
        journal.end_run(run, outcome="interrupted")
    monkeypatch.setattr(journal.db, "execute", real)
    assert not journal.db.conn.in_transaction
    journal.end_run(run, outcome="interrupted")  # the next write goes through
    assert next(r for r in journal.runs() if r["id"] == run)["outcome"] == "interrupted"


def test_a_transaction_left_open_by_a_crashed_writer_is_rolled_back_first(
        journal: Journal) -> None:
    run = journal.start_run(snakemake_version="9", plugin_version="0", settings={})
    journal.db.execute("BEGIN IMMEDIATE")  # what an interrupted write could leave behind
    journal.end_run(run, outcome="finished")
    assert not journal.db.conn.in_transaction
    assert next(r for r in journal.runs() if r["id"] == run)["outcome"] == "finished"
