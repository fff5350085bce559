"""One Snakemake run: the composition root of its parts, and its beginning and end.

The executor (``__init__.py``) creates a :class:`Run` when Snakemake starts it.
The run owns the journal, the API client, the SSH key and the status watcher,
and builds from them the narrow ports each job step sees (``ports.py``: the
offer market, the instances port, the job's own spec, a transport). A job's
driver never reaches back into the run. The run also keeps the lease alive,
settles what earlier runs left (``recovery.py``), and at its end tears down
what it still holds and sweeps strays.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..journal.store import Journal
from ..lifecycle import instance_life
from ..lifecycle.driver import JobDriver, build_machine
from ..lifecycle.job_machine import JobState
from ..lifecycle.models import JobModel
from ..lifecycle.outcomes import crash_point
from ..lifecycle.ports import JobPorts
from ..settings import RunSettings
from ..transports import Transport
from ..transports.ssh.channels import Endpoint
from ..transports.ssh.session import RemoteSession
from ..transports.ssh.transport import SshTransport, ssh_endpoint
from ..transports.storage.setup import StorageSetup
from ..transports.storage.transport import StorageTransport
from ..vastai.api import VastAPI
from ..vastai.instances import Instances
from ..vastai.market import OfferMarket
from ..watchdog.feeder import HeartbeatFeeder, keep_warm_command
from ..workflow import payload
from ..workflow.jobspec import JobSpec, Workspace
from ..workflow.rule_settings import JobSettings, container_of, job_settings, runtime_cap_origin
from . import fingerprint as fingerprints
from . import listing
from . import liveness as leases
from .keys import RunKey
from .logs import SECRETS, PluginLogger
from .pool import Pool, WarmInstance
from .recovery import Recovery, scheduled_fingerprints
from .teardown import Teardown
from .verdict import final_states, verdict
from .watcher import InstanceWatcher
from .work_ahead import jobs_ahead, work_ahead

LOG_DIR = Path(".snakemake/auxiliary/vastai-logs")
# Seconds a teardown may take before it gives up, leaving the instance journaled as pending
# and the run failing with the cleanup command (the environment variable is for tests).
CANCEL_WAIT = float(os.environ.get("SNAKEMAKE_VASTAI_CANCEL_WAIT") or 300.0)


@dataclass(frozen=True)
class SnakemakeHooks:
    """What the run needs from the executor object Snakemake created."""

    job_command: Callable[[Any], str]
    declared_envvars: Callable[[], Mapping[str, str]]
    write_source_archive: Callable[[Path], None] | None
    snakemake_version: str
    storage: StorageSetup | None = None  # storage mode (see storage.py), else SSH mode
    credential_env: Mapping[str, str] = field(default_factory=dict)  # e.g. Google creds
    uses_conda: bool = False  # --software-deployment-method conda
    workdir_rel: str = ""  # the working directory below the sources' root (sources.Layout)
    # The DAG's unfinished jobs that need to run (work_ahead.py); None: cannot tell.
    needrun_jobs: Callable[[], Iterable[Any]] | None = None


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
        self.api = VastAPI(api_key, settings.api_url, on_retry=self._api_retry,
                           on_wait=self._api_wait)
        self.teardown = Teardown(self.api, self.journal, self.log)
        self.key_dir = workdir / ".snakemake" / "vastai" / "keys"
        self.key = RunKey.load_or_create(self.key_dir, self.run_id)
        self.watcher = InstanceWatcher(self.api, self.journal.label_prefix,
                                       settings.status_interval, on_error=self._watch_error)
        # The narrow ports every job step sees (ports.py), instead of this object.
        self.market = OfferMarket(self.api, self.journal, settings.offer_settings,
                                  run_id=self.run_id, max_spend=settings.max_spend)
        self.instances = Instances(self.api, self.watcher, self.teardown, self.key,
                                   teardown_wait=CANCEL_WAIT)
        self.workspace = Workspace(
            workdir=workdir, job_command=hooks.job_command,
            declared_envvars=hooks.declared_envvars, snakemake_version=hooks.snakemake_version,
            forward_credentials=settings.forward_credentials,
            credential_env=hooks.credential_env, write_source_archive=hooks.write_source_archive,
            uses_conda=hooks.uses_conda, workdir_rel=hooks.workdir_rel,
            archive_path=workdir / ".snakemake" / "vastai" / f"sources-{self.run_id}.tar.xz")
        self.machine = build_machine()
        self.storage = hooks.storage
        # Warm instances (SSH mode): idle instances serve later jobs; 0 s idle = no reuse.
        self.pool = Pool(self.journal, self._destroy_idle, log,
                         idle_timeout=settings.idle_timeout,
                         enabled=settings.reuse and settings.idle_timeout > 0
                         and hooks.storage is None and not settings.keep_instances,
                         work_ahead=work_ahead(hooks.needrun_jobs, self.running_jobs),
                         on_idle=self.market.vacancies.notify,
                         on_gone=lambda offer: self.market.release(int(offer["id"])),
                         hand_over=self._hand_over if settings.keep_warm > 0 else None)
        self.market.own_offers = self.held_offers
        self.drivers: dict[str, JobDriver] = {}
        self.recovery = Recovery(self.journal, self.api, run_id=self.run_id, log=log,
                                 key_dir=self.key_dir, close_old_job=self.close_old_job,
                                 destroy_untracked=self.destroy_untracked,
                                 adopt_kept=self._adopt_kept,
                                 policy=settings.on_restart,
                                 resume_gone=lambda: self.storage is not None)
        self.broken_jobs = 0  # job threads that ended by an internal error (torn down)
        self.balance_before: float | None = None  # account credit at start (ledger.py)
        self._lock = threading.Lock()
        self._closed = False
        self.watcher.start()
        # The instance-side watchdogs' heartbeat (SSH mode; see watchdog/feeder.py).
        self.feeder = (HeartbeatFeeder(settings.orphan_timeout, ssh_timeout=settings.ssh_timeout,
                                       log=self.log.debug, still_ours=self._still_ours)
                       if settings.orphan_timeout > 0 and hooks.storage is None else None)
        if self.feeder is not None:
            self.feeder.start()
        self._beating = threading.Event()
        self._beat_thread = threading.Thread(target=self._heartbeat, name="vastai-heartbeat",
                                             daemon=True)
        self._beat_thread.start()
        atexit.register(self._at_exit)

    def _still_ours(self, instance_id: int) -> bool:
        """Not yet known destroyed (the heartbeat feeder's filter)."""
        row = self.journal.instance_row(instance_id=instance_id)
        return row is not None and row.get("destroyed_at") is None

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
                                      log_path=str(log_path), fingerprint_parts=parts,
                                      detail=submit_detail(job))
        own = self.job_settings(job, rule)
        spec = JobSpec(self.workspace, job, rule=rule, fingerprint=fp, log_path=str(log_path),
                       image=own.image, max_runtime=own.max_runtime,
                       max_runtime_origin=runtime_cap_origin(self.settings.max_runtime,
                                                             dict(job.resources)),
                       offer_settings=own.offer)
        model = JobModel(job_id=job_id, ports=self.ports_for(spec), snakemake_job=job,
                         rule=rule, attempt=job.attempt, fingerprint=fp,
                         log_path=str(log_path), claim=self.recovery.claim(fp),
                         interruptible=self.interruptible(job, rule))
        if model.claim is not None:
            self.recovery.resumed += 1
        self.log.info("job submitted", job=job_id, rule=rule, attempt=job.attempt,
                      resuming=model.claim.job["id"] if model.claim else None)
        self._start(model, JobState.SEARCHING)
        return model

    def running_jobs(self) -> list[Any]:
        """The Snakemake jobs this run's drivers are still working on, less those waiting
        for an offer: an idle instance may be just what they wait for."""
        with self._lock:
            drivers = list(self.drivers.values())
        return [d.m.snakemake_job for d in drivers
                if d.m.snakemake_job is not None and not d.done.is_set()
                and d.m.state is not JobState.WAITING]

    def held_offers(self) -> list[dict]:
        """The offers of every instance this run holds: idle in the pool, or held by a job
        (a job that re-attached to an earlier run's instance knows only its journaled facts:
        GPU, count, price, machine, region)."""
        with self._lock:
            holding = [d.m for d in self.drivers.values()
                       if not d.done.is_set() and d.m.instance_id is not None]
        facts = {row["label"]: row for row in self.journal.instances()} \
            if any(m.offer is None for m in holding) else {}
        held = [m.offer if m.offer is not None else facts.get(m.label or "", {})
                for m in holding]
        return [*self.pool.idle_offers(), *(o for o in held if o)]

    def queue_share(self) -> float:
        """Jobs still to come per instance of this run, at least 1: the work an idle
        instance may expect if kept (costs/warm.worth_keeping). 1 when the DAG cannot be read."""
        needrun = self.hooks.needrun_jobs
        if needrun is None:
            return 1.0
        try:
            ahead = jobs_ahead(list(needrun()), self.running_jobs())
        except Exception:  # read from another thread: a set may change size mid-read
            return 1.0
        with self._lock:
            holding = sum(1 for d in self.drivers.values()
                          if not d.done.is_set() and d.m.instance_id is not None)
        return max(1.0, (ahead + 1) / max(1, holding + self.pool.idle_count()))

    def interruptible(self, job: Any, rule: str) -> bool:
        """Bid instances for this job (bids.py); a group bids only if all its rules do."""
        members = list(job.jobs) if job.is_group() else [job]
        return all(self.settings.bids.interruptible(str(m.rule.name), dict(m.resources))
                   for m in members)

    def job_settings(self, job: Any, rule: str) -> JobSettings:
        """The run's settings with the job's rule overrides (see rule_settings.py)."""
        return job_settings(image=self.settings.image, max_runtime=self.settings.max_runtime,
                            offer=self.settings.offer_settings, resources=dict(job.resources),
                            rule=rule, container_url=container_of(job))

    def ports_for(self, spec: JobSpec) -> JobPorts:
        """What the job's steps may touch (see ports.py)."""
        return JobPorts(run_id=self.run_id, journal=self.journal, market=self.market,
                        instances=self.instances, spec=spec, settings=self.settings,
                        log=self.log, transport=self._transport, on_end=self.job_ended,
                        pool=self.pool, queue_share=self.queue_share, feeder=self.feeder)

    def _transport(self, driver: JobDriver) -> Transport:
        """Storage mode when Snakemake has a default storage provider, else SSH mode."""
        if self.storage is not None:
            return StorageTransport(driver, self.storage)
        return SshTransport(driver)

    def _start(self, model: JobModel, state: JobState) -> JobDriver:
        self.machine.add_model(model, initial=state)
        driver = JobDriver(model, self.machine)
        with self._lock:
            self.drivers[model.job_id] = driver
        driver.start()
        return driver

    def close_old_job(self, row: dict, instance_id: int | None, label: str | None) -> None:
        """Drive an earlier run's unfinished job to cancelled, destroying its instance."""
        log_path = str(row.get("log_path") or "")
        spec = JobSpec(self.workspace, None, rule=row["rule"], fingerprint=row["fingerprint"],
                       log_path=log_path, image=self.settings.image,
                       max_runtime=self.settings.max_runtime)
        model = JobModel(job_id=row["id"], ports=self.ports_for(spec), snakemake_job=None,
                         rule=row["rule"], attempt=int(row.get("attempt") or 1),
                         fingerprint=row["fingerprint"], log_path=log_path,
                         cancel_requested=True, instance_id=instance_id, label=label)
        self._start(model, JobState(row["state"]))

    def destroy_untracked(self, instance_id: int, label: str | None = None,
                          stray: dict | None = None, reason: str = "") -> None:
        """Tear down an instance no job of this run drives (in the background)."""
        self.instances.destroy_in_background(instance_id, label=label, stray=stray,
                                             reason=reason)

    # -- keep-warm: idle instances outlive the run (--vastai-keep-warm) ----------------------
    def _hand_over(self, warm: WarmInstance) -> bool:
        """The run ends: set the instance's heartbeat so that its watchdog finds it stale
        when the keep-warm window closes, then journal it kept for the next run. False
        (it is torn down instead) when either fails: nothing may outlive the run unwatched."""
        try:
            with RemoteSession.connect(warm.endpoint, self.key.pkey,
                                       pinned_host_key=self.journal.pinned_host_key(
                                           warm.instance_id),
                                       timeout=self.settings.ssh_timeout) as session:
                done = session.run(keep_warm_command(self.settings.keep_warm),
                                   timeout=self.settings.ssh_timeout)
            if done.rc != 0:
                raise RuntimeError(f"exit {done.rc}")
            crash_point("after_keep_warm_write")  # the window is on the instance only
            # what the next run's pool matches jobs against, as this run's pool knew it
            instance_life.fire(self.journal, warm.label, "kept_warm",
                               detail={"keep_warm": self.settings.keep_warm,
                                       "offer": warm.offer, "image": warm.image,
                                       "disk_gb": warm.disk_gb})
        except Exception as exc:
            self.log.warning("could not keep the idle instance warm; tearing it down",
                             instance=warm.instance_id, error=f"{type(exc).__name__}: {exc}")
            return False
        if self.feeder is not None:
            self.feeder.forget(warm.instance_id)
        self.log.info("idle instance kept warm for the next run", instance=warm.instance_id,
                      seconds=self.settings.keep_warm)
        return True

    def _adopt_kept(self, row: dict, listed: dict) -> bool:
        """An earlier run's kept instance, alive: into this run's pool (the take-over is
        journaled already), with this run's key attached and its heartbeat fed."""
        if not self.pool.enabled or row.get("state") != "kept" \
                or listed.get("actual_status") != "running" \
                or kept_facts(self.journal.instance_history(row["label"])) is None:
            return False
        endpoint = ssh_endpoint(listed) or (
            Endpoint(str(row["ssh_host"]), int(row["ssh_port"])) if row.get("ssh_host") else None)
        if endpoint is None:
            return False
        iid = int(listed["id"])
        try:
            self.instances.attach_key(iid)
            crash_point("adopting")  # taken over (claimed_by), still kept
            instance_life.fire(self.journal, row["label"], "adopted", idle_since=time.time(),
                               detail={"from_run": row.get("run_id")})
            crash_point("after_adopted")  # idle in the journal, in no pool, not fed
        except Exception as exc:
            self.log.warning("could not adopt a kept instance; tearing it down", instance=iid,
                             error=f"{type(exc).__name__}: {exc}")
            return False
        kept = kept_facts(self.journal.instance_history(row["label"]))
        warm = WarmInstance(label=row["label"], instance_id=iid, offer=kept["offer"],
                            image=str(kept["image"]), disk_gb=float(kept["disk_gb"]),
                            endpoint=endpoint)
        self.pool.adopt(warm)
        if self.feeder is not None:
            self.feeder.note(iid, endpoint, self.key.pkey, row.get("host_key"))
        self.log.info("adopted an instance kept warm by an earlier run", instance=iid,
                      label=row["label"])
        return True

    def _destroy_idle(self, instance_id: int, label: str) -> None:
        """An instance of the pool (expired, or refused when given back): the one
        teardown, in the background."""
        self.instances.destroy_in_background(instance_id, label=label)

    def job_ended(self, model: JobModel) -> None:
        """Called by a driver thread when its job ended: in a terminal state, or in
        another when its loop broke (the journal refused a transition; the driver tore
        its instance down outside the machine)."""
        with self._lock:
            if not model.state.is_terminal:
                self.broken_jobs += 1
        self.machine.remove_model(model)
        # Its machine may be rented again by a later job, unless the instance serves on in
        # the warm pool: the offer stays the run's until the pool lets it go.
        if model.offer is not None and not (model.label and self.pool.holds(model.label)):
            self.market.release(int(model.offer["id"]))
        level = "info" if model.state is JobState.SUCCEEDED else "warning"
        first_line = model.failure.splitlines()[0] if model.failure else None
        getattr(self.log, level)(f"job {model.state.value}", job=model.job_id, rule=model.rule,
                                 state=model.state.value, instance=model.instance_id,
                                 error=first_line)

    # -- logs ------------------------------------------------------------------------
    def _log_path(self, job: Any, rule: str) -> Path:
        directory = self.workdir / LOG_DIR
        directory.mkdir(parents=True, exist_ok=True)
        return directory / f"{rule}.job{job.jobid}.attempt{job.attempt}.log"

    def _heartbeat(self) -> None:
        """Keep the run's lease fresh (leases.py): other runs leave a beating run alone."""
        while True:
            with contextlib.suppress(Exception):  # best effort: a locked journal, say
                self.journal.heartbeat(self.run_id)
            if self._beating.wait(leases.HEARTBEAT_EVERY):
                return

    def _api_retry(self, endpoint: str, reason: str, delay: float) -> None:
        self.log.info("API retry", endpoint=endpoint, reason=reason, wait=round(delay, 2),
                      verbose=True)

    def _api_wait(self, endpoint: str, waited: float, interval: float) -> None:
        self.log.info("API wait: calls queue for Vast.ai's per-endpoint rate limit (not an "
                      "error)", endpoint=endpoint, waited=round(waited, 1),
                      interval=round(interval, 2))

    def _watch_error(self, exc: Exception) -> None:
        self.log.warning("instance listing failed; retrying next tick",
                         error=f"{type(exc).__name__}: {exc}")

    # -- the end -----------------------------------------------------------------------
    def finish(self) -> None:
        """The scheduler is done: destroy unclaimed leftovers, wait for every job, sweep."""
        self.recovery.release_unclaimed()
        self.pool.drain("the run ended", keep=True)
        self.cancel_all()
        self.instances.join(CANCEL_WAIT)
        self.sweep()
        self._retry_pending()

    def _retry_pending(self) -> None:
        """Destroys that timed out earlier (a short API outage): one more try each, now."""
        pending = dict(self.teardown.pending)
        if not pending or self.settings.keep_instances:
            return
        self.teardown.give_up.clear()
        deadline = time.monotonic() + min(CANCEL_WAIT, 60.0)
        for iid, label in pending.items():
            self.teardown.destroy(iid, label=label or None, deadline=deadline)

    def sweep(self) -> None:
        """End of run: strays carrying this run's labels (an instance a lost create answer
        made, found after its job moved on) are torn down; so are unknown labels."""
        if self.settings.keep_instances:
            return
        try:
            found = self.api.list_instances(self.journal.label_prefix)
        except Exception as exc:  # a garbled answer too: the run must still close
            self.log.warning("end-of-run listing failed; strays, if any, are found by the "
                             "next run or 'journal cleanup'", error=str(exc))
            return
        rows = self.journal.instances()  # read after the listing: see recovery.py
        owners = self.journal.instance_owner_runs()
        runs = {run["id"]: run for run in self.journal.runs()}
        for stray in listing.match(rows, found, self.journal.label_prefix).strays:
            if not stray.known:  # reported by the reconcile; another directory's maybe
                continue
            owner = runs.get(owners.get(stray.label, ""))
            if owner is None or owner["id"] == self.run_id or leases.is_provably_dead(owner):
                self.destroy_untracked(stray.instance_id, stray=stray.listed,
                                       reason=stray.reason)
        self.instances.join(CANCEL_WAIT)

    def cancel_all(self, wait: float = CANCEL_WAIT) -> None:
        """Cancel every job and wait until each has destroyed what it rented; past ``wait``
        the teardowns still running give up and their instances stay pending."""
        self.pool.drain("the run was stopped")
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
            self.instances.join(120.0)  # idle warm instances go in background teardowns
            self.close("interrupted")

    def close(self, outcome: str) -> str | None:
        """End the run: stop the watcher, journal the outcome, print the summary. Returns
        the error for instances not confirmed destroyed (the run must then fail)."""
        if self._closed:
            return None
        self._closed = True
        self.watcher.stop()
        if self.feeder is not None:
            self.feeder.stop()
        self._beating.set()
        pending = self.teardown.pending_message()
        if pending:
            outcome = f"{outcome}; teardown pending"
        self._record_balance_after()
        try:
            self.journal.end_run(self.run_id, outcome)
        except Exception as exc:  # the summary and the pending message still matter
            self.log.warning("could not journal the run's end", error=str(exc))
        self.log.info(self.summary(outcome))
        if pending:
            self.log.error(pending)
        self.log.close()
        return pending

    def record_balance_before(self, user: Any) -> None:
        """The account credit as the run starts (from the access check's answer)."""
        self.balance_before = account_credit(user)
        if self.balance_before is not None:
            self.journal.record_balance(self.run_id, before=self.balance_before)

    def _record_balance_after(self) -> None:
        """The credit once every instance is gone: before minus after is what Vast.ai
        billed this run (shown by ``journal cost`` beside the ledger's own total)."""
        if self.balance_before is None:
            return
        try:
            after = account_credit(self.api.check_access())
            if after is not None:
                self.journal.record_balance(self.run_id, after=after)
        except Exception as exc:  # the run's end must not fail on a courtesy figure
            self.log.warning("could not read the account balance at the end",
                             error=str(exc))

    def summary(self, outcome: str = "finished") -> str:
        """One line: how the run ended (``verdict.py``: failures first), jobs by outcome,
        instances rented/resumed, instance-hours, dollars."""
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
        if self.watcher.failures:
            unconfirmed += f", {self.watcher.failures} instance listings failed"
        preempted = sum(m.preemptions for m in models)  # bid instances outbid (bids.py)
        if preempted:
            unconfirmed += f", {preempted} preemptions"
        if self.teardown.journal_failures:
            unconfirmed += (f", {self.teardown.journal_failures} journal writes failed during "
                            "teardown")
        warm = (f", {self.pool.leases} boots avoided (warm instances)"
                if self.pool.enabled else "")
        if self.pool.kept:
            warm += (f", {self.pool.kept} kept warm for {self.settings.keep_warm:g}s "
                     "(--vastai-keep-warm)")
        ended = verdict(outcome, final_states(
            {"id": m.job_id, "snakemake_jobid": getattr(m.snakemake_job, "jobid", None),
             "attempt": m.attempt, "state": m.state.value} for m in models))
        return (f"run summary: {ended}; {len(models)} jobs ({parts or 'none'}){broken}, "
                f"{len(labels) - resumed} instances rented, {resumed} resumed{warm}, "
                f"{seconds / 3600:.4f} instance-hours, ${dollars:.4f}{unconfirmed}")


