"""Drives one job through the machine in ``machine.py``.

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
(``transports/``); this module keeps the life cycle every mode shares.

Failures raise :class:`~.outcomes.JobFailure` inside a step; the loop turns
them into the ``fail`` trigger, which leads through ``destroying``. Transient
trouble (API throttling, SSH drops) is retried inside the step, with backoff,
and shows in the journal as ``retry`` transitions.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from transitions.extensions import LockedMachine

from ..journal.store import JournalError, StaleTransition, UnknownInstance
from ..run.backoff import Backoff
from ..run.pool import worth_keeping
from ..vastai import bids
from ..vastai.api import CreateInDoubt, OfferGone, VastAuthError, VastError
from ..vastai.offers import describe
from ..workflow.payload import REMOTE_DIR
from .job_machine import JobState, machine_kwargs
from .outcomes import CRASH_ENV, CRASH_POINTS, JobCancelled, JobFailure, crash_point, log_tail

if TYPE_CHECKING:
    from ..transports import Transport
    from .ports import JobPorts

__all__ = ["CRASH_ENV", "CRASH_POINTS", "JobDriver", "JobModel", "build_machine"]

MAX_EXTRA_OFFERS = 200  # offers asked for beyond the limit, to see past our own claims
# Seconds a job waits for a matching offer to come free before it fails
# (--vastai-offer-wait): long enough for the run's own jobs of typical GPU length to
# finish and hand their instances on, and waiting rents nothing, so it costs no money.
DEFAULT_OFFER_WAIT = 1800.0
# Pace of the searches of a waiting job: from 2 s up to 20 s between searches of one
# job (shared with the run's other jobs asking the same, see shared_search.py), well
# inside the search endpoint's rate limit; a vacancy of the run wakes it sooner.
WAIT_PACE = (2.0, 20.0)
WAIT_LOG_EVERY = 60.0  # seconds between "still waiting" lines of one job
# Seconds a market answer's prices stand for the market when a job decides whether an
# idle warm instance is worth its price (pool.worth_keeping); older: search again.
PRICE_MEMORY = 120.0
# Pauses before each label lookup after a create whose answer was lost: the server may
# act after the client gave up waiting, so one empty listing is not proof.
DOUBT_LOOKUPS = (0.5, 2.0, 5.0)

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


@dataclass(eq=False)
class JobModel:
    """The per-job model the shared machine drives (``state`` is set by it)."""

    job_id: str
    ports: JobPorts = field(repr=False)
    snakemake_job: Any = field(repr=False)
    rule: str
    attempt: int
    fingerprint: str
    log_path: str
    state: JobState = JobState.SEARCHING
    candidates: list[dict] = field(default_factory=list)
    waiting_since: float | None = None  # monotonic time the job first found no offer free
    wait_reason: str = ""  # why it waits: what matched and who holds it (for the failure)
    rented_at: float | None = None  # monotonic time of the create (the boot's start)
    label: str | None = None
    instance_id: int | None = None
    offer: dict | None = None
    endpoint: Any = None  # remote.Endpoint (SSH mode)
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
    # interruptible (bid) instances, see bids.py
    interruptible: bool = False  # the job's rule asks for bid instances
    bidding: bool = False  # the current search/instance is a bid one
    bid_price: float | None = None  # $/h bid of the current instance
    preemptions: int = 0  # times this job's instances were outbid
    preempted_at: float | None = None  # monotonic time of the current preemption
    after_preemption: bool = False  # booting again on an instance that was outbid
    inputs_on_disk: bool = False  # the instance holds the uploaded inputs
    work_dir: str = REMOTE_DIR  # the job's own directory on its instance (relative to $HOME)
    warm: Any = None  # pool.WarmInstance: the instance may serve the next job (warm instances)
    give_back: bool = False  # the job succeeded and its instance goes back to the pool

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

    def was_preempted(self, event: Any = None) -> bool:
        return self.after_preemption

    def inputs_uploaded(self, event: Any = None) -> bool:
        return self.inputs_on_disk

    def gives_instance_back(self, event: Any = None) -> bool:
        return self.give_back and self.failure is None and not self.cancel_requested

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
        self.ports.journal.transition(
            self.job_id, source=source, dest=dest, trigger=event.event.name,
            detail=event.kwargs.get("detail"), **event.kwargs.get("fields", {}),
        )
        self.ports.log.info("transition", job=self.job_id, rule=self.rule, state=dest,
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
            while not self.m.state.is_terminal and not self.m.teardown_pending:
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
        if self.p.settings.keep_instances:
            return
        teardown = self.p.instances.teardown
        deadline = time.monotonic() + self.p.instances.teardown_wait
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
        except bids.Preempted as exc:
            self._preempted(state, str(exc))
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
        self.record_failure(message)
        self.fire("fail", detail=message)

    # -- searching ----------------------------------------------------------------
    def step_searching(self) -> None:
        self.check_cancel()
        if self.m.claim is not None:
            self.step_resuming()
            return
        market = self.p.market
        capped = market.spend_cap_reached()  # also before a lease: a warm instance bills too
        if capped:
            raise JobFailure(f"rule {self.m.rule}: {capped}")
        request = market.request_for(self.p.spec)
        if self._lease_warm(request):
            return
        self.log("info", "searching offers", query=request.text, verbose=True)
        # Ask for enough offers to see past those this run's other jobs are renting.
        limit = request.limit + min(market.claimed_count(), MAX_EXTRA_OFFERS)
        self.m.bidding = self.m.interruptible and not \
            self.p.settings.bids.on_demand_now(self.m.preemptions)
        found = market.search(request, limit, bid=self.m.bidding)
        offers = [o for o in found if not market.claimed(int(o["id"]))]
        if not offers:
            self._no_offer_free(request, found)
            return
        self.m.candidates = offers  # in the market's order: the cheapest unclaimed first
        self.fire("offers_found", detail={"candidates": len(offers), "query": request.text,
                                          "type": "bid" if self.m.bidding else "on-demand"})

    def _no_offer_free(self, request: Any, found: list[dict]) -> None:
        """Nothing to rent now: wait for the market or the run's own instances, unless
        nothing could ever serve the job (no match at all, none of ours fits it)."""
        market = self.p.market
        if not found and self.m.waiting_since is None and \
                not market.own_instance_fits(request):
            raise JobFailure(f"rule {self.m.rule}: no Vast.ai offer matches "
                             f"{describe(request)} (loosen the job's resources, "
                             "--vastai-max-price, --vastai-gpu-name or "
                             "--vastai-geolocation)")
        # Every offer found is held by one of this run's jobs (or none was found).
        self.m.wait_reason = (f"{len(found)} matching offers on the market, all held by "
                              "this run's jobs" if found else
                              "no matching offer on the market (all rented by others)")
        self.fire("no_offer_free", detail={"matched": len(found), "claimed_by_run": len(found),
                                           "query": request.text})

    def _lease_warm(self, request: Any) -> bool:
        """Warm instances: take the cheapest idle instance of the run's pool that meets
        the job's request (journaled as leased first), skipping renting and booting, unless
        a cheaper free offer makes it not worth its price (pool.worth_keeping).
        Bid jobs rent bid instances of their own (bids.py): they never lease."""
        pool = self.p.pool
        if pool is None or self.transport.skips_ssh or self.m.interruptible:
            return False
        warm = pool.lease(self.m.job_id, request, self.p.spec.image,
                          decide=lambda w: self._worth_keeping(w, request))
        if warm is None:
            return False
        self.m.warm, self.m.instance_id, self.m.label = warm, warm.instance_id, warm.label
        self.m.work_dir = f"{REMOTE_DIR}s/{self.m.job_id}"  # its own, beside earlier jobs'
        self.m.offer, self.m.endpoint = warm.offer, warm.endpoint
        self.m.waiting_since = None
        facts = offer_facts(warm.offer)
        self.fire("leased", detail={"instance": warm.instance_id, "label": warm.label,
                                    "dph_total": facts["dph_total"]},
                  label=warm.label, instance_id=warm.instance_id, offer_id=facts["offer_id"],
                  machine_id=facts["machine_id"], gpu_name=facts["gpu_name"],
                  num_gpus=facts["num_gpus"], dph_total=facts["dph_total"],
                  ssh_host=warm.endpoint.host, ssh_port=warm.endpoint.port,
                  work_dir=self.m.work_dir, leased_at=time.time())
        return True

    def _worth_keeping(self, warm: Any, request: Any) -> tuple[bool, str]:
        """Price an idle instance against the cheapest free offer for this job (the latest
        answer to its search, or a new search when none is recent): pool.worth_keeping."""
        market, pool = self.p.market, self.p.pool
        fresh, known = market.cheapest_free(request, PRICE_MEMORY)
        if not known or (fresh is not None and price_of(fresh) < warm.price):
            # Before letting an instance go for a cheaper offer, see the market as it is
            # now (a remembered offer may be gone); keeping needs no fresh look.
            market.search(request, request.limit + min(market.claimed_count(),
                                                       MAX_EXTRA_OFFERS))
            fresh, _known = market.cheapest_free(request, PRICE_MEMORY)
        job = pool.job_estimate()
        work = None if job is None else job * self.p.queue_share()
        return worth_keeping(warm.price, None if fresh is None else price_of(fresh),
                             pool.boot_estimate(), work)

    def instance_event(self, trigger: str, **columns: Any) -> None:
        """Move this job's instance along instance_machine.py. An instance whose row predates
        warm instances (no state) or that an earlier run's job holds (a resume) is left as
        it is: only the job's own rows matter for it."""
        if self.m.label is None:
            return
        with contextlib.suppress(StaleTransition, UnknownInstance):
            self.p.journal.instance_transition(self.m.label, trigger=trigger,
                                               job_id=self.m.job_id, **columns)

    # -- waiting -------------------------------------------------------------------
    def step_waiting(self) -> None:
        """No matching offer is free: sleep until the run frees an instance or an offer
        (market.Vacancies) or the search pace says look again, then search again. Fails
        once the wait passes --vastai-offer-wait, naming the request."""
        now = time.monotonic()
        if self.m.waiting_since is None:
            self.m.waiting_since = now
        waited = now - self.m.waiting_since
        limit = self.p.settings.offer_wait
        request = self.p.market.request_for(self.p.spec)
        if waited >= limit:
            raise JobFailure(f"rule {self.m.rule}: no Vast.ai offer matching "
                             f"{describe(request)} came free within {limit:g}s "
                             f"(--vastai-offer-wait); last search: {self.m.wait_reason}")
        if now - self._logged_wait >= WAIT_LOG_EVERY:
            self._logged_wait = now
            self.log("info", "waiting for a matching offer or an instance of this run to "
                     "come free", waited=round(waited), limit=limit,
                     last_search=self.m.wait_reason, query=describe(request))
        vacancies = self.p.market.vacancies
        seen = vacancies.seen()
        pause = min(self.search_backoff.delay(), limit - waited)
        end = time.monotonic() + pause
        while time.monotonic() < end:  # short naps: a cancel is seen within a second
            self.check_cancel()
            if vacancies.wait(seen, min(1.0, end - time.monotonic())):
                break
        self.fire("search_again", detail={"waited": round(time.monotonic() -
                                                          self.m.waiting_since, 1)})

    # -- resuming (an earlier run's instance) -------------------------------------------
    def step_resuming(self) -> None:
        """Re-attach to a live instance from an earlier run instead of renting anew."""
        claim, self.m.claim = self.m.claim, None
        self.m.instance_id = int(claim.instance["instance_id"])
        self.m.label = claim.instance["label"]
        self.m.key = claim.key
        self.m.bid_price = resumed_bid(claim)  # a bid instance: it may be outbid
        self.m.work_dir = claim.job.get("work_dir") or REMOTE_DIR
        status = self.transport.resume_status(claim)
        self.p.instances.watcher.watch(self.m.instance_id)
        old = claim.job
        self.fire("resume", detail={"from_job": old["id"], "from_run": old["run_id"],
                                    "instance": self.m.instance_id, "remote": str(status)},
                  resumed_from=old["id"], label=self.m.label, instance_id=self.m.instance_id,
                  offer_id=old.get("offer_id"), machine_id=old.get("machine_id"),
                  gpu_name=old.get("gpu_name"), num_gpus=old.get("num_gpus"),
                  dph_total=old.get("dph_total"), work_dir=self.m.work_dir)

    # -- renting -------------------------------------------------------------------
    def step_renting(self) -> None:
        market = self.p.market
        while self.m.candidates:
            self.check_cancel()
            capped = market.spend_cap_reached()
            if capped:
                raise JobFailure(f"rule {self.m.rule}: {capped}")
            offer = self.m.candidates.pop(0)
            if not market.claim(offer):
                continue
            if self._rent(offer):
                self.m.waiting_since = None
                self.search_backoff.reset()
                return
            self.fire("offer_taken", detail={"offer": offer["id"]})
        self.m.wait_reason = "every candidate offer was taken before it could be rented"
        self.fire("no_offer_free", detail="all candidates taken")

    def _rent(self, offer: dict) -> bool:
        """Create the instance (label journaled first). False if the offer is gone."""
        journal = self.p.journal
        request = self.p.market.request_for(self.p.spec)
        bid = self._bid_terms(offer, request.storage_gb)
        if bid is None:  # a bid offer whose min_bid breaks the price cap
            self.p.market.release(int(offer["id"]))
            return False
        if bid:
            offer = {**offer, "dph_total": round(bid["bid_price"] + bid["storage_dph"], 6)}
        label = self.m.label or self._fresh_label()
        journal.record_rent_intent(job_id=self.m.job_id, run_id=self.p.run_id, label=label,
                                   offer=offer_facts(offer))
        self.m.label = label  # only once the intent is journaled (destroying looks it up)
        crash_point("after_rent_intent")
        try:
            instance_id = self.p.instances.create(
                int(offer["id"]), label=label, image=self.p.spec.image,
                disk_gb=request.storage_gb, price=bid.get("bid_price"),
                **self.transport.launch(label))
        except OfferGone:
            self.p.market.release(int(offer["id"]))
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
        self.m.rented_at = time.monotonic()
        self.m.offer = offer
        self.m.bid_price = bid.get("bid_price")
        journal.record_instance_created(label, instance_id, **bid)
        for extra in found[1:]:  # journaled as strays and destroyed, beside this job
            self.p.instances.destroy_in_background(int(extra["id"]), stray=extra, reason=(
                f"a second instance with label {label} after a lost create answer"))
        facts = offer_facts(offer)
        self.fire("rented", detail={"instance": instance_id, **facts, **bid}, label=label,
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
                rows = self.p.instances.find_all_by_label(label)
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
            if row is None:
                raise JobFailure(f"instance {iid} vanished while booting")
            status = str(row.get("actual_status") or "")
            message = str(row.get("status_msg") or "")
            self.p.journal.update_instance_status(iid, status)
            if row.get("start_date"):
                self.p.journal.record_instance_started(iid, float(row["start_date"]))
            self.check_outbid(row)
            if FATAL_BOOT_PATTERNS.search(message) and status != "running":
                raise JobFailure(f"instance {iid} failed to boot: {message}")
            ready = self.transport.ready(status, row) if status != "exited" or \
                self.transport.skips_ssh else None
            if ready is not None:
                detail, fields = ready
                self.instance_event("booted", leased_by=self.m.job_id, served=1)
                if self.m.rented_at is not None and self.p.pool is not None:
                    self.p.pool.boots.append(time.monotonic() - self.m.rented_at)
                    self.m.rented_at = None
                self.fire("booted", detail=detail, work_dir=self.m.work_dir,
                          leased_at=time.time(), **fields)
                self._warm_up()
                self.transport.after_boot(iid)
                return
            if status in BOOT_FAILED_STATUSES:
                raise JobFailure(f"instance {iid} went {status} while booting: {message}")
            offline_since = self.heartbeat(iid, status, offline_since)

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

    # -- uploading, running, downloading: the transport's -------------------------------
    def step_uploading(self) -> None:
        self.transport.upload()
        self.m.inputs_on_disk = True

    def step_running(self) -> None:
        self.m.inputs_on_disk = True
        if self.m.running_since is None:  # retries re-enter the state; the clock runs on
            self.m.running_since = time.monotonic()
        self.transport.run()

    def step_downloading(self) -> None:
        self.transport.download()

    def finish_download(self, ok: bool, paths: int) -> None:
        """The transport brought home what there is: judge the job and move on."""
        if not ok:
            spec = self.p.spec
            self.record_failure(f"rule {self.m.rule}: the job exited with code "
                                f"{self.m.exit_code} on instance {self.m.instance_id}"
                                f"{spec.failure_note()}; remote "
                                f"log: {spec.log_path}{log_tail(spec.log_path)}")
        self.m.outputs_home = ok  # before the journal hears of it: it may refuse
        crash_point("after_download")
        if ok and self._may_give_back():
            self.m.give_back = True
            if self.m.running_since is not None:
                self.p.pool.job_times.append(time.monotonic() - self.m.running_since)
            self.fire("gave_back", detail={"paths": paths, "instance": self.m.instance_id},
                      released_at=time.time())
            crash_point("after_give_back")
            if not self.p.pool.give_back(self.m.warm, self.m.job_id):
                self.p.instances.destroy_in_background(self.instance_id(), label=self.m.label)
            return
        self.fire("downloaded", detail={"paths": paths, "exit_code": self.m.exit_code})

    def _may_give_back(self) -> bool:
        """Only a healthy instance whose job succeeded serves another (never after a
        failure, a cancel, a runtime cap, or for an earlier run's resumed job). A bid
        instance is not pooled: it may be outbid while idle, and its price is a bid."""
        pool = self.p.pool
        return (pool is not None and pool.enabled and self.m.warm is not None
                and self.m.bid_price is None and not self.m.interruptible
                and not self.p.settings.keep_instances and not self.m.cancel_requested
                and not self.m.over_runtime and self.m.failure is None)

    def over_runtime_message(self) -> str:
        spec = self.p.spec
        return (f"rule {self.m.rule}: the job ran longer than {spec.runtime_cap_text()} on "
                f"instance {self.m.instance_id}, which "
                f"is destroyed; log: {spec.log_path}{log_tail(spec.log_path)}")

    # -- destroying ------------------------------------------------------------------
    def step_destroying(self) -> None:
        """The one teardown (teardown.py); a destroy not confirmed stays pending."""
        self.transport.close()
        iid = self.m.instance_id
        if self.p.settings.keep_instances and iid is not None:
            self.log("warning", "keeping instance (it keeps billing!)")
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
            self.m.teardown_pending = True
            return
        self.fire("destroyed", detail=detail)

    def _destroy_retry(self, reason: str) -> None:
        with contextlib.suppress(Exception):  # bookkeeping only: the teardown goes on
            self.fire("destroy_retry", detail=reason)


    # -- preemption (bid instances, see bids.py) -------------------------------------------
    def _fresh_label(self) -> str:
        """The job's label; a job renting again after a preemption gets a new one (the
        journal never reuses a label that named an instance)."""
        base = f"{self.p.journal.label_prefix}{self.m.job_id}"
        return f"{base}-p{self.m.preemptions}" if self.m.preemptions else base

    def _bid_terms(self, offer: dict, disk_gb: float) -> dict | None:
        """{} on demand; the bid's journaled facts for a bid offer; None if the cap is
        below the offer's min_bid."""
        if not self.m.bidding:
            return {}
        settings = self.p.settings.bids
        cap = (self.p.spec.offer_settings or self.p.settings.offer_settings).max_price
        price = bids.bid_price(offer, settings.factor, cap, disk_gb)
        if price is None:
            return None
        return {"bid_price": price, "storage_dph": round(bids.storage_dph(offer, disk_gb), 6),
                "ondemand_dph": bids.on_demand_dph(offer, disk_gb)}

    def check_outbid(self, row: dict | None) -> None:
        """Raise Preempted when the listing shows this job's bid instance stopped (the row's
        own ``is_bid`` decides: a crash may have kept the bid out of the journal)."""
        if row is not None and bids.is_outbid(row):
            raise bids.Preempted(f"instance {self.m.instance_id} was outbid: "
                                 f"{row.get('status_msg') or row.get('actual_status')}")

    def _preempted(self, state: JobState, reason: str) -> None:
        """Journal the preemption; what the job had done decides where it resumes."""
        self.transport.close()
        self.m.preemptions += 1
        self.m.preempted_at = time.monotonic()
        self.m.after_preemption = True
        if self.m.exit_code is None:  # its process died with the container: run it again
            self.m.remote_started = False
            self.m.log_offset = 0
        with contextlib.suppress(JournalError):
            self.p.journal.record_instance_stop(self.instance_id(), stopped=True)
        self.log("warning", "bid instance outbid (stopped by Vast.ai)", reason=reason,
                 preemptions=self.m.preemptions)
        self.fire("preempted", detail={"reason": reason, "preemptions": self.m.preemptions,
                                       "from": state.value, "bid_price": self.m.bid_price})

    def step_preempted(self) -> None:
        """Wait up to the grace for the outbid instance to run again; past it, tear it
        down (the one teardown) and rent again."""
        iid = self.instance_id()
        watcher = self.p.instances.watcher
        watcher.watch(iid)
        grace = self.p.settings.bids.grace
        since = self.m.preempted_at or time.monotonic()
        generation = watcher.generation
        while time.monotonic() - since <= grace:
            self.check_cancel()
            generation = watcher.wait_next(generation, timeout=min(5.0, grace + 0.1))
            seen = watcher.sighting(iid)
            if seen is None:
                continue
            if seen.row is None:
                break  # gone for good: rent again
            status = str(seen.row.get("actual_status") or "")
            self.p.journal.update_instance_status(iid, status)
            if not bids.is_outbid(seen.row) and status in ("running", "loading", "created",
                                                          "rebooting", ""):
                self.p.journal.record_instance_stop(iid, stopped=False)
                self.fire("resumed", detail={"instance": iid, "status": status,
                                             "stopped_for": round(time.monotonic() - since, 1)})
                return
        self._abandon(iid, since)

    def _abandon(self, iid: int, since: float) -> None:
        """The instance stayed stopped past the grace: destroy it, search again."""
        teardown = self.p.instances.teardown
        watcher = self.p.instances.watcher
        watcher.unwatch(iid)
        deadline = time.monotonic() + self.p.instances.teardown_wait
        if not teardown.destroy(iid, label=self.m.label, deadline=deadline):
            raise JobFailure(f"instance {iid} stayed outbid past --vastai-preemption-grace "
                             "and its destroy was not confirmed")
        with contextlib.suppress(JournalError):
            self.p.journal.record_instance_stop(iid, stopped=False)
        if self.m.offer is not None:
            self.p.market.release(int(self.m.offer["id"]))
        self.m.instance_id, self.m.label, self.m.offer, self.m.endpoint = None, None, None, None
        self.m.bid_price = None
        self.m.after_preemption = self.m.inputs_on_disk = self.m.remote_started = False
        self.m.exit_code, self.m.log_offset = None, 0
        fallback = self.p.settings.bids.on_demand_now(self.m.preemptions)
        self.fire("rent_again", detail={"destroyed": iid, "waited": round(
            time.monotonic() - since, 1), "next": "on-demand" if fallback or
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


def price_of(offer: dict) -> float:
    """An offer's $/h as the search priced it for the job's disk."""
    return float(offer.get("dph_total") or 0.0)


def resumed_bid(claim: Any) -> float | None:
    """The bid of an earlier run's instance: journaled, else the listing's ``is_bid`` row
    (a crash between create and journal write), priced at its ``dph_total``."""
    bid = claim.instance.get("bid_price")
    row = getattr(claim, "row", None) or {}
    if bid is None and row.get("is_bid"):
        bid = float(row.get("dph_total") or 0.0)
    return None if bid is None else float(bid)


def offer_facts(offer: dict) -> dict:
    """The facts of an offer worth journaling (no secrets live in offers)."""
    return {
        "offer_id": int(offer["id"]),
        "machine_id": offer.get("machine_id"),
        "gpu_name": offer.get("gpu_name"),
        "num_gpus": offer.get("num_gpus"),
        "dph_total": offer.get("dph_total"),
        "geolocation": offer.get("geolocation"),
        "inet_up_cost": offer.get("inet_up_cost"),  # $/GB the instance sends (ledger.py)
        "inet_down_cost": offer.get("inet_down_cost"),  # $/GB it receives
    }
