"""The offer market as a job step sees it: its query, the search, claims, the spend cap.

One object per run, shared by its jobs. Claims keep this run's concurrent jobs
off each other's offers (the cheapest offer would otherwise be raced for by
every job at once); a finished job releases its claim, so its machine may be
rented again by a later job.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from .offers import OfferRequest, OfferSettings, build_offer_request

if TYPE_CHECKING:
    from .jobspec import JobSpec
    from .journal import Journal
    from .vast import VastAPI


class OfferMarket:
    """Search, claim and price offers for the jobs of one run."""

    def __init__(self, api: VastAPI, journal: Journal, settings: OfferSettings, *,
                 run_id: str, max_spend: float | None = None) -> None:
        self._api = api
        self._journal = journal
        self._settings = settings
        self._run_id = run_id
        self._max_spend = max_spend
        self._claims: set[int] = set()
        self._lock = threading.Lock()

    def request_for(self, spec: JobSpec) -> OfferRequest:
        """The job's offer query; machines it already failed on are excluded."""
        excluded = self._journal.failed_machines(spec.fingerprint)
        settings = spec.offer_settings or self._settings  # the rule's overrides, if any
        return build_offer_request(settings, spec.resources, spec.threads,
                                   rule=spec.rule, exclude_machines=excluded)

    def search(self, request: OfferRequest, limit: int, *, bid: bool = False) -> list[dict]:
        """Offers for the request; ``bid``: interruptible offers (bids.py)."""
        return self._api.search_offers(request.query, request.order, limit, request.storage_gb,
                                       bid=bid)

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

    def claim(self, offer_id: int) -> bool:
        """Reserve an offer for one job of this run; False if another job has it."""
        with self._lock:
            if offer_id in self._claims:
                return False
            self._claims.add(offer_id)
            return True

    def claimed(self, offer_id: int) -> bool:
        with self._lock:
            return offer_id in self._claims

    def claimed_count(self) -> int:
        with self._lock:
            return len(self._claims)

    def release(self, offer_id: int) -> None:
        with self._lock:
            self._claims.discard(offer_id)
