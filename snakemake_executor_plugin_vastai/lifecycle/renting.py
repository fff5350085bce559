"""The steps that get a job an instance: search, wait, rent, lease a warm one, re-attach.

A mixin of :class:`~.driver.JobDriver` (which holds the loop, the plumbing and the
other steps): these steps talk to the offer market and create instances, so they live
apart from booting, moving data and tearing down. The price rules they follow are in
``vastai/market.py`` (who gets which offer) and ``run/pool.py`` (keep a warm instance or
replace it).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ..costs.warm import worth_keeping
from ..run.backoff import Backoff
from ..vastai import bids
from ..vastai.api import CreateInDoubt, OfferGone, VastAuthError, VastError
from ..vastai.offers import describe
from ..workflow.payload import REMOTE_DIR
from . import instance_life
from .outcomes import JobFailure, crash_point

if TYPE_CHECKING:
    from ..transports import Transport
    from .models import JobModel
    from .ports import JobPorts

MAX_EXTRA_OFFERS = 200  # offers asked for beyond the limit, to see past our own claims
# Seconds a job waits for a matching offer to come free before it fails
# (--vastai-offer-wait): long enough for the run's own jobs of typical GPU length to
# finish and hand their instances on, and waiting rents nothing, so it costs no money.
# DEFAULT_OFFER_WAIT (1800 s) lives in settings.py, where --help shows it.
# Pace of the searches of a waiting job: from 2 s up to 20 s between searches of one
# job (shared with the run's other jobs asking the same, see shared_search.py), well
# inside the search endpoint's rate limit; a vacancy of the run wakes it sooner.
WAIT_PACE = (2.0, 20.0)
WAIT_LOG_EVERY = 60.0  # seconds between "still waiting" lines of one job
# Seconds a market answer's prices stand for the market when a job decides whether an
# idle warm instance is worth its price (costs/warm.worth_keeping); older: search again.
PRICE_MEMORY = 120.0
# Pauses before each label lookup after a create whose answer was lost: the server may
# act after the client gave up waiting, so one empty listing is not proof.
DOUBT_LOOKUPS = (0.5, 2.0, 5.0)


class RentingSteps:
    """Searching, waiting, renting and re-attaching (mixed into ``JobDriver``)."""

    m: JobModel
    p: JobPorts
    transport: Transport
    search_backoff: Backoff
    _logged_wait: float

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
        a cheaper free offer makes it not worth its price (costs/warm.worth_keeping).
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
        answer to its search, or a new search when none is recent): costs/warm.worth_keeping."""
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
        found = self.transport.resume_status(claim)
        status = self.reattached(found)
        # not reachable now (stopped by its watchdog, say): once booted, ask over SSH how
        # far the job got before uploading anything
        self.m.probe_on_boot = found.status is None and not self.transport.skips_ssh
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
        # the disk's $/h, which alone bills while the instance is stopped (outbid, or by its
        # watchdog: on demand too), for the ledger's storage component
        storage = {"storage_dph": round(bids.storage_dph(offer, request.storage_gb), 6)}
        instance_life.created(journal, label, instance_id, **{**storage, **bid})
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

    def _fresh_label(self) -> str:
        """The job's label; a job renting again after a preemption, or after its instance
        ended itself while the run was away, gets a new one (the journal never reuses a
        label that named an instance)."""
        base = f"{self.p.journal.label_prefix}{self.m.job_id}"
        again = self.m.preemptions + self.m.lost_instances
        return f"{base}-p{again}" if again else base

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
