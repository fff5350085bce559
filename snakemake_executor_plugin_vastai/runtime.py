"""One Snakemake run's shared parts: journal, API, SSH key, watcher, job registry.

The executor (``__init__.py``) creates a :class:`Run` when Snakemake starts it
and hands each job to a :class:`~.driver.JobDriver`. Everything a job step
needs beyond its own model lives here: the offer claims shared between jobs
(so concurrent jobs do not all race for the same cheapest offer), the run's
source archive (built once), the per-job log files, and the cleanup that
destroys whatever the run still holds when Snakemake stops.
"""

from __future__ import annotations

import atexit
import os
import shlex
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import fingerprint as fingerprints
from . import leases, listing, payload
from .driver import JobDriver, JobModel, build_machine
from .journal import Journal
from .keys import RunKey
from .logs import SECRETS, PluginLogger
from .machine import JobState
from .offers import OfferRequest, OfferSettings, build_offer_request
from .recovery import Recovery, scheduled_fingerprints
from .storage import StorageSetup, container_args, exit_token
from .teardown import Teardown
from .vast import VastAPI, VastError
from .watcher import InstanceWatcher

LOG_DIR = Path(".snakemake/auxiliary/vastai-logs")
LOG_LINES = 20000  # lines of an instance log fetched when a storage-mode job ends
# Seconds a teardown may take before it gives up, leaving the instance journaled as pending
# and the run failing with the cleanup command (the environment variable is for tests).
CANCEL_WAIT = float(os.environ.get("SNAKEMAKE_VASTAI_CANCEL_WAIT") or 300.0)


@dataclass(frozen=True)
class RunSettings:
    """Resolved executor settings (the API key is held by VastAPI, not here)."""

    api_url: str
    image: str
    disk: float
    boot_timeout: float
    keep_instances: bool
    forward_credentials: bool
    status_interval: float
    offline_grace: float
    offer_settings: OfferSettings
    ssh_timeout: float = 20.0
    max_download_bytes: int | None = None
    on_restart: str = "resume"
    max_spend: float | None = None
    max_runtime: float = 0.0  # seconds a storage-mode job may run; 0 = no cap


@dataclass(frozen=True)
class SnakemakeHooks:
    """What the run needs from the executor object Snakemake created."""

    job_command: Callable[[Any], str]
    declared_envvars: Callable[[], Mapping[str, str]]
    write_source_archive: Callable[[Path], None] | None
    snakemake_version: str
    storage: StorageSetup | None = None  # storage mode (see storage.py), else SSH mode
    credential_env: Mapping[str, str] = field(default_factory=dict)  # e.g. Google creds


class Run:
    """Shared state of one ``snakemake --executor vastai`` run."""

    def __init__(self, *, workdir: Path, settings: RunSettings, api_key: str,
                 hooks: SnakemakeHooks, log: PluginLogger, journal: Journal | None = None,
                 plugin_version: str = "0") -> None:
        self.workdir = workdir
        self.settings = settings
        self.hooks = hooks
        self.log = log
        SECRETS.add([api_key])
        self.journal = journal or Journal.for_workdir(workdir)
        self.run_id = self.journal.start_run(
            snakemake_version=hooks.snakemake_version, plugin_version=plugin_version,
            settings=public_settings(settings), pid_started_at=leases.process_start_time())
        self.events_path = workdir / ".snakemake" / "vastai" / "logs" / f"{self.run_id}.jsonl"
        self.log.open_events(self.events_path)
        self.api = VastAPI(api_key, settings.api_url, on_retry=self._api_retry)
        self.teardown = Teardown(self.api, self.journal, self.log)
        self.teardown_wait = CANCEL_WAIT
        self.key_dir = workdir / ".snakemake" / "vastai" / "keys"
        self.key = RunKey.load_or_create(self.key_dir, self.run_id)
        self.watcher = InstanceWatcher(self.api, self.journal.label_prefix,
                                       settings.status_interval, on_error=self._watch_error)
        self.machine = build_machine()
        self.remote_dir = payload.REMOTE_DIR
        self.storage = hooks.storage
        self.drivers: dict[str, JobDriver] = {}
        self.recovery = Recovery(self, settings.on_restart)
        self._untracked: list[threading.Thread] = []
        self.broken_jobs = 0  # job threads that ended by an internal error (torn down)
        self._claims: set[int] = set()
        self._lock = threading.Lock()
        self._archive: Path | None = None
        self._archive_lock = threading.Lock()
        self._log_files: dict[str, Any] = {}
        self._closed = False
        self.watcher.start()
        atexit.register(self._at_exit)

    # -- jobs ---------------------------------------------------------------------
    def fingerprint_parts(self, job: Any) -> dict[str, str]:
        """The job's identity across runs, as named parts (see fingerprint.py)."""
        return fingerprints.job_parts(job, self.workdir, self.settings.image)

    def fingerprint(self, job: Any) -> str:
        return fingerprints.combine(self.fingerprint_parts(job))

    def reconcile(self, workflow: Any) -> None:
        """Before renting anything: settle what earlier runs left (see recovery.py)."""
        scheduled = scheduled_fingerprints(workflow, self.workdir, self.fingerprint_parts)
        self.recovery.reconcile(scheduled)

    def submit(self, job: Any) -> JobModel:
        """Journal a new job and start its driver thread (re-attaching if it can)."""
        rule = job_rule(job)
        parts = self.fingerprint_parts(job)
        fp = fingerprints.combine(parts)
        log_path = self._log_path(job, rule)
        job_id = self.journal.add_job(run_id=self.run_id, rule=rule,
                                      snakemake_jobid=job.jobid, fingerprint=fp,
                                      attempt=job.attempt, state=JobState.SEARCHING.value,
                                      log_path=str(log_path), fingerprint_parts=parts)
        model = JobModel(job_id=job_id, run=self, snakemake_job=job, rule=rule,
                         attempt=job.attempt, fingerprint=fp, log_path=str(log_path),
                         claim=self.recovery.claim(fp), storage=self.storage is not None)
        if model.claim is not None:
            self.recovery.resumed += 1
        self.log.info("job submitted", job=job_id, rule=rule, attempt=job.attempt,
                      resuming=model.claim.job["id"] if model.claim else None)
        self._start(model, JobState.SEARCHING)
        return model

    def _start(self, model: JobModel, state: JobState) -> JobDriver:
        self.machine.add_model(model, initial=state)
        driver = JobDriver(model, self.machine)
        with self._lock:
            self.drivers[model.job_id] = driver
        driver.start()
        return driver

    def close_old_job(self, row: dict, instance_id: int | None, label: str | None) -> None:
        """Drive an earlier run's unfinished job to cancelled, destroying its instance."""
        model = JobModel(job_id=row["id"], run=self, snakemake_job=None, rule=row["rule"],
                         attempt=int(row.get("attempt") or 1), fingerprint=row["fingerprint"],
                         log_path=str(row.get("log_path") or ""), cancel_requested=True,
                         instance_id=instance_id, label=label)
        self._start(model, JobState(row["state"]))

    def destroy_untracked(self, instance_id: int, label: str | None = None,
                          stray: dict | None = None, reason: str = "") -> None:
        """Tear down an instance no job of this run drives (in the background)."""

        def destroy() -> None:
            if stray is not None:
                self.teardown.destroy_stray(stray, reason)
            else:
                self.teardown.destroy(instance_id, label=label)

        thread = threading.Thread(target=destroy, name=f"vastai-destroy-{instance_id}",
                                  daemon=True)
        self._untracked.append(thread)
        thread.start()

    def job_ended(self, model: JobModel) -> None:
        """Called by a driver thread when its job reached a terminal state."""
        with self._lock:
            handle = self._log_files.pop(model.job_id, None)
            if model.broken:
                self.broken_jobs += 1
        if handle is not None:
            handle.close()
        self.machine.remove_model(model)
        if model.offer is not None:  # its machine may be rented again by a later job
            self.release_offer(int(model.offer["id"]))
        level = "info" if model.state is JobState.SUCCEEDED else "warning"
        first_line = model.failure.splitlines()[0] if model.failure else None
        getattr(self.log, level)(f"job {model.state.value}", job=model.job_id, rule=model.rule,
                                 state=model.state.value, instance=model.instance_id,
                                 error=first_line)

    # -- offers --------------------------------------------------------------------
    def offer_request(self, model: JobModel) -> OfferRequest:
        job = model.snakemake_job
        excluded = self.journal.failed_machines(model.fingerprint)
        return build_offer_request(self.settings.offer_settings, dict(job.resources),
                                   int(job.threads or 1), rule=model.rule,
                                   exclude_machines=excluded)

    def spend_cap_reached(self) -> str | None:
        """A message once --vastai-max-spend is used up by this run's instances."""
        cap = self.settings.max_spend
        if cap is None:
            return None
        _seconds, spent = self.journal.run_cost(self.run_id)
        if spent < cap:
            return None
        return (f"--vastai-max-spend of ${cap:g} reached (this run's instances cost "
                f"${spent:.4f}); no new instance is rented, running jobs finish")

    def claim_offer(self, offer_id: int) -> bool:
        """Reserve an offer for one job of this run; False if another job has it."""
        with self._lock:
            if offer_id in self._claims:
                return False
            self._claims.add(offer_id)
            return True

    def offer_claimed(self, offer_id: int) -> bool:
        with self._lock:
            return offer_id in self._claims

    def claimed_count(self) -> int:
        with self._lock:
            return len(self._claims)

    def release_offer(self, offer_id: int) -> None:
        with self._lock:
            self._claims.discard(offer_id)

    def create_instance(self, offer: dict, label: str, model: JobModel) -> int:
        request = self.offer_request(model)
        if self.storage is not None:
            # The container runs the job; credentials travel in its environment.
            return self.api.create_instance(
                int(offer["id"]), image=self.settings.image, disk_gb=request.storage_gb,
                label=label, env=self.job_environment(model), runtype="args",
                args=self.container_args(model, label))
        return self.api.create_instance(
            int(offer["id"]), image=self.settings.image, disk_gb=request.storage_gb,
            label=label, onstart=self.onstart_script(),
            runtype="ssh_direc ssh_proxy")

    def onstart_script(self) -> str:
        """Authorise our run key and keep Vast.ai's auto-tmux out of our SSH sessions."""
        key = shlex.quote(self.key.public_line)
        return ("mkdir -p ~/.ssh && chmod 700 ~/.ssh && "
                f"echo {key} >> ~/.ssh/authorized_keys && chmod 600 ~/.ssh/authorized_keys && "
                "touch ~/.no_auto_tmux")

    def attach_key(self, instance_id: int) -> None:
        self.api.attach_ssh_key(instance_id, self.key.public_line)

    # -- what travels ----------------------------------------------------------------
    def source_archive(self) -> Path | None:
        """The workflow's source archive, built once per run (Snakemake's own format)."""
        if self.hooks.write_source_archive is None:
            return None
        with self._archive_lock:
            if self._archive is None:
                target = self.workdir / ".snakemake" / "vastai" / f"sources-{self.run_id}.tar.xz"
                target.parent.mkdir(parents=True, exist_ok=True)
                self.hooks.write_source_archive(target)
                self._archive = target
            return self._archive

    def shipment(self, model: JobModel) -> payload.Shipment:
        return payload.shipment(model.snakemake_job.input, self.workdir, model.rule,
                                self.source_archive())

    def homecoming(self, model: JobModel, *, succeeded: bool) -> payload.Homecoming:
        job = model.snakemake_job
        return payload.homecoming(job.output, job.log, getattr(job, "benchmark", None),
                                  self.workdir, model.rule, succeeded=succeeded)

    def job_command(self, model: JobModel) -> str:
        return payload.job_script(self.hooks.job_command(model.snakemake_job),
                                  self.hooks.snakemake_version)

    def container_args(self, model: JobModel, label: str) -> list[str]:
        """Storage mode: the container command that deploys the sources and runs the job."""
        assert self.storage is not None
        return container_args(job_command=self.hooks.job_command(model.snakemake_job),
                              deploy_command=self.storage.prepare_command(model.snakemake_job),
                              mode=self.storage.mode,
                              snakemake_version=self.hooks.snakemake_version,
                              job_dir=self.remote_dir, token=exit_token(label))

    def job_environment(self, model: JobModel) -> dict[str, str]:
        env = payload.forwarded_environment(
            os.environ, self.hooks.declared_envvars(),
            forward_credentials=self.settings.forward_credentials)
        if self.settings.forward_credentials:
            env.update(self.hooks.credential_env)
        SECRETS.add(env.values())
        return env

    # -- logs ------------------------------------------------------------------------
    def _log_path(self, job: Any, rule: str) -> Path:
        directory = self.workdir / LOG_DIR
        directory.mkdir(parents=True, exist_ok=True)
        return directory / f"{rule}.job{job.jobid}.attempt{job.attempt}.log"

    def append_job_log(self, model: JobModel, chunk: bytes) -> None:
        """Stream the remote job's output into its local log as it arrives."""
        with self._lock:
            handle = self._log_files.get(model.job_id)
            if handle is None:
                fd = os.open(model.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                handle = os.fdopen(fd, "ab", buffering=0)
                self._log_files[model.job_id] = handle
        handle.write(chunk)

    def write_job_log(self, model: JobModel, text: str) -> None:
        """Storage mode: the instance log, fetched whole at the end, is the job's log."""
        with self._lock:
            handle = self._log_files.pop(model.job_id, None)
        if handle is not None:
            handle.close()
        fd = os.open(model.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text if text.endswith("\n") or not text else text + "\n")

    # -- storage mode ------------------------------------------------------------------
    @property
    def output_check_interval(self) -> float:
        """How often a running storage-mode job's outputs are looked for in the bucket."""
        return max(3.0 * self.settings.status_interval, 1.0)

    @property
    def output_settle_seconds(self) -> float:
        """Outputs present but no exit line: how long to wait for the job's own end."""
        return max(10.0 * self.settings.status_interval, 5.0)

    def outputs_present(self, model: JobModel) -> bool:
        """True if the job has storage outputs and every one of them exists."""
        if self.storage is None or model.snakemake_job is None:
            return False
        try:
            return self.storage.outputs.all_present(model.snakemake_job.output) is True
        except Exception as exc:  # any provider error: not (yet) known to be there
            self.log.warning("cannot check the job's outputs in storage", job=model.job_id,
                             error=f"{type(exc).__name__}: {exc}")
            return False

    def instance_log(self, instance_id: int) -> str:
        return self.api.logs(instance_id, tail=LOG_LINES)

    def _api_retry(self, endpoint: str, reason: str, delay: float) -> None:
        self.log.info("API retry", endpoint=endpoint, reason=reason, wait=round(delay, 2),
                      verbose=True)

    def _watch_error(self, exc: Exception) -> None:
        self.log.warning("instance listing failed; retrying next tick",
                         error=f"{type(exc).__name__}: {exc}")

    # -- the end -----------------------------------------------------------------------
    def finish(self) -> None:
        """The scheduler is done: destroy unclaimed leftovers, wait for every job, sweep."""
        self.recovery.release_unclaimed()
        self.cancel_all()
        self._join_untracked(CANCEL_WAIT)
        self.sweep()

    def sweep(self) -> None:
        """End of run: strays carrying this run's labels (an instance a lost create answer
        made, found after its job moved on) are torn down; so are unknown labels."""
        if self.settings.keep_instances:
            return
        try:
            found = self.api.list_instances(self.journal.label_prefix)
        except VastError as exc:
            self.log.warning("end-of-run listing failed; strays, if any, are found by the "
                             "next run or 'journal cleanup'", error=str(exc))
            return
        rows = self.journal.instances()  # read after the listing: see recovery.py
        owners = self.journal.instance_owner_runs()
        runs = {run["id"]: run for run in self.journal.runs()}
        for stray in listing.match(rows, found, self.journal.label_prefix).strays:
            owner = runs.get(owners.get(stray.label, ""))
            if owner is None or owner["id"] == self.run_id or leases.is_provably_dead(owner):
                self.destroy_untracked(stray.instance_id, stray=stray.listed,
                                       reason=stray.reason)
        self._join_untracked(CANCEL_WAIT)

    def _join_untracked(self, wait: float) -> None:
        deadline = time.monotonic() + wait
        for thread in list(self._untracked):
            thread.join(timeout=max(deadline - time.monotonic(), 0.0))
        if any(t.is_alive() for t in self._untracked):
            self.teardown.give_up.set()

    def cancel_all(self, wait: float = CANCEL_WAIT) -> None:
        """Cancel every job and wait until each has destroyed what it rented; past ``wait``
        the teardowns still running give up and their instances stay pending."""
        with self._lock:
            drivers = list(self.drivers.values())
        for driver in drivers:
            if not driver.m.state.is_terminal:
                driver.cancel()
        deadline = time.monotonic() + wait
        for driver in drivers:
            driver.done.wait(max(deadline - time.monotonic(), 0.0))
        if not all(driver.done.is_set() for driver in drivers):
            self.teardown.give_up.set()
            for driver in drivers:
                driver.done.wait(5.0)

    def _at_exit(self) -> None:
        """Interpreter exit without a clean shutdown: still destroy what we hold."""
        if not self._closed:
            self.cancel_all(wait=120.0)
            self.close("interrupted")

    def close(self, outcome: str) -> str | None:
        """End the run: stop the watcher, journal the outcome, print the summary. Returns
        the error for instances not confirmed destroyed (the run must then fail)."""
        if self._closed:
            return None
        self._closed = True
        self.watcher.stop()
        pending = self.teardown.pending_message()
        if pending:
            outcome = f"{outcome}; teardown pending"
        try:
            self.journal.end_run(self.run_id, outcome)
        except Exception as exc:  # the summary and the pending message still matter
            self.log.warning("could not journal the run's end", error=str(exc))
        self.log.info(self.summary())
        if pending:
            self.log.error(pending)
        self.log.close()
        return pending

    def summary(self) -> str:
        """One line: jobs by outcome, instances rented/resumed, instance-hours, dollars."""
        with self._lock:
            models = [d.m for d in self.drivers.values() if d.m.snakemake_job is not None]
        states: dict[str, int] = {}
        for m in models:
            states[m.state.value] = states.get(m.state.value, 0) + 1
        labels = {m.label for m in models if m.label and m.instance_id is not None}
        resumed = self.recovery.resumed
        seconds = dollars = 0.0
        for label in labels:
            cost = self.journal.instance_cost(label)
            seconds, dollars = seconds + cost[0], dollars + cost[1]
        parts = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
        broken = (f", {self.broken_jobs} ended by an internal error (instances torn down)"
                  if self.broken_jobs else "")
        pending = self.teardown.pending_ids()
        unconfirmed = f", {len(pending)} destroy(s) not confirmed" if pending else ""
        return (f"run summary: {len(models)} jobs ({parts or 'none'}){broken}, "
                f"{len(labels) - resumed} instances rented, {resumed} resumed, "
                f"{seconds / 3600:.4f} instance-hours, ${dollars:.4f}{unconfirmed}")


def job_rule(job: Any) -> str:
    """A rule name for the job (group jobs are named after their group)."""
    if job.is_group():
        return f"group-{job.groupid}"
    return str(job.rule.name)


def public_settings(settings: RunSettings) -> dict:
    """Settings as journaled: no secrets live in RunSettings by construction."""
    offer = settings.offer_settings
    return {
        "api_url": settings.api_url, "image": settings.image, "disk": settings.disk,
        "boot_timeout": settings.boot_timeout, "keep_instances": settings.keep_instances,
        "forward_credentials": settings.forward_credentials,
        "gpu_name": offer.gpu_name, "max_price": offer.max_price,
        "geolocation": offer.geolocation, "reliability": offer.reliability,
        "allow_hobbyist": offer.allow_hobbyist, "order": offer.order,
        "search_query": offer.search_query, "on_restart": settings.on_restart,
        "max_spend": settings.max_spend, "max_runtime": settings.max_runtime,
    }
