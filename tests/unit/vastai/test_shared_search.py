"""Identical offer searches of concurrent jobs share one request (shared_search.py).

The pooling rules are checked with a fetch function the test controls (it
holds the request until the test lets it go, so who joined is certain); the
last tests go through VastAPI and the real SDK to the simulator, whose own
request count is the witness.
"""

from __future__ import annotations

import threading
import time

import pytest

from snakemake_executor_plugin_vastai.vastai.api import VastAPI, VastError
from snakemake_executor_plugin_vastai.vastai.shared_search import SharedSearches

QUERY = {"num_gpus": {"eq": 1}}
ORDER = [["dph_total", "asc"]]
SEARCH_ROUTE = "POST /api/v0/bundles/"


class Market:
    """The far side of a search: offers 0..size-1, best first, held until released."""

    def __init__(self, size: int = 1000) -> None:
        self.size = size
        self.limits: list[int] = []  # the limit of each request, as sent
        self.gate = threading.Event()
        self.gate.set()
        self.arrived = threading.Event()
        self.fail: Exception | None = None

    def fetch(self, query: dict, order: list, limit, storage_gb: float) -> list[dict]:
        self.arrived.set()
        assert self.gate.wait(10), "the test never released the request"
        sent = limit()  # read as the request is built, like VastAPI does
        self.limits.append(sent)
        if self.fail is not None:
            raise self.fail
        return [{"id": i} for i in range(min(sent, self.size))]


def in_threads(count: int, fn) -> list:
    """Run ``fn(i)`` in ``count`` threads at once; their results in thread order."""
    results: list = [None] * count
    barrier = threading.Barrier(count)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = fn(i)
        except Exception as exc:  # returned for the test to look at
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def ids(rows: list[dict]) -> list[int]:
    return [r["id"] for r in rows]


def test_callers_queued_behind_one_search_share_it_and_all_see_the_cheapest_first():
    market = Market()
    market.gate.clear()
    searches = SharedSearches(market.fetch)
    first = threading.Thread(target=lambda: searches.search(QUERY, ORDER, 20, 10.0))
    first.start()
    assert market.arrived.wait(5)  # the leader waits for its slot; the others join it
    results = []
    joined = [threading.Thread(target=lambda: results.append(searches.search(QUERY, ORDER,
                                                                            20, 10.0)))
              for _ in range(9)]
    for thread in joined:
        thread.start()
    time.sleep(0.2)
    market.gate.set()
    for thread in [first, *joined]:
        thread.join(10)
    # one request, sized so that each sees 20 past the nine others' claims
    assert market.limits == [20 + 9]
    assert (searches.requests, searches.served) == (1, 10)
    # the market's order for everyone: claims, not a rotation, decide who rents what
    assert all(ids(rows) == list(range(20)) for rows in results)


def test_the_first_sharer_gets_the_cheapest_offers():
    market = Market()
    searches = SharedSearches(market.fetch)
    assert ids(searches.search(QUERY, ORDER, 20, 10.0)) == list(range(20))


def test_a_newcomer_within_the_fresh_window_is_served_from_the_answer():
    clock = [0.0]
    market = Market()
    searches = SharedSearches(market.fetch, clock=lambda: clock[0])
    first = searches.search(QUERY, ORDER, 20, 10.0)
    clock[0] += 0.5
    second = searches.search(QUERY, ORDER, 10, 10.0)
    assert len(market.limits) == 1
    assert ids(second) == ids(first)[:10] == list(range(10))


def test_a_stale_answer_is_not_reused():
    clock = [0.0]
    market = Market()
    searches = SharedSearches(market.fetch, fresh=1.0, clock=lambda: clock[0])
    searches.search(QUERY, ORDER, 20, 10.0)
    clock[0] += 1.5
    assert ids(searches.search(QUERY, ORDER, 20, 10.0)) == list(range(20))
    assert len(market.limits) == 2


