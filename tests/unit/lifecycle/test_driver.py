"""The driver's steps in process, against the simulator, without a Snakemake subprocess.

A job step sees narrow ports (ports.py); here they are built from a real API
client, journal, watcher, teardown and SSH transport, with a job that stands in
for Snakemake's (the attributes the spec reads). The simulator is the edge.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from snakemake_executor_plugin_vastai.journal.store import Journal
from snakemake_executor_plugin_vastai.lifecycle.driver import JobDriver, build_machine
from snakemake_executor_plugin_vastai.lifecycle.job_machine import JobState
from snakemake_executor_plugin_vastai.lifecycle.models import JobModel
from snakemake_executor_plugin_vastai.lifecycle.outcomes import command_exit_code
from snakemake_executor_plugin_vastai.lifecycle.ports import JobPorts
from snakemake_executor_plugin_vastai.run.keys import RunKey
from snakemake_executor_plugin_vastai.run.logs import PluginLogger
from snakemake_executor_plugin_vastai.run.teardown import Teardown
from snakemake_executor_plugin_vastai.run.watcher import InstanceWatcher
from snakemake_executor_plugin_vastai.settings import RunSettings
from snakemake_executor_plugin_vastai.transports.ssh.transport import SshTransport
from snakemake_executor_plugin_vastai.vastai.api import VastAPI
from snakemake_executor_plugin_vastai.vastai.instances import Instances
from snakemake_executor_plugin_vastai.vastai.market import OfferMarket
from snakemake_executor_plugin_vastai.vastai.offers import OfferSettings
from snakemake_executor_plugin_vastai.workflow.jobspec import JobSpec, Workspace
from tests.harness.e2e import alive


@dataclass
class StandInJob:
    """What the job spec reads of Snakemake's job."""

    command: str
    input: list[str] = field(default_factory=list)
    output: list[str] = field(default_factory=lambda: ["out.txt"])
    log: list[str] = field(default_factory=list)
    benchmark: str | None = None
    resources: dict = field(default_factory=lambda: {"gpu": 1})
    threads: int = 1


@dataclass
class Rig:
    journal: Journal
    model: JobModel
    driver: JobDriver
    watcher: InstanceWatcher

    def run(self, timeout: float = 120) -> JobModel:
        self.driver.start()
        assert self.driver.done.wait(timeout), f"job stuck in {self.model.state}"
        self.watcher.stop()
        return self.model


def rig(sim, tmp_path: Path, command: str, *, teardown_wait: float = 60,
        max_runtime: float = 0.0, model_class: type[JobModel] = JobModel,
        keep_instances: bool = False) -> Rig:
    api = VastAPI(sim.api_key, sim.url, retry_budget=30, request_timeout=5)
    journal = Journal.for_workdir(tmp_path)
    run_id = journal.start_run(snakemake_version="", plugin_version="test", settings={})
    log = PluginLogger(logging.getLogger("test-driver"))
    watcher = InstanceWatcher(api, journal.label_prefix, 0.2)
    watcher.start()
    key = RunKey.load_or_create(tmp_path / "keys", run_id)
    offers = OfferSettings(reliability=0)
    settings = RunSettings(api_url=sim.url, image="img", disk=10, boot_timeout=60,
                           keep_instances=keep_instances, forward_credentials=False,
                           status_interval=0.2, offline_grace=5, offer_settings=offers)
    workspace = Workspace(workdir=tmp_path, job_command=lambda job: job.command,
                          declared_envvars=dict, snakemake_version="")
    job = StandInJob(command)
    job_id = journal.add_job(run_id=run_id, rule="r", snakemake_jobid=1, fingerprint="f",
                             attempt=1, state="searching")
    spec = JobSpec(workspace, job, rule="r", fingerprint="f",
                   log_path=str(tmp_path / "r.log"), image="img", max_runtime=max_runtime)
    ports = JobPorts(run_id=run_id, journal=journal,
                     market=OfferMarket(api, journal, offers, run_id=run_id),
                     instances=Instances(api, watcher, Teardown(api, journal, log), key,
                                         teardown_wait=teardown_wait),
                     spec=spec, settings=settings, log=log, transport=SshTransport)
    model = model_class(job_id=job_id, ports=ports, snakemake_job=job, rule="r", attempt=1,
                        fingerprint="f", log_path=spec.log_path)
    machine = build_machine()
    machine.add_model(model, initial=JobState.SEARCHING)
    return Rig(journal, model, JobDriver(model, machine), watcher)


def states(journal: Journal, job_id: str) -> list[str]:
    return [row["to_state"] for row in journal.transitions_of(job_id)]


