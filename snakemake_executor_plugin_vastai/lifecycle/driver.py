"""Drives one job through the machine in ``job_machine.py``.

Each job runs in its own thread: look at the state, perform that state's side
effect, then fire the trigger the transition table allows. The machine's
``before_state_change`` hook journals every transition (a guarded update plus
an append-only row) before the new state is entered, and so before the new
state's side effect runs. A crash therefore always leaves a journal at least as
far along as reality, and the instance label is journaled before the create
call so even an instance whose id never reached the journal is found again.

A step sees its job's narrow ports (``ports.py``: offer market, instances,
journal, job spec, settings), never the whole run. What depends on the transfer
mode (upload, run, download, what "booted" means) lives in a transport
(``transports/``); this module keeps the life cycle every mode shares. The steps
that get the job an instance (search, wait, rent, lease, re-attach) are in
``renting.py``, the model the machine drives in ``models.py``.

Only the driver writes the job model and fires triggers: a transport returns an
outcome (``outcomes.py``) that the step applies, and sees the job through a narrow
port (``step_port.py``) that lets it journal a retry in place, nothing more.

Failures raise :class:`~.outcomes.JobFailure` inside a step; the loop turns
them into the ``fail`` trigger, which leads through ``destroying``. Transient
trouble (API throttling, SSH drops) is retried inside the step, with backoff,
and shows in the journal as ``retry`` transitions.

The job's instance is torn down in one place, the ``destroying`` step: failure,
cancel, success and an outbid instance abandoned past its grace all lead there.
The one other teardown is :meth:`JobDriver._last_resort`, for a loop that broke
(the journal refused a transition) and so cannot move the job through the table.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from transitions.extensions import LockedMachine

from ..journal.store import JournalError, StaleTransition, UnknownInstance
from ..run.backoff import Backoff
from ..run.commands import cleanup_command
from ..vastai import bids
from ..vastai.api import VastError
from . import instance_life
from .job_machine import JobState, Progress, machine_kwargs
from .models import JobModel
from .outcomes import (
    CRASH_ENV,
    CRASH_POINTS,
    Downloaded,
    JobCancelled,
    JobFailure,
    Reattached,
    RunEnded,
    command_exit_code,
    crash_point,
    log_tail,
)
from .renting import WAIT_PACE, RentingSteps

if TYPE_CHECKING:
    from ..transports import Transport
    from .ports import JobPorts

__all__ = ["CRASH_ENV", "CRASH_POINTS", "JobDriver", "build_machine"]

# status_msg fragments that mean the instance will never boot (fail fast).
FATAL_BOOT_PATTERNS = re.compile(
    r"toomanyrequests|pull rate limit|manifest unknown|manifest for .* not found|"
    r"no space left on device|unauthorized|authentication required|pull access denied|"
    r"repository does not exist|invalid reference format|OCI runtime create failed|"
    r"error response from daemon",
    re.IGNORECASE,
)
BOOT_FAILED_STATUSES = frozenset({"exited", "stopped", "frozen"})
# Seconds a job waits for one listing after asking a self-stopped instance to start, even
# past the preemption grace: the start's answer may have been lost although it started.
LOOK_AFTER_START = 30.0
MAX_LOST = 3  # instances a job may lose to their watchdogs (the run away) before failing
HEARTBEAT_LOST_STATUSES = frozenset({"offline", "unknown"})


def build_machine() -> LockedMachine:
    """One machine for all jobs; each job is a model added at its current state."""
    return LockedMachine(model=None, send_event=True,
                         before_state_change="journal_transition", **machine_kwargs())


class JobDriver(RentingSteps):
    """Runs one job's steps in a thread until a terminal state."""

    def __init__(self, model: JobModel, machine: LockedMachine) -> None:
        self.m = model
        self.p: JobPorts = model.ports
        self.machine = machine
        self.transport: Transport = self.p.transport(self)
        self.m.storage = self.transport.skips_ssh
        self.search_backoff = Backoff(start=WAIT_PACE[0], cap=WAIT_PACE[1])
        self._logged_wait = 0.0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._main, name=f"vastai-job-{model.job_id}",
                                       daemon=True)

    # -- plumbing ---------------------------------------------------------------
    def log(self, level: str, event: str, **kw: Any) -> None:
        """Log with the job's identity, state and instance on every event."""
        getattr(self.p.log, level)(event, job=self.m.job_id, rule=self.m.rule,
                                   state=self.m.state.value, instance=self.m.instance_id,
                                   **kw)

    def start(self) -> None:
        self.thread.start()

    def fire(self, trigger: str, detail: Any = None, **fields: Any) -> None:
        getattr(self.m, trigger)(detail=detail, fields=fields)

    def note_retry(self, detail: str) -> None:
        """A transport retried in place (an SSH reconnect): a ``retry`` in the journal."""
        self.fire("retry", detail=detail)

    def cancel(self) -> None:
        """Ask the job to stop; interrupts blocking SSH reads."""
        self.m.cancel_requested = True
        self.transport.close()

    def check_cancel(self) -> None:
        if self.m.cancel_requested:
            raise JobCancelled()

    def instance_id(self) -> int:
        if self.m.instance_id is None:
            raise JobFailure("internal: no instance for this job")
        return self.m.instance_id

    def record_failure(self, message: str) -> None:
        """The job failed (its message for the user); the journal keeps it too."""
        self.m.failure = message
        with contextlib.suppress(JournalError):  # the message also travels in the transition
            self.p.journal.update_job(self.m.job_id, last_error=message)

    def _main(self) -> None:
        """Step until terminal. Whatever ends this thread, an instance it may hold is torn
        down (:meth:`_last_resort`): a job never stops billing in the dark."""
        try:
            while not self.m.state.is_terminal:
                self._step()
        except BaseException as exc:  # a journal that cannot be written, a bug
            self._last_resort(exc)
        finally:
            self.transport.close()
            if self.m.instance_id is not None:
                self.p.instances.watcher.unwatch(self.m.instance_id)
            self.p.spec.close_log()
            with contextlib.suppress(Exception):
                self.p.on_end(self.m)
            self.done.set()

    def _last_resort(self, exc: BaseException) -> None:
        """The step loop broke (e.g. the journal refused a transition), so the job cannot
        move through the table: tear the instance down outside the machine, journal
        writes best effort, and say so. The job stays in the state the journal has (not
        terminal: that is how the run counts it as broken); a destroy not confirmed stays
        pending in the teardown, which the run reports."""
        with contextlib.suppress(Exception):
            self.log("error", "job thread failed; tearing its instance down",
                     error=f"{type(exc).__name__}: {exc}")
        self.m.failure = self.m.failure or (
            f"rule {self.m.rule}: internal error in state {self.m.state.value}: "
            f"{type(exc).__name__}: {exc}")
        if self.m.instance_id is None and self.m.label is None:
            return
        if self.p.settings.keep_instances:
            return
        teardown = self.p.instances.teardown
        deadline = time.monotonic() + self.p.instances.teardown_wait
        if self.m.instance_id is not None:
            teardown.destroy(self.m.instance_id, label=self.m.label, deadline=deadline)
        else:
            teardown.destroy_label(self.m.label or "", deadline=deadline)

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
        except bids.Preempted as exc:
            self._preempted(state, exc)
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
                self._destroy_unconfirmed(message)
                return
            time.sleep(1.0)  # the step is retried until its deadline
            return
        self.record_failure(message)
        self.fire("fail", detail=message)

    def instance_event(self, trigger: str, **columns: Any) -> None:
        """Move this job's instance along instance_machine.py. An instance whose row predates
        warm instances (no state) or that an earlier run's job holds (a resume) is left as
        it is: only the job's own rows matter for it."""
        if self.m.label is None:
            return
        with contextlib.suppress(StaleTransition, UnknownInstance):
            instance_life.fire(self.p.journal, self.m.label, trigger, job_id=self.m.job_id,
                               **columns)

    # -- booting -------------------------------------------------------------------
    def step_booting(self) -> None:
        iid = self.instance_id()
        self.transport.prepare_boot(iid)
        watcher = self.p.instances.watcher
        watcher.watch(iid)
        deadline = time.monotonic() + self.p.settings.boot_timeout
        offline_since: float | None = None
        generation = 0
        while True:
            self.check_cancel()
            if time.monotonic() > deadline:
                raise JobFailure(f"instance {iid} did not boot within "
                                 f"{self.p.settings.boot_timeout}s (--vastai-boot-timeout)")
            generation = watcher.wait_next(generation, timeout=5.0)
            self._check_listing_health(iid)
            seen = watcher.sighting(iid)
            if seen is None:
                continue
            row = seen.row
            if row is None and self.transport.skips_ssh:
                # storage mode: the container runs the job from its start, and the watchdog
                # destroys a succeeded job's instance no run picked up (the run was away):
                # the running step judges by the bucket whether the job is done
                self.fire("booted", detail={"status": "gone"}, work_dir=self.m.work_dir,
                          leased_at=time.time())
                return
            if row is None:
                self.check_ended_itself(iid, "booting")
                raise JobFailure(f"instance {iid} vanished while booting")
            status = str(row.get("actual_status") or "")
            message = str(row.get("status_msg") or "")
            self.p.journal.update_instance_status(iid, status)
            if row.get("start_date"):
                self.p.journal.record_instance_started(iid, float(row["start_date"]))
            self.check_outbid(row)
            if FATAL_BOOT_PATTERNS.search(message) and status != "running":
                raise JobFailure(f"instance {iid} failed to boot: {message}")
            booted = self.transport.ready(status, row) if status != "exited" or \
                self.transport.skips_ssh else None
            if booted is not None:
                if booted.endpoint is not None:
                    self.m.endpoint = booted.endpoint
                self._probe_after_boot()
                self.instance_event("booted", leased_by=self.m.job_id, served=1)
                if self.m.rented_at is not None and self.p.pool is not None:
                    self.p.pool.boots.append(time.monotonic() - self.m.rented_at)
                    self.m.rented_at = None
                self.fire("booted", detail=booted.detail, work_dir=self.m.work_dir,
                          leased_at=time.time(), **booted.fields)
                self._warm_up()
                self.transport.after_boot(iid)
                return
            if status in BOOT_FAILED_STATUSES:
                raise JobFailure(f"instance {iid} went {status} while booting: {message}")
            offline_since = self.heartbeat(iid, status, offline_since)

    def _probe_after_boot(self) -> None:
        """A resumed job whose instance could not be asked before (it was stopped): what
        is on its disk decides where the job goes on (a finished job's outputs come home
        rather than the job running again)."""
        if not self.m.probe_on_boot:
            return
        self.m.probe_on_boot = False
        found = self.transport.probe_job()
        self._date_the_stop(found.stopped_for)
        if found.exit_code is not None:
            self.m.exit_code, self.m.progress = found.exit_code, Progress.FINISHED
        elif found.started:
            self.m.progress = Progress.STARTED

    def _date_the_stop(self, stopped_for: float | None) -> None:
        """The stop was journaled when the run saw it (woken, or a later run); storage-only
        billing began when the watchdog stopped the instance: count the time between as
        stopped too, or the ledger prices it at the running rate."""
        if stopped_for is None or self.m.preempted_at is None:
            return
        unseen = stopped_for - (time.monotonic() - self.m.preempted_at)
        if unseen > 0:
            with contextlib.suppress(JournalError):
                self.p.journal.record_stopped_unseen(self.instance_id(), unseen)

    def _warm_up(self) -> None:
        """SSH mode with warm instances: the instance this job rented may serve later jobs."""
        pool = self.p.pool
        if pool is None or not pool.enabled or self.m.storage or self.m.offer is None \
                or self.m.endpoint is None:
            return
        from ..run.pool import WarmInstance

        request = self.p.market.request_for(self.p.spec)
        self.m.warm = WarmInstance(label=self.m.label or "", instance_id=self.instance_id(),
                                   offer=dict(self.m.offer), image=self.p.spec.image,
                                   disk_gb=float(request.storage_gb), endpoint=self.m.endpoint)

    def _check_listing_health(self, iid: int) -> None:
        """The batched listing has failed for longer than the API's retry budget: the
        API-outage path (fail, tear down, Snakemake's --retries decide)."""
        since = self.p.instances.watcher.failing_since
        budget = self.p.instances.retry_budget
        if since is not None and time.monotonic() - since > budget:
            raise JobFailure(f"instance {iid}: the Vast.ai instance listing has failed for "
                             f"more than {budget:.0f}s (see the log for why); the instance "
                             "is torn down; check https://status.vast.ai and rerun")

    def heartbeat(self, iid: int, status: str, since: float | None) -> float | None:
        """Tolerate a lost host heartbeat for a bounded grace period."""
        if status not in HEARTBEAT_LOST_STATUSES:
            return None
        now = time.monotonic()
        since = since or now
        if now - since > self.p.settings.offline_grace:
            raise JobFailure(f"instance {iid} has been {status} for more than "
                             f"{self.p.settings.offline_grace:g}s (host heartbeat lost; "
                             "--vastai-offline-grace)")
        return since

    # -- re-attaching (renting.py's step_resuming): what the transport found -------------
    def reattached(self, found: Reattached) -> Any:
        """Apply what a re-attach found (the job goes on where its work got: the
        ``resume`` guards read ``progress``); the instance's status, for the journal."""
        self.m.endpoint = found.endpoint
        self.m.exit_code = found.exit_code
        self.m.progress = (Progress.FINISHED if found.exit_code is not None else
                           Progress.STARTED if found.started else Progress.NOTHING)
        if not found.started:
            self.m.key = None  # the boot step authorises this run's key
        return found.status

    # -- uploading, running, downloading: the transport moves, the driver applies -------
    def step_uploading(self) -> None:
        sent = self.transport.upload()
        detail = {"files": sent.files, "bytes": sent.bytes}
        if sent.already_on_instance:
            detail["already_on_instance"] = sent.already_on_instance
        self.m.progress = Progress.UPLOADED
        self.fire("uploaded", detail=detail)

    def step_running(self) -> None:
        if self.m.progress is Progress.NOTHING:  # storage mode: the container deploys
            self.m.progress = Progress.UPLOADED
        if self.m.running_since is None:  # retries re-enter the state; the clock runs on
            self.m.running_since = time.monotonic()
        self._run_ended(self.transport.run(started=self.m.progress is Progress.STARTED))

    def _run_ended(self, ended: RunEnded) -> None:
        """The job's process ended: record how, then ``completed``."""
        self.m.exit_code = ended.exit_code
        self.m.progress = Progress.HOME if ended.outputs_home else Progress.FINISHED
        if ended.failure is not None:
            self.record_failure(ended.failure)
        if ended.over_runtime:
            self.m.warm = None  # a job that met its runtime cap gives no instance back
        detail: dict[str, Any] = {"exit_code": ended.exit_code}
        if ended.note is not None:
            detail["note"] = ended.note
        self.fire("completed", detail=detail, exit_code=ended.exit_code)

    def step_downloading(self) -> None:
        self._judge_download(self.transport.download())

    def _judge_download(self, back: Downloaded) -> None:
        """The transport brought home what there is: judge the job and move on. An
        instance given back to the pool is the pool's from then on (it tears down one it
        refuses); every other ends in ``destroying``."""
        if back.ok:
            self.m.progress = Progress.HOME  # before the journal hears of it: it may refuse
        else:
            spec = self.p.spec
            self.m.exit_code = command_exit_code(spec.log_path, self.m.exit_code)
            self.record_failure(f"rule {self.m.rule}: the job exited with code "
                                f"{self.m.exit_code} on instance {self.m.instance_id}"
                                f"{spec.failure_note()}; remote "
                                f"log: {spec.log_path}{log_tail(spec.log_path)}")
        crash_point("after_download")
        if back.ok and self._may_give_back() and self._clean_for_next():
            if self.m.running_since is not None:
                self.p.pool.job_times.append(time.monotonic() - self.m.running_since)
            self.fire("gave_back", detail={"paths": back.paths,
                                           "instance": self.m.instance_id},
                      released_at=time.time())
            crash_point("after_give_back")
            self.p.pool.give_back(self.m.warm, self.m.job_id)
            return
        self.fire("downloaded", detail={"paths": back.paths, "exit_code": self.m.exit_code},
                  exit_code=self.m.exit_code)

    def _clean_for_next(self) -> bool:
        """Before an instance is lent again, everything its job started must be gone (a
        leftover loader holds GPU memory the next job needs); one that cannot be proven
        clean is destroyed, not lent."""
        why = self.transport.clean_for_next()
        if why is None:
            return True
        self.log("warning", "not lending the instance to another job; destroying it",
                 reason=why)
        return False

    def _may_give_back(self) -> bool:
        """Only a healthy instance whose job succeeded serves another (never after a
        failure, a cancel, a runtime cap, or for an earlier run's resumed job). A bid
        instance is not pooled: it may be outbid while idle, and its price is a bid."""
        pool = self.p.pool
        return (pool is not None and pool.enabled and self.m.warm is not None
                and self.m.bid_price is None and not self.m.interruptible
                and not self.p.settings.keep_instances and not self.m.cancel_requested
                and self.m.failure is None)

    def over_runtime_message(self) -> str:
        spec = self.p.spec
        return (f"rule {self.m.rule}: the job ran longer than {spec.runtime_cap_text()} on "
                f"instance {self.m.instance_id}, which "
                f"is destroyed; log: {spec.log_path}{log_tail(spec.log_path)}")

    # -- destroying ------------------------------------------------------------------
    def kept_message(self, instance_id: int) -> str:
        """--vastai-keep-instances: how to get onto the kept instance and how to end it
        (a person keeps one to look inside, and must not forget it bills)."""
        endpoint = self.m.endpoint
        key = getattr(self.m.key or self.p.instances.key, "path", None)
        if endpoint is None:
            ssh = "no SSH (storage mode): look at it in the Vast.ai console"
        else:
            identity = f"-i {shlex.quote(str(key))} " if key is not None else ""
            ssh = f"ssh {identity}-p {endpoint.port} {endpoint.user}@{endpoint.host}"
        return (f"keeping instance {instance_id}; it bills until destroyed\n"
                f"    log in:     {ssh}\n"
                f"    destroy it: {cleanup_command(self.p.journal.path)}\n"
                "    (the destroy finds every instance this workflow kept)")

    def step_destroying(self) -> None:
        """The job's one teardown (teardown.py). Confirmed gone: the job ends in its
        outcome, or rents anew if it lost its instance before its work came home (an
        outbid instance abandoned). Not confirmed by the deadline: the job ends all the
        same, and the instance stays pending (the teardown's list, the journal's
        instance row in destroying) for the run's last try and its exit status."""
        self.transport.close()
        iid = self.m.instance_id
        if self.p.settings.keep_instances and iid is not None \
                and not self.m.needs_an_instance():
            self.log("warning", self.kept_message(iid))
            self.fire("destroyed", detail={"kept": iid})
            return
        teardown = self.p.instances.teardown
        if self.m.destroy_deadline is None:  # kept across retries of this step
            self.m.destroy_deadline = time.monotonic() + self.p.instances.teardown_wait
        deadline = self.m.destroy_deadline
        if iid is not None:
            self.p.instances.watcher.unwatch(iid)
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
            self._destroy_unconfirmed("not confirmed gone within the teardown wait")
        elif self.m.needs_an_instance():
            self._rent_again(iid)
        else:
            self.fire("destroyed", detail=detail)

    def _destroy_retry(self, reason: str) -> None:
        with contextlib.suppress(Exception):  # bookkeeping only: the teardown goes on
            self.fire("destroy_retry", detail=reason)

    def _destroy_unconfirmed(self, reason: str) -> None:
        """The teardown wait passed without Vast.ai confirming the instance gone: the job
        ends in its outcome all the same (one that was to rent again fails), and its
        instance stays pending: the run asks once more at its end and exits non-zero,
        naming it, if that fails too (teardown.pending_message)."""
        iid, label = self.m.instance_id, self.m.label
        if self.m.needs_an_instance():
            self.record_failure(f"instance {iid} stayed outbid past --vastai-preemption-grace "
                                "and its destroy was not confirmed")
        self.fire("destroy_unconfirmed", detail={"instance": iid, "label": label,
                                                 "reason": reason})

    # -- preemption (bid instances, see bids.py) -------------------------------------------
    def check_outbid(self, row: dict | None) -> None:
        """Raise Preempted when the listing shows this job's bid instance stopped (the row's
        own ``is_bid`` decides: a crash may have kept the bid out of the journal)."""
        if row is not None and bids.is_outbid(row):
            raise bids.Preempted(f"instance {self.m.instance_id} was outbid: "
                                 f"{row.get('status_msg') or row.get('actual_status')}")
        if row is not None and bids.self_stopped(row):
            raise bids.SelfStopped(f"instance {self.m.instance_id} stopped itself: its "
                                   "watchdog had no heartbeat from the run "
                                   "(--vastai-orphan-timeout)")

    def check_ended_itself(self, iid: int, during: str) -> None:
        """A vanished instance its own watchdog may have destroyed (the run was away for an
        orphan timeout) before the job's process started: nothing of the job was on it,
        so raise InstanceLost (rent another), at most MAX_LOST times per job."""
        feeder = self.p.feeder
        if feeder is None or self.m.progress not in (Progress.NOTHING, Progress.UPLOADED):
            return
        row = self.p.journal.instance_row(instance_id=iid) or {}
        if not feeder.may_have_ended_itself(iid, row.get("created_at")):
            return
        self.m.lost_instances += 1
        if self.m.lost_instances > MAX_LOST:
            return
        raise bids.InstanceLost(f"instance {iid} is gone (during {during}); its watchdog "
                                "likely ended it while the run was away: renting another")

    def _preempted(self, state: JobState, exc: bids.Preempted) -> None:
        """Journal the preemption; what the job had done decides where it resumes."""
        reason, self_stopped = str(exc), isinstance(exc, bids.SelfStopped)
        self.transport.close()
        if isinstance(exc, bids.InstanceLost):  # nothing of the job's work was on it
            self.log("warning", "the job's instance is gone before its process started; "
                     "renting another", reason=reason)
            self.fire("preempted", detail={"reason": reason, "from": state.value,
                                           "lost": True})
            return
        self.m.preemptions += 1
        self.m.preempted_at = time.monotonic()
        self.m.self_stopped = self_stopped
        # its watchdog stopped it once the job had ended: once it runs again, what is on
        # its disk says where the job goes on (its outputs come home, not a second run)
        self.m.probe_on_boot = self_stopped and not self.transport.skips_ssh
        if self.m.progress is Progress.STARTED and not self_stopped:
            self.m.progress = Progress.UPLOADED  # its process died: run it again, no upload
        with contextlib.suppress(JournalError):
            self.p.journal.record_instance_stop(self.instance_id(), stopped=True)
        self.log("warning", "instance stopped by its own watchdog; starting it again"
                 if self_stopped else "bid instance outbid (stopped by Vast.ai)",
                 reason=reason, preemptions=self.m.preemptions)
        self.fire("preempted", detail={"reason": reason, "preemptions": self.m.preemptions,
                                       "from": state.value, "bid_price": self.m.bid_price})

    def step_preempted(self) -> None:
        """Wait up to the grace for the outbid instance to run again; past it (or once it
        is gone), abandon it: ``destroying`` tears it down and the job rents anew."""
        iid = self.instance_id()
        watcher = self.p.instances.watcher
        watcher.watch(iid)
        grace = self.p.settings.bids.grace
        since = self.m.preempted_at or time.monotonic()
        generation = watcher.generation
        look_until = since + grace  # past it, abandon: but never before a look after a start
        if self.m.self_stopped:  # our own stop: ask for the start (its GPU may be gone)
            self.m.self_stopped = False
            try:  # retried within the grace only; an answer lost is not a start refused
                self.p.instances.start(iid, budget=max(since + grace - time.monotonic(), 1.0))
            except VastError as exc:
                self.log("warning", "could not start the stopped instance", error=str(exc))
            # the listing, not the answer, says whether it starts: one taken after the request
            generation = watcher.generation
            look_until = max(look_until, time.monotonic() + LOOK_AFTER_START)
        looked = False
        while time.monotonic() - since <= grace or (
                not looked and time.monotonic() <= look_until):
            self.check_cancel()
            generation = watcher.wait_next(generation, timeout=min(5.0, grace + 0.1))
            seen = watcher.sighting(iid)
            if seen is None:
                continue
            looked = True
            if seen.row is None:
                break  # gone for good: rent again
            status = str(seen.row.get("actual_status") or "")
            self.p.journal.update_instance_status(iid, status)
            if not bids.is_outbid(seen.row) and not bids.self_stopped(seen.row) and \
                    status in ("running", "loading", "created", "rebooting", ""):
                self.p.journal.record_instance_stop(iid, stopped=False)
                self.fire("resumed", detail={"instance": iid, "status": status,
                                             "stopped_for": round(time.monotonic() - since, 1)})
                return
        self.fire("abandon", detail={"instance": iid,
                                     "waited": round(time.monotonic() - since, 1)})

    def _rent_again(self, iid: int | None) -> None:
        """The abandoned instance is gone: forget it and search again (on demand once the
        job was outbid often enough)."""
        with contextlib.suppress(JournalError):
            if iid is not None:
                self.p.journal.record_instance_stop(iid, stopped=False)
        if self.m.offer is not None:
            self.p.market.release(int(self.m.offer["id"]))
        self.m.instance_id, self.m.label, self.m.offer, self.m.endpoint = None, None, None, None
        self.m.bid_price, self.m.key, self.m.destroy_deadline = None, None, None
        self.m.warm = None  # a later lease or boot sets it anew
        self.m.progress, self.m.exit_code = Progress.NOTHING, None
        fallback = self.p.settings.bids.on_demand_now(self.m.preemptions)
        self.fire("rent_again", detail={"destroyed": iid, "next": "on-demand" if fallback or
                                        not self.m.interruptible else "bid"})


STEPS: dict[JobState, Callable[[JobDriver], None]] = {
    JobState.SEARCHING: JobDriver.step_searching,
    JobState.WAITING: JobDriver.step_waiting,
    JobState.RENTING: JobDriver.step_renting,
    JobState.BOOTING: JobDriver.step_booting,
    JobState.UPLOADING: JobDriver.step_uploading,
    JobState.RUNNING: JobDriver.step_running,
    JobState.DOWNLOADING: JobDriver.step_downloading,
    JobState.DESTROYING: JobDriver.step_destroying,
    JobState.PREEMPTED: JobDriver.step_preempted,
}
