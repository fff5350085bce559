"""Client-side pacing per Vast.ai endpoint, shared by every job thread of a run.

Vast.ai enforces a minimum interval between two calls to one endpoint with one
API key and refuses a call that comes sooner with HTTP 429, without
``Retry-After``; the body names the interval (``endpoint threshold=<seconds>``).
Waiting for a "not before" time does not survive many threads: they all wake
at that instant, one call wins, the others are refused together, and the herd
repeats until the retry budget is gone. So callers here queue, and the head of
an endpoint's queue is released one interval after the call before it. Calls
leave one interval apart, in the order they asked (retries first), and nobody
fires at the same instant as another.

The interval is learned, per endpoint:

- A refusal that states a threshold sets the interval to that threshold plus
  a margin (our clock and the service's differ by the network's jitter and by
  how late a busy Python thread sends after its release).
- A refusal while we already kept to the stated threshold widens the interval
  by one more margin, up to twice the stated one; a refusal that states none
  multiplies it by ``WIDEN`` (at least ``MIN_STEP``); never beyond ``MAX_INTERVAL``.
- After ``HOLD`` seconds without a refusal, each success takes ``RELAX`` of the
  distance to the floor off the interval. The floor is the stated threshold
  (with its margin) for ``REMEMBER`` seconds after the service last stated it,
  then ``MIN_INTERVAL`` again: the service may have lowered it, and finding
  out costs one refusal.

Even an endpoint that never refused is called at most once per
``MIN_INTERVAL``: when a throttle appears, one early call meets it and teaches
the interval before the rest of a burst is sent.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

MIN_INTERVAL = 0.05  # seconds between calls to one endpoint, always
MAX_INTERVAL = 30.0
MARGIN = 0.1  # share added to a stated threshold
MARGIN_MIN = 0.05  # seconds added at least (a busy Python thread sends late)
WIDEN = 1.25  # factor for a refusal we cannot explain by the stated threshold
MIN_STEP = 0.25  # seconds: the interval after an unexplained refusal, at least
HOLD = 5.0  # seconds without a refusal before the interval relaxes
RELAX = 0.02  # share of (interval - floor) taken off per success after HOLD
REMEMBER = 600.0  # seconds a stated threshold stays the floor

_THRESHOLD = re.compile(r"threshold\s*[=:]\s*([0-9]*\.?[0-9]+)", re.IGNORECASE)


def stated_threshold(text: str) -> float | None:
    """The interval a 429's body names (``endpoint threshold=4.5``), or None."""
    match = _THRESHOLD.search(text or "")
    if match is None:
        return None
    value = float(match.group(1))
    return value if 0 < value <= MAX_INTERVAL else None


def with_margin(threshold: float) -> float:
    return threshold + max(threshold * MARGIN, MARGIN_MIN)


@dataclass
class EndpointPace:
    """One endpoint's queue and what was learned about its interval."""

    interval: float = MIN_INTERVAL
    last_release: float = -math.inf  # when the latest call was let go (or refused)
    not_before: float = -math.inf  # a Retry-After, when the service sends one
    queue: list[_Waiter] = field(default_factory=list)  # the head goes next
    stated: float = 0.0  # the stated threshold with its margin (0: none known)
    stated_at: float = -math.inf
    refused_at: float = -math.inf
    refusals: int = 0
    calls: int = 0

    def floor(self, now: float) -> float:
        remembered = self.stated if now - self.stated_at < REMEMBER else 0.0
        return max(MIN_INTERVAL, remembered)

    def release_at(self) -> float:
        return max(self.last_release + self.interval, self.not_before)

    def place_for(self, waiter: _Waiter) -> int:
        """Where a new waiter queues: retries behind retries, first attempts at the end."""
        if not waiter.retry:
            return len(self.queue)
        return next((i for i, w in enumerate(self.queue) if not w.retry), len(self.queue))


class _Waiter:
    """One caller in an endpoint's queue."""

    __slots__ = ("retry",)

    def __init__(self, retry: bool) -> None:
        self.retry = retry


