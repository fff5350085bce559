"""End to end: the money-safety defects of issue 12, each through the real snakemake CLI.

One test per way the promise "never billing in the dark" was broken; each fails on the
code before the fix. Every test ends with the simulator holding no live instance.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.harness.e2e import (
    alive,
    run_snakemake,
    sim_env,
    snakemake_argv,
    wait_for,
    write_workflow,
)

pytestmark = pytest.mark.e2e

ONE_JOB = {"Snakefile": 'rule one:\n    output: "one.txt"\n    shell: "echo ok > {output}"\n'}


def journal_rows(workdir: Path, sql: str) -> list[tuple]:
    path = workdir / ".snakemake" / "vastai" / "journal.sqlite"
    if not path.exists():
        return []
    with sqlite3.connect(path, timeout=30) as db:
        return db.execute(sql).fetchall()


def job_in_state(workdir: Path, state: str) -> bool:
    try:
        return bool(journal_rows(workdir, f"select 1 from jobs where state = '{state}'"))
    except sqlite3.Error:
        return False


def start(workdir: Path, url: str, key: str, *extra: str, env: dict | None = None,
          jobs: int = 4) -> subprocess.Popen:
    return subprocess.Popen(snakemake_argv(url, *extra, jobs=jobs), cwd=workdir,
                            env=env or sim_env(key), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def kill_hard(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)


def unlock(workdir: Path) -> None:
    subprocess.run([sys.executable, "-m", "snakemake", "--unlock"], cwd=workdir,
                   capture_output=True, timeout=120, check=True)


# -- 1. a lost create answer ----------------------------------------------------------------
@pytest.mark.parametrize("mode", ["reset", "truncate", "html", "garbage"])
def test_a_lost_create_answer_rents_once_and_leaks_nothing(tmp_path, simulator, mode):
    simulator.add_fault("answer_lost", endpoint="PUT */asks/*", count=1, mode=mode)
    wf = write_workflow(tmp_path / "wf", ONE_JOB)
    result = run_snakemake(wf, simulator.url, simulator.api_key)
    assert result.returncode == 0, result.stderr[-4000:]
    truth = simulator.truth()
    assert truth["rejected"]["answer_lost"] == 1
    assert truth["created_count"] == 1  # the retry adopted it by label, no second rent
    assert journal_rows(wf, "select count(*) from instances where instance_id is not null") \
        == [(1,)]
    assert alive(truth) == []


def test_a_lost_destroy_answer_is_confirmed_and_the_run_succeeds(tmp_path, simulator):
    simulator.add_fault("answer_lost", endpoint="DELETE */instances/*", count=1, mode="reset")
    wf = write_workflow(tmp_path / "wf", ONE_JOB)
    result = run_snakemake(wf, simulator.url, simulator.api_key)
    assert result.returncode == 0, result.stderr[-4000:]
    truth = simulator.truth()
    assert truth["rejected"]["answer_lost"] == 1
    assert alive(truth) == []
    assert journal_rows(wf, "select count(*) from instances where destroyed_at is null") \
        == [(0,)]


def test_duplicates_under_one_label_are_found_and_destroyed_by_the_next_run(tmp_path,
                                                                            simulator):
    """Two instances carry one label (a create retried after a lost answer, in an older
    version): the journal knows one; the next run must destroy the other."""
    wf = write_workflow(tmp_path / "wf", ONE_JOB)
    assert run_snakemake(wf, simulator.url, simulator.api_key).returncode == 0
    label = journal_rows(wf, "select label from instances")[0][0]
    extra = simulator.create_foreign_instance(label=label)  # same label, not journaled
    (wf / "one.txt").unlink()
    result = run_snakemake(wf, simulator.url, simulator.api_key)
    assert result.returncode == 0, result.stderr[-4000:]
    truth = simulator.truth()
    assert not [i for i in truth["instances"] if i["id"] == extra and i["alive"]]
    assert journal_rows(wf, f"select reason is not null, destroyed_at is not null from strays "
                            f"where instance_id = {extra}") == [(1, 1)]
    assert [i for i in truth["instances"] if i["alive"]] == []


# -- 2. a crash while destroying ----------------------------------------------------------------
def test_a_crash_while_destroying_is_finished_by_the_next_run(tmp_path, simulator):
    simulator.add_fault("api_status", code=500, endpoint="DELETE *")
    wf = write_workflow(tmp_path / "wf", ONE_JOB)
    proc = start(wf, simulator.url, simulator.api_key)
    assert wait_for(lambda: job_in_state(wf, "destroying"), timeout=240)
    time.sleep(1.0)  # a destroy or two refused
    kill_hard(proc)
    assert len(alive(simulator.truth())) == 1
    simulator.clear_faults()
    unlock(wf)
    result = run_snakemake(wf, simulator.url, simulator.api_key, "--rerun-incomplete")
    assert result.returncode == 0, result.stderr[-4000:]
    assert alive(simulator.truth()) == []
    assert journal_rows(wf, "select state from jobs order by created_at") [0] == ("cancelled",)


def test_a_destroy_never_confirmed_fails_the_run_naming_ids_and_the_command(tmp_path,
                                                                           simulator):
    """Destroys keep failing past the run's wait: the job's result is kept, the run exits
    non-zero naming the instance and the cleanup command, the journal keeps it pending."""
    simulator.add_fault("api_status", code=503, endpoint="DELETE *")
    wf = write_workflow(tmp_path / "wf", ONE_JOB)
    env = sim_env(simulator.api_key, SNAKEMAKE_VASTAI_CANCEL_WAIT="3")
    result = run_snakemake(wf, simulator.url, simulator.api_key, env=env)
    assert result.returncode != 0
    iid = alive(simulator.truth())[0]["id"]
    assert f"did not confirm instance(s) {iid} destroyed" in result.stderr
    # the documented console script, or the spelling of it that runs as printed
    assert re.search(r"(snakemake-vastai|-m snakemake_executor_plugin_vastai) journal cleanup'",
                     result.stderr), result.stderr[-3000:]
    assert (wf / "one.txt").read_text() == "ok\n"  # the finished result is not thrown away
    assert journal_rows(wf, "select destroy_requested_at is not null, destroyed_at from "
                            "instances") == [(1, None)]
    # the pending destroy is the instance's; the job itself ended (it used to stay in
    # destroying, a state that is not terminal)
    assert journal_rows(wf, "select state from jobs") == [("succeeded",)]
    assert journal_rows(wf, "select state from instances") == [("destroying",)]
    simulator.clear_faults()
    cleanup = subprocess.run(
        [sys.executable, "-m", "snakemake_executor_plugin_vastai", "journal", "cleanup", "--yes",
         "--api-url", simulator.url], cwd=wf, env=sim_env(simulator.api_key),
        capture_output=True, text=True, timeout=240)
    assert cleanup.returncode == 0, cleanup.stderr
    assert alive(simulator.truth()) == []


# -- 4. a failing journal write ----------------------------------------------------------------
def test_a_journal_locked_by_another_process_still_destroys_the_instance(tmp_path, simulator):
    wf = write_workflow(tmp_path / "wf", {
        "Snakefile": 'rule one:\n    output: "one.txt"\n    shell: "sleep 4; echo ok > {output}"\n',
    })
    env = sim_env(simulator.api_key, SNAKEMAKE_VASTAI_JOURNAL_BUSY_TIMEOUT="1")
    proc = start(wf, simulator.url, simulator.api_key, env=env)
    assert wait_for(lambda: job_in_state(wf, "running"), timeout=240)
    released = threading.Event()

    def hold_lock() -> None:  # another process's long write transaction
        db = sqlite3.connect(wf / ".snakemake/vastai/journal.sqlite", isolation_level=None)
        db.execute("BEGIN EXCLUSIVE")
        time.sleep(10)
        db.execute("ROLLBACK")
        db.close()
        released.set()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    out, _ = proc.communicate(timeout=240)
    holder.join()
    assert proc.returncode != 0  # the job could not be journaled: it fails, visibly
    assert "journal" in out.lower()
    assert alive(simulator.truth()) == []  # but nothing bills on


# -- 5. a malformed listing ---------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["truncate", "html", "garbage"])
def test_malformed_listings_do_not_stop_status_tracking(tmp_path, simulator, mode):
    simulator.add_fault("answer_lost", endpoint="GET /api/v1/instances*", count=4, mode=mode)
    wf = write_workflow(tmp_path / "wf", ONE_JOB)
    result = run_snakemake(wf, simulator.url, simulator.api_key, "--vastai-boot-timeout", "60",
                           timeout=200)
    assert result.returncode == 0, result.stderr[-4000:]
    truth = simulator.truth()
    assert truth["rejected"]["answer_lost"] == 4
    assert alive(truth) == []


# -- 6. resume must not return the old code's result ----------------------------------------------
def test_a_changed_script_is_not_reattached_after_a_crash(tmp_path, simulator):
    wf = write_workflow(tmp_path / "wf", {
        "Snakefile": 'rule make:\n    output: "out.txt"\n    script: "scripts/make.py"\n',
        "scripts/make.py": "import time\ntime.sleep(5)\n"
                           "open(snakemake.output[0], 'w').write('v1\\n')\n",
    }, track=["Snakefile", "scripts"])
    proc = start(wf, simulator.url, simulator.api_key)
    assert wait_for(lambda: job_in_state(wf, "running"), timeout=240)
    kill_hard(proc)
    assert len(alive(simulator.truth())) == 1
    (wf / "scripts/make.py").write_text("open(snakemake.output[0], 'w').write('v2\\n')\n")
    unlock(wf)
    result = run_snakemake(wf, simulator.url, simulator.api_key, "--rerun-incomplete")
    assert result.returncode == 0, result.stderr[-4000:]
    assert (wf / "out.txt").read_text() == "v2\n"
    assert "not re-attaching" in result.stderr and "script or run: code" in result.stderr
    truth = simulator.truth()
    assert truth["created_count"] == 2
    assert alive(truth) == []


def test_a_changed_config_is_not_reattached_after_a_crash(tmp_path, simulator):
    wf = write_workflow(tmp_path / "wf", {
        "Snakefile": 'configfile: "config.yaml"\n'
                     'rule make:\n    output: "out.txt"\n    script: "make.py"\n',
        "make.py": "import time\ntime.sleep(5)\n"
                   "open(snakemake.output[0], 'w').write(snakemake.config['word'] + '\\n')\n",
        "config.yaml": "word: old\n",
    }, track=["Snakefile", "make.py", "config.yaml"])
    proc = start(wf, simulator.url, simulator.api_key)
    assert wait_for(lambda: job_in_state(wf, "running"), timeout=240)
    kill_hard(proc)
    (wf / "config.yaml").write_text("word: new\n")
    unlock(wf)
    result = run_snakemake(wf, simulator.url, simulator.api_key, "--rerun-incomplete")
    assert result.returncode == 0, result.stderr[-4000:]
    assert (wf / "out.txt").read_text() == "new\n"
    assert "changed=config" in result.stderr
    assert alive(simulator.truth()) == []


def test_outputs_home_before_a_journal_failure_are_kept_and_reported_done(tmp_path,
                                                                          simulator):
    """The download finished, then the journal refused the next transition: the job's
    result is home and must not be reported failed (Snakemake would delete it)."""
    size = 40_000_000
    wf = write_workflow(tmp_path / "wf", {
        "Snakefile": f'rule big:\n    output: "big.bin"\n'
                     f'    shell: "head -c {size} /dev/zero > {{output}}"\n',
    })
    env = sim_env(simulator.api_key, SNAKEMAKE_VASTAI_JOURNAL_BUSY_TIMEOUT="1")
    proc = start(wf, simulator.url, simulator.api_key, env=env, jobs=1)
    assert wait_for(lambda: job_in_state(wf, "downloading"), timeout=180, interval=0.02)
    db = sqlite3.connect(wf / ".snakemake/vastai/journal.sqlite", isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")
    assert wait_for(lambda: (wf / "big.bin").exists() and (wf / "big.bin").stat().st_size
                    == size, timeout=120, interval=0.02)
    time.sleep(3)  # the downloading -> destroying transition meets the lock
    db.execute("ROLLBACK")
    db.close()
    out, _ = proc.communicate(timeout=240)
    assert "Removing output files of failed job" not in out
    assert (wf / "big.bin").stat().st_size == size
    assert alive(simulator.truth()) == []


# -- 7. secrets inside exception texts -------------------------------------------------------------
def test_a_malformed_key_is_refused_before_anything_and_never_printed(tmp_path, simulator):
    first, second = simulator.api_key, "tail-of-the-key-0123456789abcdef"
    wf = write_workflow(tmp_path / "wf", ONE_JOB)
    env = sim_env(f"{first}\n{second}")
    result = run_snakemake(wf, simulator.url, simulator.api_key, env=env)
    assert result.returncode != 0
    assert "VAST_API_KEY" in result.stderr and "whitespace" in result.stderr
    assert simulator.truth()["created_count"] == 0
    files = [p for p in (wf / ".snakemake").rglob("*") if p.is_file()]
    for secret in (first, second, repr(f"{first}\n{second}")[1:-1]):
        assert secret not in result.stdout + result.stderr
        for path in files:
            assert secret.encode() not in path.read_bytes(), path
    assert alive(simulator.truth()) == []


def test_every_sink_masks_a_secret_quoted_by_an_exception(tmp_path):
    """In process: an exception whose text quotes the key (escaped, as requests renders a
    bad header) reaches the terminal, the events file and the journal masked."""
    import logging

    from snakemake_executor_plugin_vastai.journal.store import Journal
    from snakemake_executor_plugin_vastai.run.logs import PluginLogger
    from snakemake_executor_plugin_vastai.run.redaction import SECRETS

    key = "k3y-" + "9f8e7d6c5b4a" * 4
    SECRETS.add([key + "\n"])
    records: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    base = logging.getLogger("test-sinks")
    base.addHandler(Capture())
    base.setLevel(logging.DEBUG)
    log = PluginLogger(base)
    log.open_events(tmp_path / "events.jsonl")
    quoted = repr(f"Bearer {key}\n")
    try:
        raise ValueError(f"Invalid header value {quoted}")
    except ValueError as exc:
        log.exception("request failed", error=str(exc))
        message = f"internal error: {exc!r}"
    log.close()
    journal = Journal.for_workdir(tmp_path)
    run = journal.start_run(snakemake_version="9", plugin_version="0", settings={})
    job = journal.add_job(run_id=run, rule="r", snakemake_jobid=1, fingerprint="f",
                          attempt=1, state="searching")
    journal.update_job(job, last_error=message)
    journal.transition(job, source="searching", dest="renting", trigger="t", detail=message)
    journal.close()
    texts = ["\n".join(records), (tmp_path / "events.jsonl").read_text(),
             (tmp_path / ".snakemake/vastai/journal.sqlite").read_bytes().decode("latin-1")]
    assert "Invalid header value" in texts[0] and "***" in texts[0]
    assert json.loads(texts[1].splitlines()[0])["event"] == "request failed"
    for text in texts:
        assert key not in text
