"""Drives one job through the machine in ``machine.py``.

Each job runs in its own thread: look at the state, perform that state's side
effect (an API call, an SSH transfer), then fire the trigger the transition
table allows. The machine's ``before_state_change`` hook journals every
transition (a guarded update plus an append-only row) before the new state is
entered, and so before the new state's side effect runs. A crash therefore
always leaves a journal at least as far along as reality, and the instance
label is journaled before the create call so even an instance whose id never
reached the journal is found again.

Failures raise :class:`JobFailure` inside a step; the loop turns them into the
``fail`` trigger, which leads through ``destroying``. Transient trouble (API
throttling, SSH drops) is retried inside the step, with backoff, and shows in
the journal as ``retry`` transitions.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from transitions.extensions import LockedMachine

from .journal import JournalError
from .machine import JobState, machine_kwargs
from .offers import describe
from .recovery import resumable_state
from .remote import (
    AllowedPaths,
    Endpoint,
    HostKeyMismatch,
    RemoteError,
    RemoteSession,
    SSHUnavailable,
    UnsafeArchive,
)
from .storage import exit_code_from_log, exit_token
from .vast import CreateInDoubt, OfferGone, VastAuthError, VastError

if TYPE_CHECKING:
    from .runtime import Run

MAX_SEARCHES = 3  # searches after every candidate was taken, before giving up
CANDIDATES_PER_SEARCH = 5
MAX_EXTRA_OFFERS = 200  # offers asked for beyond the limit, to see past our own claims
SSH_RETRY_BUDGET = 180.0  # seconds of SSH trouble tolerated per step
LOG_WAIT_SECONDS = 120.0  # storage mode: how long an exited container's log is retried
# Pauses before each label lookup after a create whose answer was lost: the server may
# act after the client gave up waiting, so one empty listing is not proof.
DOUBT_LOOKUPS = (0.5, 2.0, 5.0)

# What a dying link can raise from deep inside paramiko when the adapter did not
# translate it: treated like SSHUnavailable (reconnect and retry within the budget).
LINK_ERRORS: tuple[type[BaseException], ...] = (EOFError, ConnectionError, TimeoutError)

# status_msg fragments that mean the instance will never boot (fail fast).
FATAL_BOOT_PATTERNS = re.compile(
    r"toomanyrequests|pull rate limit|manifest unknown|manifest for .* not found|"
    r"no space left on device|unauthorized|authentication required|pull access denied|"
    r"repository does not exist|invalid reference format|OCI runtime create failed|"
    r"error response from daemon",
    re.IGNORECASE,
)
BOOT_FAILED_STATUSES = frozenset({"exited", "stopped", "frozen"})
HEARTBEAT_LOST_STATUSES = frozenset({"offline", "unknown"})


CRASH_ENV = "SNAKEMAKE_VASTAI_CRASH_AT"
CRASH_POINTS = ("after_rent_intent", "after_create", "after_launch", "after_download",
                "after_destroy_request")


def crash_point(name: str) -> None:
    """Fault injection for the crash tests: SIGKILL ourselves at a named point.

    Inert unless ``SNAKEMAKE_VASTAI_CRASH_AT`` names this point. The points sit
    where a crash is hardest to survive, e.g. between the create request and
    the journal write of its answer.
    """
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


class JobFailure(Exception):
    """The job cannot succeed on this instance; the message is for the user."""


class JobCancelled(Exception):
    """Snakemake asked us to stop."""


@dataclass(eq=False)
class JobModel:
    """The per-job model the shared machine drives (``state`` is set by it)."""

    job_id: str
    run: Run = field(repr=False)
    snakemake_job: Any = field(repr=False)
    rule: str
    attempt: int
    fingerprint: str
    log_path: str
    state: JobState = JobState.SEARCHING
    candidates: list[dict] = field(default_factory=list)
    searches: int = 0
    label: str | None = None
    instance_id: int | None = None
    offer: dict | None = None
    endpoint: Endpoint | None = None
    exit_code: int | None = None
    remote_started: bool = False
    failure: str | None = None
    cancel_requested: bool = False
    log_offset: int = 0
    claim: Any = None  # recovery.Claim: an earlier run's live instance to re-attach to
    key: Any = None  # the SSH key for this job's instance (an earlier run's, on resume)
    storage: bool = False  # storage mode: data moves through a bucket, no SSH at all
    offline_since: float | None = None  # monotonic time the host's heartbeat was lost
    running_since: float | None = None  # monotonic time the job first entered running
    over_runtime: bool = False  # --vastai-max-runtime passed (SSH mode: set by a timer)
    teardown_pending: bool = False  # the run stopped waiting before the destroy was confirmed
    broken: bool = False  # the step loop broke (journal refused); torn down outside the machine
    outputs_home: bool = False  # exit 0 and every output downloaded (or in the bucket)
    destroy_deadline: float | None = None  # monotonic time the teardown gives up

    # -- conditions named in machine.TRANSITIONS ----------------------------------
    def remote_job_finished(self, event: Any = None) -> bool:
        return self.exit_code is not None

    def remote_job_started(self, event: Any = None) -> bool:
        return self.remote_started

    def was_cancelled(self, event: Any = None) -> bool:
        return self.cancel_requested and self.failure is None

    def has_failed(self, event: Any = None) -> bool:
        return self.failure is not None

    def in_storage_mode(self, event: Any = None) -> bool:
        return self.storage

    @property
    def work_succeeded(self) -> bool:
        """The job's own work is done and home, whatever became of its instance or the
        journal afterwards: reporting it failed would make Snakemake delete the outputs."""
        return self.state is JobState.SUCCEEDED or (self.outputs_home and self.exit_code == 0)

    # -- the journal hook -------------------------------------------------------
    def journal_transition(self, event: Any) -> None:
        """Write-ahead: commit the transition before the state (and its effect) begins."""
        source = JobState[event.transition.source].value
        dest = JobState[event.transition.dest].value
        self.run.journal.transition(
            self.job_id, source=source, dest=dest, trigger=event.event.name,
            detail=event.kwargs.get("detail"), **event.kwargs.get("fields", {}),
        )
        self.run.log.info("transition", job=self.job_id, rule=self.rule, state=dest,
                          source=source, trigger=event.event.name,
                          detail=event.kwargs.get("detail"), instance=self.instance_id,
                          verbose=True)


def build_machine() -> LockedMachine:
    """One machine for all jobs; each job is a model added at its current state."""
    return LockedMachine(model=None, send_event=True,
                         before_state_change="journal_transition", **machine_kwargs())


class JobDriver:
    """Runs one job's steps in a thread until a terminal state."""

    def __init__(self, model: JobModel, machine: LockedMachine) -> None:
        self.m = model
        self.run = model.run
        self.machine = machine
        self.session: RemoteSession | None = None
        self._session_lock = threading.Lock()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._main, name=f"vastai-job-{model.job_id}",
                                       daemon=True)

    # -- plumbing ---------------------------------------------------------------
    def log(self, level: str, event: str, **kw: Any) -> None:
        """Log with the job's identity, state and instance on every event."""
        getattr(self.run.log, level)(event, job=self.m.job_id, rule=self.m.rule,
                                     state=self.m.state.value, instance=self.m.instance_id,
                                     **kw)

    def start(self) -> None:
        self.thread.start()

    def fire(self, trigger: str, detail: Any = None, **fields: Any) -> None:
        getattr(self.m, trigger)(detail=detail, fields=fields)

    def cancel(self) -> None:
        """Ask the job to stop; interrupts blocking SSH reads."""
        self.m.cancel_requested = True
        self._drop_session()

    def interrupt(self) -> None:
        """Break a blocking SSH call so the step re-checks the instance."""
        self._drop_session()

    def check_cancel(self) -> None:
        if self.m.cancel_requested:
            raise JobCancelled()

    def _drop_session(self) -> None:
        with self._session_lock:
            session, self.session = self.session, None
        if session is not None:
            session.close()

    def _main(self) -> None:
        """Step until terminal. Whatever ends this thread, an instance it may hold is torn
        down (:meth:`_last_resort`): a job never stops billing in the dark."""
        try:
            while not self.m.state.is_terminal and not self.m.teardown_pending:
                self._step()
        except BaseException as exc:  # a journal that cannot be written, a bug
            self._last_resort(exc)
        finally:
            self._drop_session()
            if self.m.instance_id is not None:
                self.run.watcher.unwatch(self.m.instance_id)
            with contextlib.suppress(Exception):
                self.run.job_ended(self.m)
            self.done.set()

    def _last_resort(self, exc: BaseException) -> None:
        """The step loop broke (e.g. the journal refused a transition): tear the instance
        down outside the machine, journal writes best effort, and say so."""
        with contextlib.suppress(Exception):
            self.log("error", "job thread failed; tearing its instance down",
                     error=f"{type(exc).__name__}: {exc}")
        self.m.failure = self.m.failure or (
            f"rule {self.m.rule}: internal error in state {self.m.state.value}: "
            f"{type(exc).__name__}: {exc}")
        self.m.broken = True
        if self.m.instance_id is None and self.m.label is None:
            return
        if self.run.settings.keep_instances:
            return
        teardown = self.run.teardown
        deadline = time.monotonic() + self.run.teardown_wait
        if self.m.instance_id is not None:
            done = teardown.destroy(self.m.instance_id, label=self.m.label, deadline=deadline)
        else:
            teardown.destroy_label(self.m.label or "", deadline=deadline)
            done = self.m.label not in teardown.pending_labels
        self.m.teardown_pending = not done

    def _step(self) -> None:
        state = self.m.state
        if self.m.cancel_requested and state is not JobState.DESTROYING:
            self.fire("cancel", detail="cancelled")
            return
        try:
            STEPS[state](self)
        except JobCancelled:
            if state is not JobState.DESTROYING:
                self.fire("cancel", detail="cancelled by Snakemake")
        except JobFailure as exc:
            self._fail(state, str(exc))
        except JournalError:
            raise  # the machine cannot move on; _main tears down without it
        except VastError as exc:  # e.g. the API stayed unavailable: its message says what to do
            self._fail(state, f"rule {self.m.rule}: {exc}")
        except Exception as exc:  # a bug or an unforeseen answer: still clean up
            self.log("exception", "unexpected error")
            self._fail(state, f"internal error in state {state.value}: {exc!r}")

    def _fail(self, state: JobState, message: str) -> None:
        if state is JobState.DESTROYING:
            deadline = self.m.destroy_deadline
            if deadline is not None and time.monotonic() > deadline:
                self.m.teardown_pending = True  # the run reports it; the journal keeps it
                return
            time.sleep(1.0)  # the step is retried until its deadline
            return
        self.m.failure = message
        with contextlib.suppress(JournalError):  # the message also travels in the transition
            self.run.journal.update_job(self.m.job_id, last_error=message)
        self.fire("fail", detail=message)

    # -- searching ----------------------------------------------------------------
    def step_searching(self) -> None:
        self.check_cancel()
        if self.m.claim is not None:
            self.step_resuming()
            return
        capped = self.run.spend_cap_reached()
        if capped:
            raise JobFailure(f"rule {self.m.rule}: {capped}")
        request = self.run.offer_request(self.m)
        self.log("info", "searching offers", query=request.text, verbose=True)
        # Ask for enough offers to see past those this run's other jobs are renting.
        limit = request.limit + min(self.run.claimed_count(), MAX_EXTRA_OFFERS)
        found = self.run.api.search_offers(request.query, request.order, limit,
                                           request.storage_gb)
        offers = [o for o in found if not self.run.offer_claimed(int(o["id"]))]
        if not offers:
            if not found and self.m.searches == 0:
                raise JobFailure(f"rule {self.m.rule}: no Vast.ai offer matches "
                                 f"{describe(request)} (loosen the job's resources, "
                                 "--vastai-max-price, --vastai-gpu-name or "
                                 "--vastai-geolocation)")
            self._search_pause()
            return
        self.m.candidates = offers[:CANDIDATES_PER_SEARCH]
        self.fire("offers_found", detail={"candidates": len(self.m.candidates),
                                          "query": request.text})

    def _search_pause(self) -> None:
        if self.m.searches >= MAX_SEARCHES:
            raise JobFailure(f"rule {self.m.rule}: every matching offer was rented by someone "
                             f"else, {self.m.searches} searches in a row")
        time.sleep(min(2.0 ** self.m.searches, 10.0) * random.uniform(0.5, 1.0))
        self.m.searches += 1

    # -- resuming (an earlier run's instance) -------------------------------------------
    def step_resuming(self) -> None:
        """Re-attach to a live instance from an earlier run instead of renting anew."""
        claim, self.m.claim = self.m.claim, None
        self.m.instance_id = int(claim.instance["instance_id"])
        self.m.label = claim.instance["label"]
        self.m.key = claim.key
        self.m.endpoint = ssh_endpoint(claim.row)
        status = None
        if self.m.storage:
            status = storage_resume_status(claim.row)
        elif claim.key is not None and self.m.endpoint is not None \
                and claim.row.get("actual_status") == "running":
            try:
                status = self._with_ssh("re-attach", lambda s: s.job_status(self.run.remote_dir))
            except JobFailure as exc:
                self.log("warning", "cannot re-attach over SSH; booting it again",
                         error=str(exc))
        self.m.remote_started, self.m.exit_code = resumable_state(status)
        if self.m.storage:  # the exit code is read from the log once running
            self.m.remote_started, self.m.exit_code = status == "running", None
        if not self.m.remote_started:
            self.m.key = None  # the boot step authorises this run's key
        self.run.watcher.watch(self.m.instance_id)
        old = claim.job
        self.fire("resume", detail={"from_job": old["id"], "from_run": old["run_id"],
                                    "instance": self.m.instance_id, "remote": str(status)},
                  resumed_from=old["id"], label=self.m.label, instance_id=self.m.instance_id,
                  offer_id=old.get("offer_id"), machine_id=old.get("machine_id"),
                  gpu_name=old.get("gpu_name"), num_gpus=old.get("num_gpus"),
                  dph_total=old.get("dph_total"))

    # -- renting -------------------------------------------------------------------
    def step_renting(self) -> None:
        while self.m.candidates:
            self.check_cancel()
            capped = self.run.spend_cap_reached()
            if capped:
                raise JobFailure(f"rule {self.m.rule}: {capped}")
            offer = self.m.candidates.pop(0)
            if not self.run.claim_offer(int(offer["id"])):
                continue
            if self._rent(offer):
                return
            self.fire("offer_taken", detail={"offer": offer["id"]})
        self.m.searches += 1
        if self.m.searches > MAX_SEARCHES:
            raise JobFailure(f"rule {self.m.rule}: every candidate offer was taken by someone "
                             f"else ({MAX_SEARCHES} searches)")
        self.fire("search_again", detail="all candidates taken")

    def _rent(self, offer: dict) -> bool:
        """Create the instance (label journaled first). False if the offer is gone."""
        label = self.m.label or f"{self.run.journal.label_prefix}{self.m.job_id}"
        self.run.journal.record_rent_intent(job_id=self.m.job_id, run_id=self.run.run_id,
                                            label=label, offer=offer_facts(offer))
        self.m.label = label  # only once the intent is journaled (destroying looks it up)
        crash_point("after_rent_intent")
        try:
            instance_id = self.run.create_instance(offer, label, self.m)
        except OfferGone:
            self.run.release_offer(int(offer["id"]))
            return False
        except VastAuthError as exc:
            raise JobFailure(str(exc)) from None
        except CreateInDoubt as exc:
            found = self._resolve_doubt(label, exc)
            if not found:
                return False
            instance_id = int(found[0]["id"])
        else:
            found = []
        crash_point("after_create")
        self.m.instance_id = instance_id
        self.m.offer = offer
        self.run.journal.record_instance_created(label, instance_id)
        for extra in found[1:]:  # journaled as strays and destroyed, beside this job
            self.run.destroy_untracked(int(extra["id"]), stray=extra, reason=(
                f"a second instance with label {label} after a lost create answer"))
        facts = offer_facts(offer)
        self.fire("rented", detail={"instance": instance_id, **facts}, label=label,
                  instance_id=instance_id, offer_id=facts["offer_id"],
                  machine_id=facts["machine_id"], gpu_name=facts["gpu_name"],
                  num_gpus=facts["num_gpus"], dph_total=facts["dph_total"])
        return True

    def _resolve_doubt(self, label: str, exc: CreateInDoubt) -> list[dict]:
        """A create whose answer was lost may still have rented: look the label up (more
        than once: the server may act after the answer timed out). The instances found,
        lowest id first (the first is adopted); none means the offer may be tried again."""
        self.log("warning", "create answer lost; looking the instance up by its label",
                 label=label, error=str(exc))
        for wait in DOUBT_LOOKUPS:
            time.sleep(wait)
            self.check_cancel()
            try:
                rows = self.run.api.find_all_by_label(label)
            except VastError as lookup:
                raise JobFailure(f"rule {self.m.rule}: creating an instance failed ({exc}) "
                                 f"and looking it up failed too ({lookup}); its label "
                                 f"{label} is journaled and is torn down if it exists") from None
            if rows:
                return rows
        self.log("info", "no instance carries the label: the create did not happen",
                 label=label)
        return []

    # -- booting -------------------------------------------------------------------
    def step_booting(self) -> None:
        iid = self._instance_id()
        if not self.m.storage:
            self.run.attach_key(iid)
        self.run.watcher.watch(iid)
        deadline = time.monotonic() + self.run.settings.boot_timeout
        offline_since: float | None = None
        generation = 0
        while True:
            self.check_cancel()
            if time.monotonic() > deadline:
                raise JobFailure(f"instance {iid} did not boot within "
                                 f"{self.run.settings.boot_timeout}s (--vastai-boot-timeout)")
            generation = self.run.watcher.wait_next(generation, timeout=5.0)
            self._check_listing_health(iid)
            seen = self.run.watcher.sighting(iid)
            if seen is None:
                continue
            row = seen.row
            if row is None:
                raise JobFailure(f"instance {iid} vanished while booting")
            status = str(row.get("actual_status") or "")
            message = str(row.get("status_msg") or "")
            self.run.journal.update_instance_status(iid, status)
            if row.get("start_date"):
                self.run.journal.record_instance_started(iid, float(row["start_date"]))
            if FATAL_BOOT_PATTERNS.search(message) and status != "running":
                raise JobFailure(f"instance {iid} failed to boot: {message}")
            if self.m.storage and (status == "running" or status == "exited"):
                # the container runs the job itself; one that already ended is judged
                # by its log in the running step
                self.fire("booted", detail={"status": status})
                return
            if status in BOOT_FAILED_STATUSES:
                raise JobFailure(f"instance {iid} went {status} while booting: {message}")
            offline_since = self._heartbeat(iid, status, offline_since)
            if status == "running" and self._try_connect(row):
                self.fire("booted", detail={"host": self.m.endpoint.host,
                                            "port": self.m.endpoint.port},
                          ssh_host=self.m.endpoint.host, ssh_port=self.m.endpoint.port)
                # From here SSH itself (the follower's heartbeat) says whether the host
                # lives; the listing is consulted again only after SSH trouble.
                self.run.watcher.unwatch(iid)
                return

    def _check_listing_health(self, iid: int) -> None:
        """The batched listing has failed for longer than the API's retry budget: the
        API-outage path (fail, tear down, Snakemake's --retries decide)."""
        since = self.run.watcher.failing_since
        budget = self.run.api.retry_budget
        if since is not None and time.monotonic() - since > budget:
            raise JobFailure(f"instance {iid}: the Vast.ai instance listing has failed for "
                             f"more than {budget:.0f}s (see the log for why); the instance "
                             "is torn down; check https://status.vast.ai and rerun")

    def _heartbeat(self, iid: int, status: str, since: float | None) -> float | None:
        """Tolerate a lost host heartbeat for a bounded grace period."""
        if status not in HEARTBEAT_LOST_STATUSES:
            return None
        now = time.monotonic()
        since = since or now
        if now - since > self.run.settings.offline_grace:
            raise JobFailure(f"instance {iid} has been {status} for more than "
                             f"{self.run.settings.offline_grace:g}s (host heartbeat lost; "
                             "--vastai-offline-grace)")
        return since

    def _try_connect(self, row: dict) -> bool:
        """First SSH contact pins the host key; refused connections mean 'not yet'."""
        endpoint = ssh_endpoint(row)
        if endpoint is None:
            return False
        self.m.endpoint = endpoint
        try:
            self._connect()
        except SSHUnavailable:
            return False
        return True

    def _connect(self) -> RemoteSession:
        iid = self._instance_id()
        assert self.m.endpoint is not None
        pinned = self.run.journal.pinned_host_key(iid)
        try:
            session = RemoteSession.connect(self.m.endpoint, (self.m.key or self.run.key).pkey,
                                            pinned_host_key=pinned,
                                            timeout=self.run.settings.ssh_timeout)
        except HostKeyMismatch as exc:
            raise JobFailure(f"instance {iid}: {exc}; refusing to talk to it") from None
        if pinned is None:
            self.run.journal.record_instance_contact(
                iid, ssh_host=self.m.endpoint.host, ssh_port=self.m.endpoint.port,
                host_key=session.host_key)
        with self._session_lock:
            old, self.session = self.session, session
        if old is not None:
            old.close()
        return session

    def _session(self) -> RemoteSession:
        with self._session_lock:
            session = self.session
        return session if session is not None else self._connect()

    def _instance_id(self) -> int:
        if self.m.instance_id is None:
            raise JobFailure("internal: no instance for this job")
        return self.m.instance_id

    # -- SSH steps with reconnects ----------------------------------------------------
    def _with_ssh(self, what: str, action: Callable[[RemoteSession], Any]) -> Any:
        """Run ``action``; on SSH trouble reconnect with backoff within the budget."""
        deadline = time.monotonic() + SSH_RETRY_BUDGET
        delay = 0.5
        while True:
            self.check_cancel()
            try:
                return action(self._session())
            except (SSHUnavailable, *LINK_ERRORS) as exc:
                self._drop_session()
                self.check_cancel()
                if self.m.over_runtime:
                    raise JobFailure(self._over_runtime_message()) from None
                self.run.watcher.watch(self._instance_id())  # fresh listings from now on
                self._check_instance_alive()
                if self.m.offline_since is not None:  # the grace period decides
                    deadline = max(deadline, time.monotonic() + 1.0)
                reason = str(exc) or type(exc).__name__
                if time.monotonic() > deadline:
                    raise JobFailure(f"instance {self.m.instance_id}: SSH kept failing during "
                                     f"{what}: {reason}") from None
                self.fire("retry", detail=f"{what}: {reason}")
                time.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, 10.0)
            except UnsafeArchive as exc:
                raise JobFailure(f"instance {self.m.instance_id}: {exc}") from None
            except RemoteError as exc:
                raise JobFailure(f"instance {self.m.instance_id}: {what} failed: {exc}"
                                 f"{disk_hint(str(exc))}") from None

    def _check_instance_alive(self) -> None:
        """After an SSH failure: is the instance gone or offline for too long?"""
        iid = self._instance_id()
        seen = self.run.watcher.sighting(iid)
        if seen is None:
            return
        if seen.row is None:
            raise JobFailure(f"instance {iid} vanished during {self.m.state.value}")
        status = str(seen.row.get("actual_status") or "")
        self.m.offline_since = self._heartbeat(iid, status, self.m.offline_since)

    # -- uploading -------------------------------------------------------------------
    def step_uploading(self) -> None:
        shipment = self.run.shipment(self.m)
        sent = self._with_ssh("upload", lambda s: s.upload(shipment.files, self.run.remote_dir))
        self.fire("uploaded", detail={"files": len(shipment.files), "bytes": sent})

    # -- running ---------------------------------------------------------------------
    def step_running(self) -> None:
        if self.m.running_since is None:  # retries re-enter the state; the clock runs on
            self.m.running_since = time.monotonic()
        if self.m.storage:
            self.step_running_storage()
            return
        timer = self._runtime_timer()
        try:
            self._run_over_ssh()
        finally:
            if timer is not None:
                timer.cancel()

    def _runtime_timer(self) -> threading.Timer | None:
        """--vastai-max-runtime in SSH mode: break the follow when the time is up."""
        cap = self.run.max_runtime(self.m)
        if not cap or self.m.running_since is None:
            return None
        left = max(cap - (time.monotonic() - self.m.running_since), 0.0)

        def time_up() -> None:
            self.m.over_runtime = True
            self.interrupt()

        timer = threading.Timer(left, time_up)
        timer.daemon = True
        timer.start()
        return timer

    def _run_over_ssh(self) -> None:
        if not self.m.remote_started:
            command = self.run.job_command(self.m)
            env = self.run.job_environment(self.m)
            tries = 0

            def launch(session: RemoteSession) -> None:
                nonlocal tries
                tries += 1
                # A retry after a lost answer: the first launch may have started the job
                # (the instance has one job directory, so a job found there is ours).
                if tries > 1 and session.job_status(self.run.remote_dir) != "absent":
                    return
                session.launch(self.run.remote_dir, command, env=env)

            self._with_ssh("launch", launch)
            self.m.remote_started = True
            crash_point("after_launch")
        end = self._with_ssh("run", self._follow)
        if end.lost:
            raise JobFailure(f"instance {self.m.instance_id}: the job's process disappeared "
                             "on the host (killed?) without an exit code")
        self.m.exit_code = int(end.rc)
        self.fire("completed", detail={"exit_code": self.m.exit_code},
                  exit_code=self.m.exit_code)

    def _follow(self, session: RemoteSession) -> Any:
        # The local log file is the authority on how far we got: after a drop
        # the follower resumes at exactly the bytes already written.
        return session.follow(self.run.remote_dir, offset=self.m.log_offset,
                              on_output=self._log_bytes)

    def _log_bytes(self, chunk: bytes) -> None:
        self.run.append_job_log(self.m, chunk)
        self.m.log_offset += len(chunk)

    # -- running in storage mode --------------------------------------------------------
    def step_running_storage(self) -> None:
        """Watch the container, never SSH: its end shows as ``exited`` plus our exit line
        in its log, or (a host that never reports the exit) as the outputs in the bucket.
        """
        iid = self._instance_id()
        self.run.watcher.watch(iid)
        started = self.m.running_since or time.monotonic()
        cap = self.run.max_runtime(self.m)
        next_probe = started + self.run.output_check_interval
        outputs_since: float | None = None
        exited_since: float | None = None
        generation = 0
        while True:
            self.check_cancel()
            generation = self.run.watcher.wait_next(generation, timeout=5.0)
            seen = self.run.watcher.sighting(iid)
            if seen is not None and seen.row is None:
                if self.run.outputs_present(self.m):
                    self._complete_storage(0, "the instance vanished after its outputs "
                                              "reached storage")
                    return
                raise JobFailure(f"instance {iid} vanished while running")
            status = str(seen.row.get("actual_status") or "") if seen else ""
            self.m.offline_since = self._heartbeat(iid, status, self.m.offline_since)
            if status in BOOT_FAILED_STATUSES:
                exited_since = exited_since or time.monotonic()
                if self._finish_from_log(exited=True):
                    return
                if time.monotonic() - exited_since > LOG_WAIT_SECONDS:
                    self._judge_without_log(status)
                    return
            now = time.monotonic()
            if now >= next_probe:
                next_probe = now + self.run.output_check_interval
                if self.run.outputs_present(self.m):
                    outputs_since = outputs_since or now
                    if self._finish_from_log(exited=False, outputs_since=outputs_since):
                        return
            if cap and now - started > cap:
                self._runtime_exceeded(cap)
                return

    def _finish_from_log(self, *, exited: bool, outputs_since: float | None = None) -> bool:
        """Read the instance log for our exit line; True once the job is judged."""
        iid = self._instance_id()
        try:
            text = self.run.instance_log(iid)
        except VastError as exc:
            self.log("warning", "cannot read the instance log yet", error=str(exc))
            return False
        rc = exit_code_from_log(text, exit_token(self.m.label or ""))
        if rc is not None:
            self.run.write_job_log(self.m, text)
            self._complete_storage(rc)
            return True
        if exited:
            self.run.write_job_log(self.m, text)
            if self.run.outputs_present(self.m):
                self._complete_storage(0, "the container exited without an exit line, "
                                          "but every output is in storage")
                return True
            raise JobFailure(f"instance {iid}: the container exited without reporting the "
                             f"job's exit code; log: {self.m.log_path}"
                             f"{log_tail(self.m.log_path)}")
        if outputs_since is not None and \
                time.monotonic() - outputs_since > self.run.output_settle_seconds:
            self.run.write_job_log(self.m, text)
            self._complete_storage(0, f"every output is in storage and instance {iid} has "
                                      "not reported the job's end; taking it as done")
            return True
        return False

    def _judge_without_log(self, status: str) -> None:
        """The container ended but its log stays unreadable: the bucket decides."""
        if self.run.outputs_present(self.m):
            self._complete_storage(0, "the instance log could not be read, but every output "
                                      "is in storage")
            return
        raise JobFailure(f"instance {self.m.instance_id} went {status} and its log could not "
                         f"be read for {LOG_WAIT_SECONDS:.0f}s; the job's outputs are not in "
                         "storage")

    def _runtime_exceeded(self, cap: float) -> None:
        """--vastai-max-runtime: a job with all outputs in storage is done, else failed."""
        iid = self._instance_id()
        with contextlib.suppress(VastError):
            self.run.write_job_log(self.m, self.run.instance_log(iid))
        if self.run.outputs_present(self.m):
            self._complete_storage(0, f"--vastai-max-runtime {cap:g}s reached with every "
                                      "output in storage")
            return
        raise JobFailure(self._over_runtime_message())

    def _over_runtime_message(self) -> str:
        return (f"rule {self.m.rule}: the job ran longer than "
                f"{self.run.runtime_cap_text(self.m)} on instance {self.m.instance_id}, which "
                f"is destroyed; log: {self.m.log_path}{log_tail(self.m.log_path)}")

    def _complete_storage(self, rc: int, note: str | None = None) -> None:
        if note:
            self.log("warning", note)
        self.m.exit_code = rc
        self.m.outputs_home = rc == 0  # storage mode: the outputs are in the bucket
        if rc != 0:
            self.m.failure = (f"rule {self.m.rule}: the job exited with code {rc} on instance "
                              f"{self.m.instance_id}; log: {self.m.log_path}"
                              f"{log_tail(self.m.log_path)}")
            self.run.journal.update_job(self.m.job_id, last_error=self.m.failure)
        self.fire("completed", detail={"exit_code": rc, "note": note}, exit_code=rc)

    # -- downloading -------------------------------------------------------------------
    def step_downloading(self) -> None:
        ok = self.m.exit_code == 0
        back = self.run.homecoming(self.m, succeeded=ok)
        allowed = AllowedPaths(back.files, back.directories)
        if back.paths:
            try:
                self._with_ssh("download", lambda s: s.download(
                    self.run.remote_dir, back.paths, self.run.workdir, allowed=allowed,
                    max_bytes=self.run.settings.max_download_bytes, optional=back.optional))
            except JobFailure:
                if ok:
                    raise
                # the job failed anyway; missing logs must not hide its exit code
        if not ok:
            self.m.failure = (f"rule {self.m.rule}: the job exited with code {self.m.exit_code} "
                              f"on instance {self.m.instance_id}{self.run.failure_note(self.m)}"
                              f"; remote log: {self.m.log_path}{log_tail(self.m.log_path)}")
            self.run.journal.update_job(self.m.job_id, last_error=self.m.failure)
        self.m.outputs_home = ok  # before the journal hears of it: it may refuse
        crash_point("after_download")
        self.fire("downloaded", detail={"paths": len(back.paths), "exit_code": self.m.exit_code})

    # -- destroying ------------------------------------------------------------------
    def step_destroying(self) -> None:
        """The one teardown (teardown.py); a destroy not confirmed stays pending."""
        self._drop_session()
        iid = self.m.instance_id
        if self.run.settings.keep_instances and iid is not None:
            self.log("warning", "keeping instance (it keeps billing!)")
            self.fire("destroyed", detail={"kept": iid})
            return
        teardown = self.run.teardown
        if self.m.destroy_deadline is None:  # kept across retries of this step
            self.m.destroy_deadline = time.monotonic() + self.run.teardown_wait
        deadline = self.m.destroy_deadline
        if iid is not None:
            self.run.watcher.unwatch(iid)
            done = teardown.destroy(iid, label=self.m.label, on_retry=self._destroy_retry,
                                    deadline=deadline)
            detail: Any = {"instance": iid}
        elif self.m.label is not None:  # a create that may have rented without an answer
            gone = teardown.destroy_label(self.m.label, on_retry=self._destroy_retry,
                                          deadline=deadline)
            done = self.m.label not in teardown.pending_labels and not (
                set(gone) & set(teardown.pending))
            detail = {"label": self.m.label, "instances": gone} if gone else \
                "nothing was rented"
        else:
            done, detail = True, "nothing was rented"
        if not done:
            self.m.teardown_pending = True
            return
        self.fire("destroyed", detail=detail)

    def _destroy_retry(self, reason: str) -> None:
        with contextlib.suppress(Exception):  # bookkeeping only: the teardown goes on
            self.fire("destroy_retry", detail=reason)


