"""A tiny per-instance scheduler: run callbacks at given times on one thread.

Each simulated instance owns one ``Timeline``, so its lifecycle steps (boot phases, faults
firing, the entrypoint's exit) happen one at a time and in order, and a slow step of one
instance (starting its SSH server, killing its processes) never delays another instance.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Timeline:
    """Callbacks scheduled by delay, run in time order on a private daemon thread."""

    def __init__(self, name: str) -> None:
        self._cv = threading.Condition()
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def after(self, delay: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` ``delay`` seconds from now (0: as soon as the thread is free)."""
        when = time.monotonic() + max(delay, 0.0)
        with self._cv:
            if not self._stopped:
                heapq.heappush(self._heap, (when, next(self._seq), fn))
                self._cv.notify()

    def clear(self) -> None:
        """Forget everything scheduled (a reboot starts a new timeline of events)."""
        with self._cv:
            self._heap.clear()

    def on_thread(self) -> bool:
        """Whether the caller is this timeline's own thread."""
        return threading.current_thread() is self._thread

    def stop(self, timeout: float = 10.0) -> None:
        """Stop running callbacks; waits for a running one unless called from inside it."""
        with self._cv:
            self._stopped = True
            self._heap.clear()
            self._cv.notify()
        if self._thread.is_alive() and not self.on_thread():
            self._thread.join(timeout)

    @property
    def stopped(self) -> bool:
        return self._stopped

    def _next(self) -> Callable[[], None] | None:
        """Block until the next callback is due; None once stopped."""
        with self._cv:
            while not self._stopped:
                now = time.monotonic()
                if self._heap and self._heap[0][0] <= now:
                    return heapq.heappop(self._heap)[2]
                timeout = self._heap[0][0] - now if self._heap else None
                self._cv.wait(timeout)
            return None

    def _run(self) -> None:
        while (fn := self._next()) is not None:
            try:
                fn()
            except Exception:
                log.exception("simulated instance step %r failed", fn)