class RateLimiter:
    """Per-endpoint call slots, one interval apart, shared by all threads of a run."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._endpoints: dict[str, EndpointPace] = {}

    def _pace(self, endpoint: str) -> EndpointPace:
        pace = self._endpoints.get(endpoint)
        if pace is None:
            pace = self._endpoints[endpoint] = EndpointPace()
        return pace

    def wait(self, endpoint: str, *, retry: bool = False) -> float:
        """Queue for the endpoint; return (at this caller's slot) the release time.

        A ``retry`` (the same call again after a refusal or an error) queues ahead of
        first attempts, behind earlier retries: a call already under way should not
        wait behind a whole burst and spend its retry budget there. Pass the
        release time to :meth:`refused` if the call is refused: it tells a call sent
        under what we know now from one sent before we learned it.
        """
        with self._cond:
            pace = self._pace(endpoint)
            me = _Waiter(retry)
            pace.queue.insert(pace.place_for(me), me)
            try:
                while True:
                    now = self._clock()
                    if pace.queue[0] is me:
                        delay = pace.release_at() - now
                        if delay <= 0:
                            pace.queue.pop(0)
                            pace.last_release = now
                            pace.calls += 1
                            self._cond.notify_all()  # the next in line computes its slot
                            return now
                        self._cond.wait(delay)  # woken early if the interval changes
                    else:
                        self._cond.wait()
            except BaseException:  # interrupted in the queue: do not hold up those behind
                pace.queue.remove(me)
                self._cond.notify_all()
                raise

    def refused(self, endpoint: str, detail: str = "", retry_after: float | None = None,
                released: float | None = None) -> float:
        """Learn from a 429 (its body in ``detail``); return the endpoint's new interval.

        ``released`` is what :meth:`wait` returned for the refused call. A call let go
        before the previous refusal was learned from belongs to the same wave: it
        teaches a stated threshold but does not widen the interval again.
        """
        with self._cond:
            pace = self._pace(endpoint)
            now = self._clock()
            stated = stated_threshold(detail)
            same_wave = released is not None and released < pace.refused_at
            if stated is not None and with_margin(stated) > pace.interval:
                pace.interval = with_margin(stated)
            elif not same_wave:  # we kept to what we knew and were refused anyway: widen
                pace.interval = min(self._widened(pace, stated), MAX_INTERVAL)
            if stated is not None:
                pace.stated, pace.stated_at = with_margin(stated), now
            if retry_after is not None:
                pace.not_before = max(pace.not_before, now + retry_after)
            pace.last_release = max(pace.last_release, now)
            pace.refused_at = now
            pace.refusals += 1
            self._cond.notify_all()  # waiting heads re-read the interval
            return pace.interval

    @staticmethod
    def _widened(pace: EndpointPace, stated: float | None) -> float:
        """One more margin if the service told us its threshold (our own lateness is the
        likely cause), else ``WIDEN`` times as long (at least ``MIN_STEP``)."""
        if stated is not None:  # at most twice what it says: more would not be lateness
            return min(pace.interval + (with_margin(stated) - stated), 2 * with_margin(stated))
        return max(pace.interval * WIDEN, MIN_STEP)

    def succeeded(self, endpoint: str) -> None:
        """A call went through: after a quiet spell, relax the interval a little."""
        with self._cond:
            pace = self._pace(endpoint)
            now = self._clock()
            if now - pace.refused_at < HOLD:
                return
            floor = pace.floor(now)
            if pace.interval > floor:
                pace.interval = max(floor, pace.interval - (pace.interval - floor) * RELAX)

    def interval(self, endpoint: str) -> float:
        """The endpoint's current interval (seconds between released calls)."""
        with self._cond:
            return self._pace(endpoint).interval

    def snapshot(self) -> dict[str, dict[str, float]]:
        """Interval, calls and refusals per endpoint, for logs and benchmarks."""
        with self._cond:
            return {name: {"interval": round(p.interval, 4), "calls": p.calls,
                           "refusals": p.refusals}
                    for name, p in sorted(self._endpoints.items())}
