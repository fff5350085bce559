"""The one retry pacing: exponential backoff with jitter, within a deadline.

Used wherever the plugin waits before trying again (API calls in ``vastai/api.py``,
destroys and label lookups in ``teardown.py``, SSH reconnects in
``transports/ssh.py``, searches in ``driver.py``), so the growth, the cap and
the jitter (which keeps many job threads from retrying in lockstep) are one
decision, not five.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays ``start``, ``start * factor``, ... up to ``cap``, each jittered down."""

    start: float = 0.5
    cap: float = 30.0
    factor: float = 2.0
    jitter: float = 0.5  # a delay is drawn from [delay * (1 - jitter), delay]
    deadline: float | None = None  # time.monotonic() after which no wait is left
    _next: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        self._next = self.start

    def delay(self) -> float:
        """The next wait (never past the deadline), and grow the one after it."""
        wait = self._next * random.uniform(1.0 - self.jitter, 1.0)
        self._next = min(self._next * self.factor, self.cap)
        if self.deadline is not None:
            wait = min(wait, max(self.deadline - time.monotonic(), 0.0))
        return wait

    def reset(self) -> None:
        """Start again from ``start`` (the trouble is over)."""
        self._next = self.start

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline
