"""The one retry pacing: growth, cap, jitter, deadline."""

from __future__ import annotations

import time

from snakemake_executor_plugin_vastai.run.backoff import Backoff


def test_delays_double_up_to_the_cap_and_are_jittered_down_only():
    backoff = Backoff(start=1.0, cap=5.0, jitter=0.5)
    delays = [backoff.delay() for _ in range(6)]
    ceilings = [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling * 0.5 <= delay <= ceiling


def test_no_wait_outlasts_the_deadline():
    backoff = Backoff(start=10.0, deadline=time.monotonic() + 0.2)
    assert backoff.delay() <= 0.2
    assert not backoff.expired()
    time.sleep(0.25)
    assert backoff.expired() and backoff.delay() == 0.0