def test_a_job_runs_through_every_ssh_state_and_comes_home(tmp_path, simulator):
    r = rig(simulator, tmp_path, "echo hello > out.txt")
    model = r.run()
    assert model.state is JobState.SUCCEEDED, model.failure
    assert (tmp_path / "out.txt").read_text() == "hello\n"
    assert states(r.journal, model.job_id) == [
        "searching", "renting", "booting", "uploading", "running", "downloading",
        "destroying", "succeeded"]
    assert alive(simulator.truth()) == []


def test_a_failing_command_fails_the_job_and_still_destroys(tmp_path, simulator):
    r = rig(simulator, tmp_path, "echo broken >&2; exit 4")
    model = r.run()
    assert model.state is JobState.FAILED
    assert "exited with code 4" in model.failure and "broken" in model.failure
    assert not (tmp_path / "out.txt").exists()
    assert alive(simulator.truth()) == []


@pytest.mark.parametrize("mode", ["reset", "html"])
def test_a_lost_create_answer_is_adopted_not_rented_twice(tmp_path, simulator, mode):
    simulator.add_fault("answer_lost", endpoint="PUT */asks/*", count=1, mode=mode)
    r = rig(simulator, tmp_path, "echo once > out.txt")
    model = r.run()
    assert model.state is JobState.SUCCEEDED, model.failure
    truth = simulator.truth()
    assert truth["created_count"] == 1
    assert alive(truth) == []


def test_a_journal_that_stops_working_mid_job_still_tears_the_instance_down(tmp_path,
                                                                             simulator):
    r = rig(simulator, tmp_path, "sleep 3; echo late > out.txt")
    r.driver.start()
    assert _wait(lambda: r.model.state is JobState.RUNNING, 60)
    r.journal.close()  # every later write raises JournalError
    assert r.driver.done.wait(60)
    r.watcher.stop()
    # the loop broke: the job stays where the journal could last follow it (the run counts
    # that as broken), its instance torn down outside the machine, nothing left pending
    assert not r.model.state.is_terminal and "internal error" in r.model.failure
    assert r.model.ports.instances.teardown.pending_ids() == []
    assert alive(simulator.truth()) == []


@pytest.mark.parametrize(("command", "outcome"), [
    ("echo ok > out.txt", JobState.SUCCEEDED),
    ("exit 3", JobState.FAILED),
])
def test_a_destroy_never_confirmed_still_ends_the_job_in_its_terminal_state(
        tmp_path, simulator, command, outcome):
    """Vast.ai refuses every destroy past the teardown wait: the job ends all the same, in
    its own outcome (a job used to stop in destroying, which is not terminal), and the
    instance, not the job, keeps the pending destroy: listed by the teardown, its journal
    row destroying with no destroyed_at, for the run's last try."""
    simulator.add_fault("api_status", code=503, endpoint="DELETE *")
    r = rig(simulator, tmp_path, command, teardown_wait=2)
    model = r.run()
    assert model.state is outcome, model.failure
    job = r.journal.job(model.job_id)
    assert job["state"] == outcome.value and job["ended_at"] is not None
    last = r.journal.transitions_of(model.job_id)[-1]
    assert (last["from_state"], last["trigger"]) == ("destroying", "destroy_unconfirmed")
    teardown = model.ports.instances.teardown
    assert teardown.pending_ids() == [model.instance_id]
    [instance] = r.journal.instances()
    assert instance["state"] == "destroying" and instance["destroyed_at"] is None
    assert instance["destroy_requested_at"] is not None
    simulator.clear_faults()  # the run's last act: one more try
    assert teardown.destroy(model.instance_id, label=model.label)
    assert alive(simulator.truth()) == []


class WatchedModel(JobModel):
    """A job model that notes which thread writes which field, once the job runs."""

    watching = False

    def __setattr__(self, name, value):
        if type(self).watching:
            WRITES.append((threading.current_thread().name, name))
        super().__setattr__(name, value)


WRITES: list[tuple[str, str]] = []


def test_only_the_job_thread_writes_the_model_even_when_the_runtime_cap_fires(tmp_path,
                                                                             simulator):
    """The runtime cap's timer (SSH mode) used to set a flag on the job model from its own
    thread; now it sets an event on the transport, and the job's thread fails the job."""
    WRITES.clear()
    r = rig(simulator, tmp_path, "sleep 60", max_runtime=3, model_class=WatchedModel)
    WatchedModel.watching = True
    try:
        model = r.run()
    finally:
        WatchedModel.watching = False
    assert model.state is JobState.FAILED
    assert "ran longer than" in model.failure
    writers = {thread for thread, _ in WRITES}
    assert writers == {r.driver.thread.name}, [w for w in WRITES if w[0] != r.driver.thread.name]
    assert r.driver.transport.time_up.is_set()
    assert alive(simulator.truth()) == []