STEPS: dict[JobState, Callable[[JobDriver], None]] = {
    JobState.SEARCHING: JobDriver.step_searching,
    JobState.RENTING: JobDriver.step_renting,
    JobState.BOOTING: JobDriver.step_booting,
    JobState.UPLOADING: JobDriver.step_uploading,
    JobState.RUNNING: JobDriver.step_running,
    JobState.DOWNLOADING: JobDriver.step_downloading,
    JobState.DESTROYING: JobDriver.step_destroying,
}


DISK_FULL = re.compile(r"No space left on device|Wrote only \d+ of \d+ bytes|"
                       r"Disk quota exceeded", re.IGNORECASE)


def disk_hint(message: str) -> str:
    """What to do when the host's error says its disk is full."""
    if not DISK_FULL.search(message):
        return ""
    return ("; the instance's disk is full: rent more with --vastai-disk or the rule's "
            "disk_mb resource")


def log_tail(path: str, lines: int = 20) -> str:
    """The end of a job's log, indented, for the error Snakemake shows."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            handle.seek(max(handle.tell() - 8192, 0))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    tail = text.splitlines()[-lines:]
    return ("\n    " + "\n    ".join(tail)) if tail else ""


def offer_facts(offer: dict) -> dict:
    """The facts of an offer worth journaling (no secrets live in offers)."""
    return {
        "offer_id": int(offer["id"]),
        "machine_id": offer.get("machine_id"),
        "gpu_name": offer.get("gpu_name"),
        "num_gpus": offer.get("num_gpus"),
        "dph_total": offer.get("dph_total"),
        "geolocation": offer.get("geolocation"),
    }


def storage_resume_status(row: dict) -> str:
    """Storage mode re-attach: a container that runs or ran has started the job."""
    status = str(row.get("actual_status") or "")
    return "running" if status in ("running", "exited", "offline", "unknown") else status


def ssh_endpoint(row: dict) -> Endpoint | None:
    """Direct SSH (public IP + mapped port 22) if offered, else the SSH proxy."""
    ports = row.get("ports") or {}
    direct = ports.get("22/tcp") if isinstance(ports, dict) else None
    ip = row.get("public_ipaddr")
    if direct and ip:
        try:
            return Endpoint(host=str(ip).strip(), port=int(direct[0]["HostPort"]))
        except (KeyError, IndexError, TypeError, ValueError):
            pass
    if row.get("ssh_host") and row.get("ssh_port"):
        return Endpoint(host=str(row["ssh_host"]), port=int(row["ssh_port"]))
    return None
