"""The offer market as a job step sees it: its query, the search, claims, the spend cap.

One object per run, shared by its jobs. Claims keep this run's concurrent jobs
off each other's offers (the cheapest offer would otherwise be raced for by
every job at once); a finished job releases its claim, so its machine may be
rented again by a later job.

Who gets which offer: every job walks the market's answer in its order (cheapest
first by default) and claims the first offer nobody of this run holds. Concurrent
jobs with one request therefore take the cheapest offers in rank order, the k-th
claimant the k-th cheapest, and a collision costs a set lookup, not an API call.
Jobs with different requests follow the same rule: each takes the cheapest
unclaimed offer its own request admits, in the order the jobs claim. Snakemake
hands the executor jobs one at a time as they become ready, so there is no batch
to optimise a matching over; a job never takes an offer while a cheaper one that
fits it is free, and a job that finds nothing free waits (driver: ``waiting``)
instead of reaching for a dearer offer than the market has.

Waiting jobs sleep on :class:`Vacancies`: a claim released (its instance gone, so
its offer may be on the market again) or an instance given back to the warm pool
wakes them at once, so they need not poll the API to notice.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from .offers import (
    OfferRequest,
    OfferSettings,
    build_offer_request,
    gpu_key,
    requested_gpu_name,
    with_gpu_name,
)
from .query import offer_misfit

if TYPE_CHECKING:
    from ..journal.store import Journal
    from ..workflow.jobspec import JobSpec
    from .api import VastAPI


class Vacancies:
    """Wakes waiting jobs when an offer or an instance of this run may have come free."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._serial = 0

    def notify(self) -> None:
        with self._changed:
            self._serial += 1
            self._changed.notify_all()

    def seen(self) -> int:
        """The current serial: pass it to :meth:`wait` to miss no notification after it."""
        with self._changed:
            return self._serial

    def wait(self, seen: int, timeout: float) -> bool:
        """Sleep until a notification after ``seen`` or ``timeout``; True if notified."""
        with self._changed:
            return self._changed.wait_for(lambda: self._serial != seen, timeout)


class OfferMarket:
    """Search, claim and price offers for the jobs of one run."""

    def __init__(self, api: VastAPI, journal: Journal, settings: OfferSettings, *,
                 run_id: str, max_spend: float | None = None) -> None:
        self._api = api
        self._journal = journal
        self._settings = settings
        self._run_id = run_id
        self._max_spend = max_spend
        self._claims: dict[int, dict] = {}  # offer id -> the offer, while a job holds it
        self._lock = threading.Lock()
        self._latest: dict[str, tuple[float, list[dict]]] = {}  # request -> (time, answer)
        self.vacancies = Vacancies()
        # The offers of the run's live instances that no claim holds (warm pool, re-attached
        # instances); set by the run, so that a job can tell whether one of its own may
        # serve it.
        self.own_offers: Callable[[], Iterable[dict]] = lambda: ()
        # GPU names as the market spells them, for names a rule spelt otherwise (gpu_key ->
        # spelling; learnt by the run's start-up market check, run/market_check.py)
        self.gpu_names: dict[str, str] = {}

    def request_for(self, spec: JobSpec) -> OfferRequest:
        """The job's offer query; machines it already failed on are excluded."""
        excluded = self._journal.failed_machines(spec.fingerprint)
        settings = spec.offer_settings or self._settings  # the rule's overrides, if any
        request = build_offer_request(settings, spec.resources, spec.threads,
                                      rule=spec.rule, exclude_machines=excluded)
        asked = requested_gpu_name(request)
        spelled = None if asked is None else self.gpu_names.get(gpu_key(asked))
        return request if spelled is None else with_gpu_name(request, spelled)

    def search(self, request: OfferRequest, limit: int, *, bid: bool = False) -> list[dict]:
        """Offers for the request; ``bid``: interruptible offers (bids.py)."""
        found = self._api.search_offers(request.query, request.order, limit,
                                        request.storage_gb, bid=bid)
        if not bid:
            with self._lock:
                self._latest[_key(request)] = (time.monotonic(), list(found))
        return found

    def cheapest_free(self, request: OfferRequest, max_age: float) -> tuple[dict | None, bool]:
        """The cheapest unclaimed offer of the latest answer to ``request`` if that answer
        is at most ``max_age`` seconds old: (offer or None, whether an answer was known)."""
        with self._lock:
            latest = self._latest.get(_key(request))
            if latest is None or time.monotonic() - latest[0] > max_age:
                return None, False
            free = [o for o in latest[1] if int(o["id"]) not in self._claims]
        return (free[0] if free else None), True

    def own_instance_fits(self, request: OfferRequest) -> bool:
        """Could an instance this run holds (a claimed offer, an idle warm one, one a job
        re-attached to, of which only the journaled facts are known) meet the request? Then
        waiting for it to come free can succeed, whatever the market says; what is not known
        about an instance does not rule it out."""
        with self._lock:
            held = list(self._claims.values())
        return any(offer_misfit(offer, request.query, unknown_fits=True) is None
                   for offer in [*held, *self.own_offers()])

    def spend_cap_reached(self) -> str | None:
        """A message once --vastai-max-spend is used up: the instances this run rented and
        the bytes it moved on any instance (a resumed run's on an earlier run's)."""
        cap = self._max_spend
        if cap is None:
            return None
        _seconds, spent = self._journal.run_cost(self._run_id)
        if spent < cap:
            return None
        return (f"--vastai-max-spend of ${cap:g} reached (this run has spent "
                f"${spent:.4f} on instances and bandwidth); no new instance is rented, "
                "running jobs finish")

    def claim(self, offer: dict) -> bool:
        """Reserve an offer for one job of this run; False if another job has it."""
        offer_id = int(offer["id"])
        with self._lock:
            if offer_id in self._claims:
                return False
            self._claims[offer_id] = offer
            return True

    def claimed(self, offer_id: int) -> bool:
        with self._lock:
            return offer_id in self._claims

    def claimed_count(self) -> int:
        with self._lock:
            return len(self._claims)

    def release(self, offer_id: int) -> None:
        """The offer is free for this run's jobs again (its instance is gone): wake the
        waiting ones, its machine may be back on the market."""
        with self._lock:
            self._claims.pop(offer_id, None)
        self.vacancies.notify()


def _key(request: OfferRequest) -> str:
    return json.dumps([request.query, request.order, request.storage_gb], sort_keys=True,
                      default=str)
