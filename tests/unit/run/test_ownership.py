"""Run leases, the listing matcher and credential registration: the pure rules behind
reconcile, the end-of-run sweep and `journal cleanup` (end to end: test_e2e_concurrency)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from snakemake_executor_plugin_vastai.journal.store import Journal
from snakemake_executor_plugin_vastai.run import listing
from snakemake_executor_plugin_vastai.run import liveness as leases
from snakemake_executor_plugin_vastai.run.redaction import SECRETS, add_environment, scrub

HERE = leases.this_host()


def run_row(**over):
    row = {"id": "r1", "ended_at": None, "hostname": HERE, "pid": os.getpid(),
           "pid_started_at": leases.process_start_time(), "heartbeat_at": time.time(),
           "started_at": time.time()}
    row.update(over)
    return row


def test_this_process_is_alive_and_an_ended_run_is_dead():
    assert not leases.is_provably_dead(run_row())
    assert leases.is_live(run_row())
    assert leases.is_provably_dead(run_row(ended_at=time.time()))


def test_a_gone_pid_or_a_reused_one_is_dead():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert leases.is_provably_dead(run_row(pid=child.pid, pid_started_at=time.time() - 5))
    assert leases.is_provably_dead(run_row(pid_started_at=time.time() - 3600))  # pid reused


def test_another_host_is_alive_until_its_heartbeat_is_stale():
    fresh = run_row(hostname="elsewhere", pid=1)
    assert not leases.is_provably_dead(fresh)
    stale = run_row(hostname="elsewhere", pid=1,
                    heartbeat_at=time.time() - leases.STALE_AFTER - 1)
    assert leases.is_provably_dead(stale)


def test_a_run_from_before_leases_is_dead_once_its_pid_is_younger_than_it():
    legacy = run_row(pid_started_at=None, heartbeat_at=None)
    assert not leases.is_provably_dead(legacy)  # this process started before the run
    assert leases.is_provably_dead({**legacy, "started_at": time.time() - 10**6})


def test_the_matcher_tells_ours_duplicates_never_created_and_unknown_apart():
    rows = [
        {"label": "smk-a-1", "instance_id": 10, "destroyed_at": None},
        {"label": "smk-a-2", "instance_id": None, "destroyed_at": None},
        {"label": "smk-a-3", "instance_id": None, "destroyed_at": 1.0},
        {"label": "smk-a-4", "instance_id": 40, "destroyed_at": None},
    ]
    found = [
        {"id": 10, "label": "smk-a-1"}, {"id": 11, "label": "smk-a-1"},  # a duplicate
        {"id": 21, "label": "smk-a-2"}, {"id": 20, "label": "smk-a-2"},  # lost answer x2
        {"id": 30, "label": "smk-a-3"},  # appeared after being marked never created
        {"id": 50, "label": "smk-a-9"},  # not in this journal
        {"id": 60, "label": "someone-else"},  # not ours at all
    ]
    matched = listing.match(rows, found, "smk-a-")
    assert {label: listed["id"] for label, (_, listed) in matched.alive.items()} == {
        "smk-a-1": 10, "smk-a-2": 20}
    assert [row["label"] for row in matched.gone] == ["smk-a-4"]
    strays = {s.instance_id: s.known for s in matched.strays}
    assert strays == {11: True, 21: True, 30: True, 50: False}


def test_only_credential_like_and_declared_variables_become_secrets():
    SECRETS.clear()
    add_environment({"AWS_SECRET_ACCESS_KEY": "abcdefgh12345678", "AWS_DEFAULT_OUTPUT": "json",
                     "AWS_EC2_METADATA_DISABLED": "true", "MY_VAR": "declared-value-1"},
                    declared=["MY_VAR"])
    text = scrub('{"keep": true, "out": "json", "k": "abcdefgh12345678", "v": "declared-value-1"}')
    assert text == '{"keep": true, "out": "json", "k": "***", "v": "***"}'
    SECRETS.clear()


def test_take_over_lets_exactly_one_live_run_own_a_dead_runs_instance(tmp_path):
    journal = Journal.for_workdir(tmp_path)
    dead = journal.start_run(snakemake_version="9", plugin_version="0", settings={})
    job = journal.add_job(run_id=dead, rule="r", snakemake_jobid=1, fingerprint="f",
                          attempt=1, state="searching")
    label = f"{journal.label_prefix}{job}"
    journal.record_rent_intent(job_id=job, run_id=dead, label=label, offer={"id": 1})
    journal.record_instance_created(label, 100)
    first = journal.start_run(snakemake_version="9", plugin_version="0", settings={})
    second = journal.start_run(snakemake_version="9", plugin_version="0", settings={})
    assert journal.take_over(label, first, from_runs={dead})
    assert not journal.take_over(label, second, from_runs={dead})
    assert journal.instance_owner_runs()[label] == first
    journal.close()