def test_a_larger_limit_asked_later_is_honoured_by_a_new_search():
    market = Market()
    searches = SharedSearches(market.fetch)
    searches.search(QUERY, ORDER, 20, 10.0)
    rows = searches.search(QUERY, ORDER, 60, 10.0)
    assert market.limits == [20, 60]
    assert len(rows) == 60


def test_newcomers_within_the_fresh_window_need_no_search_however_many():
    clock = [0.0]
    market = Market()
    searches = SharedSearches(market.fetch, clock=lambda: clock[0])
    for _ in range(8):
        assert ids(searches.search(QUERY, ORDER, 20, 10.0)) == list(range(20))
    assert market.limits == [20]


def test_a_short_answer_serves_everyone_because_the_market_has_no_more():
    market = Market(size=3)
    searches = SharedSearches(market.fetch)
    results = [searches.search(QUERY, ORDER, 20, 10.0) for _ in range(6)]
    assert market.limits == [20]
    assert all(sorted(ids(r)) == [0, 1, 2] for r in results)


def test_an_empty_answer_is_shared_as_empty():
    market = Market(size=0)
    searches = SharedSearches(market.fetch)
    assert in_threads(5, lambda i: searches.search(QUERY, ORDER, 20, 10.0)) == [[]] * 5


def test_different_queries_are_not_pooled():
    market = Market()
    searches = SharedSearches(market.fetch)
    searches.search(QUERY, ORDER, 20, 10.0)
    searches.search({"num_gpus": {"eq": 2}}, ORDER, 20, 10.0)
    searches.search(QUERY, ORDER, 20, 50.0)  # another disk size prices differently
    searches.search(QUERY, [["dph_total", "desc"]], 20, 10.0)
    assert len(market.limits) == 4


def test_every_sharer_sees_the_failure_of_the_shared_request():
    market = Market()
    market.gate.clear()
    market.fail = VastError("Vast.ai API kept failing for endpoint 'bundles'")
    searches = SharedSearches(market.fetch)
    results: list = []

    def ask() -> None:
        try:
            searches.search(QUERY, ORDER, 20, 10.0)
        except VastError as exc:
            results.append(exc)

    first = threading.Thread(target=ask)
    first.start()
    assert market.arrived.wait(5)
    others = [threading.Thread(target=ask) for _ in range(4)]
    for thread in others:
        thread.start()
    time.sleep(0.2)
    market.gate.set()
    for thread in [first, *others]:
        thread.join(10)
    assert len(results) == 5 and all("bundles" in str(e) for e in results)
    assert len(market.limits) == 1
    market.fail = None  # a failure is not cached: the next caller searches again
    assert len(searches.search(QUERY, ORDER, 20, 10.0)) == 20


@pytest.mark.parametrize("rate_limit", [0.0, 0.25])
def test_twenty_jobs_searching_at_once_send_a_few_searches_and_see_the_cheapest_first(
        simulator_factory, rate_limit):
    """Through the real SDK: the simulator counts the searches it was sent."""
    sim = simulator_factory(rate_limit_interval=rate_limit)
    api = VastAPI(sim.api_key, sim.url, retry_budget=60)
    query = {"rentable": {"eq": True}, "rented": {"eq": False}}
    order = [["dph_total", "asc"]]
    results = in_threads(20, lambda i: api.search_offers(query, order, 20, 10.0))
    assert not [r for r in results if isinstance(r, Exception)], results
    truth = sim.truth()
    sent = truth["requests"].get(SEARCH_ROUTE, 0)
    assert 1 <= sent <= 5, truth["requests"]
    assert truth["rejected"]["429"] <= 1
    prices = [[r["dph_total"] for r in rows] for rows in results]
    assert all(p == sorted(p) for p in prices)  # best first, as the market orders them
    cheapest = min(p[0] for p in prices)
    assert all(p[0] == cheapest for p in prices)  # nobody is sent further down the list
