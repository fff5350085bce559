"""One offer search answers every job of a run that asks the same at the same moment.

Twenty identical jobs started together used to send twenty identical searches,
each through the same rate-limited endpoint. Here the searches of one key
(query, order, storage) are pooled:

- A caller joins the search of its key that is still queued for the endpoint
  (not sent yet), or opens one. The search's limit is fixed only when its
  request is built, so everyone who joined while it queued is counted: the
  request asks for the largest limit among them plus one offer for each
  further sharer (each will claim one), up to ``MAX_LIMIT``.
- Every sharer gets the whole answer in the market's order (cheapest first
  under the default order). Who rents what is decided by the run's offer
  claims (``market.OfferMarket.claim``), which cost no API call: the k-th job
  to claim takes the k-th cheapest offer. Handing each sharer a rotated slice
  instead (as this module once did, five offers per sharer) sent the eighth
  concurrent job to about the 35th cheapest offer and made runs pay several
  times the price per hour for nothing.
- For ``FRESH`` seconds after an answer, a newcomer of the same key is served
  from it if it holds at least the newcomer's limit (or all there was: a short
  answer means the market has no more). A larger limit makes a new search.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_LIMIT = 500  # offers asked for in one search, at most
FRESH = 1.0  # seconds an answer keeps serving newcomers

# fetch(query, order, limit_at_send_time, storage_gb) -> offers, best first
Fetch = Callable[[dict, list, Callable[[], int], float], list[dict]]


@dataclass
class _Search:
    """One search of one key and everyone sharing it."""

    limits: list[int] = field(default_factory=list)  # each sharer's own limit, in join order
    sent_limit: int | None = None  # fixed when the request is built (None: still queued)
    done: threading.Event = field(default_factory=threading.Event)
    rows: list[dict] = field(default_factory=list)
    error: BaseException | None = None
    answered_at: float = 0.0

    def join(self, limit: int) -> None:
        self.limits.append(limit)

    def limit_now(self) -> int:
        """Enough for every sharer to see past the offers the others will claim."""
        if self.sent_limit is None:
            sized = max(self.limits) + len(self.limits) - 1
            self.sent_limit = max(min(sized, MAX_LIMIT), max(self.limits))
        return self.sent_limit

    @property
    def exhausted(self) -> bool:
        """The answer holds every matching offer: asking for more would not find more."""
        return self.sent_limit is not None and len(self.rows) < self.sent_limit

    def serves(self, limit: int) -> bool:
        """``limit`` offers are in the answer (or nothing more is)."""
        return self.exhausted or limit <= len(self.rows)

    def answer(self, limit: int) -> list[dict]:
        return self.rows[:limit]


class SharedSearches:
    """Pools identical offer searches of concurrent jobs (see the module docstring)."""

    def __init__(self, fetch: Fetch, *, fresh: float = FRESH,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._fetch = fetch
        self._fresh = fresh
        self._clock = clock
        self._lock = threading.Lock()
        self._queued: dict[str, _Search] = {}  # per key: the search still taking sharers
        self._answered: dict[str, _Search] = {}  # per key: the latest answer
        self.requests = 0  # searches actually sent (for logs and tests)
        self.served = 0  # callers answered

    def search(self, query: dict, order: list, limit: int, storage_gb: float) -> list[dict]:
        """Offers for ``query``, best first (at most ``limit``)."""
        key = json.dumps([query, order, storage_gb], sort_keys=True, default=str)
        while True:
            with self._lock:
                fresh = self._from_answer(key, limit)
                if fresh is not None:
                    self.served += 1
                    return fresh
                search = self._queued.get(key)
                leader = search is None
                if leader:
                    search = self._queued[key] = _Search()
                search.join(limit)
            if leader:
                self._lead(key, search, query, order, storage_gb)
            else:
                search.done.wait()
            if search.error is not None:
                raise search.error
            with self._lock:
                if search.serves(limit):
                    self.served += 1
                    return search.answer(limit)
            # Joined too late for this answer's size: go round (a newer one may serve).

    def _from_answer(self, key: str, limit: int) -> list[dict] | None:
        """A fresh answer, if it holds enough for this caller."""
        answer = self._answered.get(key)
        if answer is None or self._clock() - answer.answered_at > self._fresh:
            return None
        if not answer.serves(limit):
            return None
        return answer.answer(limit)

    def _lead(self, key: str, search: _Search, query: dict, order: list,
              storage_gb: float) -> None:
        """Send the search (the limit is fixed as the request is built) and share the answer."""

        def limit_now() -> int:
            with self._lock:
                if self._queued.get(key) is search:
                    del self._queued[key]  # later callers open the next search
                self.requests += 1
                return search.limit_now()

        try:
            search.rows = list(self._fetch(query, order, limit_now, storage_gb))
        except BaseException as exc:  # every sharer sees the leader's failure
            search.error = exc
        finally:
            with self._lock:
                if self._queued.get(key) is search:  # failed before it was ever sent
                    del self._queued[key]
                if search.error is None:
                    search.answered_at = self._clock()
                    self._answered[key] = search
            search.done.set()
