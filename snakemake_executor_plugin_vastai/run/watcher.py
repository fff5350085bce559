"""Instance status for every job from one batched listing per tick.

Polling each job's instance separately would cost one API request per job per
tick; Vast.ai rate-limits per endpoint, so 200 booting jobs would throttle
themselves. One paged listing of the account's instances (filtered locally
to this workflow's label prefix) answers for all of them.

The watcher must outlive any answer: a truncated body, an HTML page with
status 200 or a row of an unexpected shape costs one tick (logged, counted in
:attr:`InstanceWatcher.failures`), never the thread. Jobs that wait on it see
:attr:`InstanceWatcher.failing_since` and take the API-outage path once the
listing has failed for longer than the API's retry budget.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..vastai.api import VastAPI, by_id


@dataclass(frozen=True)
class Sighting:
    """What the latest listing said about one instance."""

    row: dict | None  # None: absent from the listing (gone, or never seen)
    generation: int  # which listing said so
    at: float  # time.monotonic() of that listing


class InstanceWatcher:
    """A daemon thread that lists instances while anybody watches one."""

    def __init__(self, api: VastAPI, label_prefix: str, interval: float,
                 on_error: Callable[[Exception], None] | None = None) -> None:
        self._api = api
        self._prefix = label_prefix
        self.interval = interval
        self._on_error = on_error
        self._rows: dict[int, dict] = {}
        self._generation = 0
        self._listed_at = 0.0
        self._watched: dict[int, int] = {}  # instance id -> generation when watching began
        self._in_flight = False  # a listing request is out (it may predate a new instance)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures = 0  # ticks that ended in an error
        self.failing_since: float | None = None  # monotonic time of the first failure in a row

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="vastai-watcher",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def watch(self, instance_id: int) -> None:
        """Start following an instance; the next tick comes promptly."""
        with self._cond:
            # A listing already on its way may have been taken before this instance
            # existed: its silence must not read as "vanished", so it does not count.
            since = self._generation + (1 if self._in_flight else 0)
            self._watched.setdefault(instance_id, since)
        self._wake.set()

    def unwatch(self, instance_id: int) -> None:
        with self._cond:
            self._watched.pop(instance_id, None)

    def sighting(self, instance_id: int) -> Sighting | None:
        """The newest listing's word on this instance, if one was taken since watching."""
        with self._cond:
            since = self._watched.get(instance_id)
            if since is None or self._generation <= since:
                return None
            return Sighting(self._rows.get(instance_id), self._generation, self._listed_at)

    def wait_next(self, after_generation: int, timeout: float) -> int:
        """Block until a listing newer than ``after_generation`` (or timeout/stop)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._generation <= after_generation and not self._stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return self._generation

    @property
    def generation(self) -> int:
        with self._cond:
            return self._generation

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                busy = bool(self._watched)
            if busy:
                self._tick()
            self._wake.wait(self.interval if busy else 1.0)
            self._wake.clear()

    def _tick(self) -> None:
        with self._cond:
            self._in_flight = True
        try:
            rows = by_id(self._api.list_instances(self._prefix))
        except Exception as exc:  # any answer at all must not end the watcher
            with self._cond:
                self._in_flight = False
            self.failures += 1
            self.failing_since = self.failing_since or time.monotonic()
            if self._on_error:
                with contextlib.suppress(Exception):
                    self._on_error(exc)
            return
        self.failing_since = None
        with self._cond:
            self._in_flight = False
            self._rows = rows
            self._generation += 1
            self._listed_at = time.monotonic()
            self._cond.notify_all()