def _wait(predicate, timeout: float) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("bulk_refused", [False, True])
def test_destroys_that_meet_go_out_in_one_bulk_request(tmp_path, simulator, bulk_refused):
    """Six teardowns at once (a Ctrl-C): one request in flight, the rest together; a
    service that refuses the bulk endpoint gets single requests instead."""
    import threading

    from tests.simulator.helpers import rent, sdk

    api = VastAPI(simulator.api_key, simulator.url, retry_budget=30, request_timeout=5)
    ids = [rent(sdk(simulator), label=f"bulk-{n}") for n in range(6)]
    simulator.add_fault("api_latency", seconds=0.5, endpoint="DELETE *")
    if bulk_refused:
        simulator.add_fault("api_status", code=405, endpoint="DELETE /api/v0/instances/")
    teardown = Teardown(api, None, PluginLogger(logging.getLogger("test-bulk")))
    results: dict[int, bool] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, teardown.destroy(i)))
               for i in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == dict.fromkeys(ids, True)
    requests = simulator.truth()["requests"]
    single = requests.get("DELETE /api/v0/instances/{id}/", 0)
    bulk = requests.get("DELETE /api/v0/instances/", 0)
    if bulk_refused:
        assert bulk == 1 and single >= len(ids), requests
    else:
        assert bulk >= 1 and single + bulk <= 3, requests
    assert [i for i in simulator.truth()["instances"] if i["alive"]] == []


def test_the_log_tail_is_the_jobs_own_output_not_the_remote_snakemakes_report(tmp_path):
    """Twenty lines of the remote Snakemake's error report used to push out the line where
    the job said why it failed."""
    from snakemake_executor_plugin_vastai.lifecycle.outcomes import log_tail

    report = ["[Sun Dec  6 16:38:31 2026]", "Error in rule bad:", "    message: None",
              "    shell:", "        python train.py", "        (command exited with "
              "non-zero exit code)", "Shutting down, this might take some time."] * 4
    log = tmp_path / "job.log"
    log.write_text("\n".join(["loading data", "RuntimeError: CUDA out of memory", *report]))
    tail = log_tail(str(log))
    assert tail.endswith("RuntimeError: CUDA out of memory")
    assert "Error in rule" not in tail


def test_the_commands_own_exit_code_is_read_from_the_remote_log(tmp_path):
    """The remote Snakemake exits 1 for any failed rule; its log names the command's code."""
    log = tmp_path / "job.log"
    log.write_text("boom\nRuleException:\nCalledProcessError in file \"Snakefile\", line 3:\n"
                   "Command 'set -euo pipefail;  exit 3' returned non-zero exit status 3.\n"
                   "Error in rule boom:\n")
    assert command_exit_code(str(log), 1) == 3
    log.write_text("MissingOutputException: the rule made no out.txt\n")
    assert command_exit_code(str(log), 1) == 1  # no command status: the process's own
    assert command_exit_code(str(tmp_path / "absent.log"), 1) == 1


def test_a_kept_instance_is_announced_with_ssh_and_cleanup_commands_that_work(
        tmp_path, simulator, caplog):
    """--vastai-keep-instances: the warning says how to log in and how to end the bill,
    and both commands work (the login with options that only make it non-interactive)."""
    caplog.set_level(logging.WARNING, logger="test-driver")
    r = rig(simulator, tmp_path, "echo kept > out.txt", keep_instances=True)
    model = r.run()
    assert model.state is JobState.SUCCEEDED, model.failure
    assert [i["id"] for i in alive(simulator.truth())] == [model.instance_id]
    [said] = [rec.getMessage() for rec in caplog.records if "keeping instance" in rec.getMessage()]
    login = re.search(r"^ +log in: +(ssh .+)$", said, re.MULTILINE).group(1).split()
    quiet = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
             "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]
    inside = subprocess.run([login[0], *quiet, *login[1:], f"cat {model.work_dir}/out.txt"],
                            capture_output=True, text=True, timeout=60)
    assert inside.returncode == 0 and inside.stdout == "kept\n", inside.stderr
    cleanup = re.search(r"^ +destroy it: +(.+)$", said, re.MULTILINE).group(1)
    r.journal.end_run(model.ports.run_id, "finished")  # as snakemake does when it exits
    env = {**os.environ, "VAST_API_KEY": simulator.api_key, "VAST_URL": simulator.url}
    done = subprocess.run(cleanup, shell=True, input="y\n", capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert alive(simulator.truth()) == []