def account_credit(user: Any) -> float | None:
    """The spendable credit in a ``users/current`` answer (``credit``, else ``balance``)."""
    if not isinstance(user, dict):
        return None
    for key in ("credit", "balance"):
        try:
            if user.get(key) is not None:
                return float(user[key])
        except (TypeError, ValueError):
            continue
    return None


def submit_detail(job: Any) -> dict | None:
    """What the journal's submit row says about a group job: its members."""
    members = payload.group_members(job)
    return {"group": str(job.groupid), "members": members} if members else None


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
        "bids": {"rules": sorted(settings.bids.rules), "all_rules": settings.bids.all_rules,
                 "factor": settings.bids.factor, "grace": settings.bids.grace,
                 "fallback_after": settings.bids.fallback_after,
                 "fallback": settings.bids.fallback},
        "reuse": settings.reuse, "idle_timeout": settings.idle_timeout,
        "offer_wait": settings.offer_wait,
    }


def kept_facts(history: list[dict]) -> dict | None:
    """The offer, image and disk a kept instance was handed over with (its ``kept_warm``
    move's detail), or None when the journal does not have them."""
    for move in reversed(history):
        if move.get("trigger") != "kept_warm":
            continue
        try:
            detail = json.loads(move.get("detail") or "{}")
        except (TypeError, ValueError):
            return None
        if isinstance(detail, dict) and {"offer", "image", "disk_gb"} <= set(detail):
            return detail
        return None
    return None
