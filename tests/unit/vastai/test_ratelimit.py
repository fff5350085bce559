"""The client-side limiter (ratelimit.py): slots one interval apart, learned from 429s.

The threaded tests use real time with short intervals (a few tenths of a second
per test); the learning and relaxing rules use an injected clock. The last test
puts the limiter in front of the simulator's per-endpoint throttle, through the
real SDK: a burst of calls then meets almost no 429.
"""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from snakemake_executor_plugin_vastai.vastai import ratelimit
from snakemake_executor_plugin_vastai.vastai.api import VastAPI
from snakemake_executor_plugin_vastai.vastai.ratelimit import (
    RateLimiter,
    stated_threshold,
    with_margin,
)

BODY = "HTTP 429 detail=API requests too frequent endpoint threshold={t}"
SLACK = 0.005  # seconds: timer resolution of Condition.wait, below any interval here


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def release_times(limiter: RateLimiter, endpoint: str, threads: int) -> list[float]:
    """Start ``threads`` callers at the same instant; the times they were let go, sorted."""
    barrier = threading.Barrier(threads)
    times: list[float] = []
    lock = threading.Lock()

    def call() -> None:
        barrier.wait()
        released = limiter.wait(endpoint)
        with lock:
            times.append(released)

    workers = [threading.Thread(target=call) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    assert len(times) == threads, "a caller never got its slot"
    return sorted(times)


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def test_many_threads_asking_at_once_are_let_go_one_interval_apart():
    limiter = RateLimiter()
    interval = limiter.refused("bundles", BODY.format(t=0.06))
    assert interval == pytest.approx(with_margin(0.06))
    times = release_times(limiter, "bundles", 25)
    assert min(gaps(times)) >= interval - SLACK, gaps(times)
    # ...and not much more: the queue does not idle between slots.
    assert times[-1] - times[0] <= 24 * interval + 1.0


def test_even_an_endpoint_that_never_refused_is_not_called_twice_at_the_same_instant():
    times = release_times(RateLimiter(), "asks", 10)
    assert min(gaps(times)) >= ratelimit.MIN_INTERVAL - SLACK, gaps(times)


def test_waiting_callers_are_spaced_by_an_interval_learned_while_they_wait():
    """Callers queued under the old interval must not keep their old slots."""
    limiter = RateLimiter()
    found: list[float] = []
    worker = threading.Thread(target=lambda: found.extend(release_times(limiter, "asks", 8)))
    worker.start()
    time.sleep(0.08)  # one or two went at the minimum interval
    learned = limiter.refused("asks", BODY.format(t=0.15))
    refused_at = time.monotonic()
    worker.join(30)
    later = [t for t in found if t > refused_at - SLACK]
    assert len(later) >= 5, found
    assert later[0] >= refused_at + learned - 2 * SLACK
    assert min(gaps(later)) >= learned - SLACK, gaps(found)


def test_endpoints_are_paced_independently():
    limiter = RateLimiter()
    limiter.refused("bundles", BODY.format(t=5))
    start = time.monotonic()
    limiter.wait("asks")
    limiter.wait("asks")
    assert time.monotonic() - start < 1.0
    assert limiter.interval("asks") == ratelimit.MIN_INTERVAL


@pytest.mark.parametrize(("text", "seconds"), [
    ("HTTP 429 detail=API requests too frequent endpoint threshold=4.5", 4.5),
    ('{"detail": "API requests too frequent endpoint threshold=0.25"}', 0.25),
    ("threshold: 2", 2.0),
    ("HTTP 429 detail=slow down", None),
    ("threshold=0", None),
    ("", None),
])
def test_the_threshold_is_read_from_the_429_body(text, seconds):
    assert stated_threshold(text) == seconds


def test_a_stated_threshold_becomes_the_interval_with_a_margin():
    limiter = RateLimiter(clock=Clock())
    assert limiter.refused("bundles", BODY.format(t=0.25)) == pytest.approx(0.30)
    assert limiter.refused("asks", BODY.format(t=4.5)) == pytest.approx(4.95)


def test_refusals_of_calls_sent_before_the_lesson_do_not_widen_it_again():
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    early = [clock.now, clock.now + 0.05, clock.now + 0.1]  # a wave released at the minimum
    clock.now += 0.12
    learned = limiter.refused("asks", BODY.format(t=0.25), released=early[0])
    for released in early[1:]:
        clock.now += 0.01
        assert limiter.refused("asks", BODY.format(t=0.25), released=released) == learned


def test_a_refusal_at_the_learned_interval_widens_it():
    """Jitter, or another program on the same key: what the body says is not enough."""
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    learned = limiter.refused("asks", BODY.format(t=0.25))
    clock.now += 1.0
    widened = limiter.refused("asks", BODY.format(t=0.25), released=clock.now - 0.01)
    assert widened == pytest.approx(learned + (with_margin(0.25) - 0.25))


def test_a_refusal_without_a_threshold_widens_to_at_least_the_minimum_step():
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    first = limiter.refused("asks", "HTTP 429 detail=slow down")
    assert first == ratelimit.MIN_STEP
    clock.now += 1.0
    assert limiter.refused("asks", "HTTP 429", released=clock.now) == pytest.approx(
        ratelimit.MIN_STEP * ratelimit.WIDEN)


def test_the_interval_never_grows_past_the_maximum():
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    for _ in range(100):
        clock.now += 1.0
        interval = limiter.refused("asks", "HTTP 429", released=clock.now)
    assert interval == ratelimit.MAX_INTERVAL


def test_successes_relax_slowly_after_a_quiet_spell_but_not_below_the_stated_threshold():
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    limiter.refused("asks", BODY.format(t=0.25))
    clock.now += 1.0
    widened = limiter.refused("asks", BODY.format(t=0.25), released=clock.now)
    limiter.succeeded("asks")
    assert limiter.interval("asks") == widened  # no relaxing right after a refusal
    clock.now += ratelimit.HOLD + 0.1
    limiter.succeeded("asks")
    once = limiter.interval("asks")
    assert with_margin(0.25) < once < widened
    assert widened - once == pytest.approx((widened - with_margin(0.25)) * ratelimit.RELAX)
    for _ in range(1000):
        limiter.succeeded("asks")
    assert limiter.interval("asks") == pytest.approx(with_margin(0.25))


def test_a_stated_threshold_is_forgotten_after_a_while_so_a_lowered_limit_is_found():
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    limiter.refused("asks", BODY.format(t=0.25))
    clock.now += ratelimit.REMEMBER + 1
    for _ in range(2000):
        limiter.succeeded("asks")
    assert limiter.interval("asks") == pytest.approx(ratelimit.MIN_INTERVAL)


def test_a_retry_after_header_holds_the_endpoint_back():
    limiter = RateLimiter()
    limiter.refused("asks", "HTTP 429", retry_after=0.3)
    start = time.monotonic()
    limiter.wait("asks")
    assert time.monotonic() - start >= 0.3 - SLACK


def burst(api: VastAPI, threads: int) -> list[BaseException]:
    """``threads`` callers of one endpoint at the same instant; the errors they met."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def call() -> None:
        barrier.wait()
        try:
            api.check_access()
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    workers = [threading.Thread(target=call) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    return errors


def test_bursts_against_the_simulators_throttle_succeed_and_429s_stay_rare(simulator_factory):
    """30 threads call one endpoint at once through VastAPI, twice; the service accepts one
    call per 0.05 s. The old pacer woke every waiting thread at the same instant: one call
    won, the rest were refused again, and calls ran out of their 20 s budget."""
    sim = simulator_factory(rate_limit_interval=0.05)
    api = VastAPI(sim.api_key, sim.url, retry_budget=60)
    assert burst(api, 30) == []
    # Learning costs the calls sent before the first refusal came back (round trip /
    # MIN_INTERVAL of them: under load, several); then the queue keeps to the interval.
    learned = sim.truth()["rejected"]["429"]
    assert learned >= 1
    assert api.pacer.interval("users/current") >= with_margin(0.05)
    assert burst(api, 30) == []
    again = sim.truth()["rejected"]["429"] - learned
    assert again <= 2, (again, api.pacer.snapshot())


def test_a_caller_interrupted_in_the_queue_does_not_hold_up_those_behind_it():
    limiter = RateLimiter()
    limiter.refused("asks", BODY.format(t=0.2))
    limiter.wait("asks")  # the head is now held for one interval

    class Interrupt(BaseException):
        pass

    def interrupted(delay: float | None = None) -> bool:
        raise Interrupt

    # The next caller is interrupted while waiting for its slot (as by Ctrl-C).
    real_wait = limiter._cond.wait
    limiter._cond.wait = interrupted
    with pytest.raises(Interrupt):
        limiter.wait("asks")
    limiter._cond.wait = real_wait
    done = threading.Event()
    threading.Thread(target=lambda: (limiter.wait("asks"), done.set()), daemon=True).start()
    assert done.wait(5), "the queue stalled behind an interrupted caller"


def test_a_retry_goes_ahead_of_first_attempts_queued_behind_a_burst():
    """A refused call must not wait behind the whole burst (and spend its budget there)."""
    limiter = RateLimiter()
    limiter.refused("asks", BODY.format(t=0.1))
    order: list[str] = []
    lock = threading.Lock()

    def call(name: str, retry: bool) -> None:
        limiter.wait("asks", retry=retry)
        with lock:
            order.append(name)

    limiter.wait("asks")  # the endpoint is busy for one interval
    first = [threading.Thread(target=call, args=(f"first-{i}", False)) for i in range(5)]
    for thread in first:
        thread.start()
    time.sleep(0.05)  # all five are queued
    retry = threading.Thread(target=call, args=("retry", True))
    retry.start()
    for thread in [*first, retry]:
        thread.join(10)
    assert order.index("retry") <= 1, order  # at most the head already released goes first


def test_refusals_at_a_stated_threshold_widen_it_at_most_to_twice_that():
    """Refusals that keep coming at twice the stated interval are not our lateness."""
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    for _ in range(50):
        clock.now += 1.0
        interval = limiter.refused("asks", BODY.format(t=0.25), released=clock.now)
    assert interval == pytest.approx(2 * with_margin(0.25))


def test_a_long_queue_for_an_endpoint_is_reported_as_a_wait_once_not_per_call(
        simulator_factory):
    """Under the documented 4.5 s create interval 50 creates queue for nearly four minutes:
    the run says it is waiting (once per endpoint and spell), never that it failed."""
    sim = simulator_factory(rate_limit_intervals={"GET /api/v0/users/current": 0.3})
    waits: list[tuple[str, float, float]] = []
    api = VastAPI(sim.api_key, sim.url, retry_budget=30,
                  on_wait=lambda *w: waits.append(w), wait_reported=0.5)
    assert burst(api, 6) == []
    assert len(waits) == 1, waits
    endpoint, waited, interval = waits[0]
    assert endpoint == "users/current" and waited >= 0.5 and interval >= 0.3
