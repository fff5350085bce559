"""One offer search answers every job of a run that asks the same at the same moment.

Twenty identical jobs started together used to send twenty identical searches,
each through the same rate-limited endpoint, and got twenty identical answers
from which they all tried the same cheapest offer first. Here the searches of
one key (query, order, storage) are pooled:

- A caller joins the search of its key that is still queued for the endpoint
  (not sent yet), or opens one. The search's limit is fixed only when its
  request is built, so everyone who joined while it queued is counted: the
  request asks for the largest limit among them plus ``HANDOUT`` offers for
  each further sharer, up to ``MAX_LIMIT``.
- Every sharer gets the answer rotated to start at a slice of its own
  (``HANDOUT`` offers, the driver's candidates per search), followed by the
  other offers: concurrent jobs try different offers first, and each still
  sees the rest to fall back on. The offer claims (``Run.claim_offer``) still
  decide who rents what.
- For ``FRESH`` seconds after an answer, a newcomer of the same key is served
  from it (the next unused slice) if the answer still holds a slice for it and
  at least its limit (or all there was: a short answer means the market has no
  more). A larger limit, or a spent answer, makes a new search.

The order of offers within a slice is the service's (best first), so the
cheapest offers still go to the earliest callers.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

HANDOUT = 5  # offers each sharer gets first, of its own (the driver's candidates per search)
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
    handed: int = 0  # slices given out so far (sharers, then newcomers)

    def join(self, limit: int) -> int:
        self.limits.append(limit)
        self.handed += 1
        return len(self.limits) - 1

    def limit_now(self, handout: int) -> int:
        if self.sent_limit is None:
            sized = max(self.limits) + handout * (len(self.limits) - 1)
            self.sent_limit = max(min(sized, MAX_LIMIT), max(self.limits))
        return self.sent_limit

    @property
    def exhausted(self) -> bool:
        """The answer holds every matching offer: asking for more would not find more."""
        return self.sent_limit is not None and len(self.rows) < self.sent_limit

    def serves(self, index: int, limit: int, handout: int) -> bool:
        """Slice ``index`` and ``limit`` offers are in the answer (or nothing more is)."""
        if self.exhausted:
            return True
        return (index + 1) * handout <= len(self.rows) and limit <= len(self.rows)

    def slice_for(self, index: int, limit: int, handout: int) -> list[dict]:
        if not self.rows:
            return []
        start = (index * handout) % len(self.rows)
        return (self.rows[start:] + self.rows[:start])[:limit]


class SharedSearches:
    """Pools identical offer searches of concurrent jobs (see the module docstring)."""

    def __init__(self, fetch: Fetch, *, handout: int = HANDOUT, fresh: float = FRESH,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._fetch = fetch
        self._handout = handout
        self._fresh = fresh
        self._clock = clock
        self._lock = threading.Lock()
        self._queued: dict[str, _Search] = {}  # per key: the search still taking sharers
        self._answered: dict[str, _Search] = {}  # per key: the latest answer
        self.requests = 0  # searches actually sent (for logs and tests)
        self.served = 0  # callers answered

    def search(self, query: dict, order: list, limit: int, storage_gb: float) -> list[dict]:
        """Offers for ``query``: this caller's own slice first, then the others."""
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
                index = search.join(limit)
            if leader:
                self._lead(key, search, query, order, storage_gb)
            else:
                search.done.wait()
            if search.error is not None:
                raise search.error
            with self._lock:
                if search.serves(index, limit, self._handout):
                    self.served += 1
                    return search.slice_for(index, limit, self._handout)
            # Joined too late for this answer's size: go round (a newer one may serve).

    def _from_answer(self, key: str, limit: int) -> list[dict] | None:
        """A fresh answer's next unused slice, if it holds one for this caller."""
        answer = self._answered.get(key)
        if answer is None or self._clock() - answer.answered_at > self._fresh:
            return None
        if not answer.serves(answer.handed, limit, self._handout):
            return None
        answer.handed += 1
        return answer.slice_for(answer.handed - 1, limit, self._handout)

    def _lead(self, key: str, search: _Search, query: dict, order: list,
              storage_gb: float) -> None:
        """Send the search (the limit is fixed as the request is built) and share the answer."""

        def limit_now() -> int:
            with self._lock:
                if self._queued.get(key) is search:
                    del self._queued[key]  # later callers open the next search
                self.requests += 1
                return search.limit_now(self._handout)

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
