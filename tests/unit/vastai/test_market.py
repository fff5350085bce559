"""The run's offer market without a simulator: claims in rank order, the latest prices,
the run's own instances, and the vacancies that wake waiting jobs (market.py)."""

from __future__ import annotations

import threading
import time

from snakemake_executor_plugin_vastai.simulator.catalog import normalize
from snakemake_executor_plugin_vastai.vastai.market import OfferMarket, Vacancies
from snakemake_executor_plugin_vastai.vastai.offers import OfferSettings, build_offer_request

# Complete offers (every field a query may filter on), cheapest first.
OFFERS = [normalize({"id": 10 + i, "dph_total": round(0.1 * (i + 1), 2), "num_gpus": 1,
                     "gpu_name": "RTX 3090", "hosting_type": 1}) for i in range(5)]


class Api:
    """The far side of a search: always the same five offers, cheapest first."""

    def __init__(self):
        self.searches = 0

    def search_offers(self, query, order, limit, storage_gb, bid=False):
        self.searches += 1
        return [dict(o) for o in OFFERS[:limit]]


def market() -> tuple[OfferMarket, Api]:
    api = Api()
    return OfferMarket(api, journal=None, settings=OfferSettings(), run_id="r"), api


REQUEST = build_offer_request(OfferSettings(), {"gpu": 1})


def test_concurrent_claimants_take_the_cheapest_offers_in_rank_order():
    m, _api = market()
    taken: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(4)

    def job():
        barrier.wait()
        for offer in m.search(REQUEST, 20):  # what the driver's renting step walks
            if m.claim(offer):
                with lock:
                    taken.append(offer["id"])
                return

    threads = [threading.Thread(target=job) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert sorted(taken) == [10, 11, 12, 13]  # the four cheapest, nobody skipped ahead


def test_the_cheapest_free_offer_comes_from_the_latest_answer_while_it_is_recent():
    m, api = market()
    assert m.cheapest_free(REQUEST, 60) == (None, False)  # nothing known: search first
    m.search(REQUEST, 20)
    assert m.claim(OFFERS[0])
    offer, known = m.cheapest_free(REQUEST, 60)
    assert known and offer["id"] == 11  # the claimed one is not free
    time.sleep(0.02)
    assert m.cheapest_free(REQUEST, 0.01) == (None, False)  # too old to stand for the market
    assert api.searches == 1


def test_the_run_holds_an_instance_that_fits_through_a_claim_or_the_pool():
    m, _api = market()
    assert not m.own_instance_fits(REQUEST)
    m.claim(OFFERS[2])
    assert m.own_instance_fits(REQUEST)
    assert not m.own_instance_fits(build_offer_request(OfferSettings(), {"gpu": 2}))
    m.release(OFFERS[2]["id"])
    assert not m.own_instance_fits(REQUEST)
    m.own_offers = lambda: [OFFERS[4]]  # an idle warm instance
    assert m.own_instance_fits(REQUEST)


def test_a_release_wakes_a_waiter_and_a_notification_before_the_wait_is_not_lost():
    vacancies = Vacancies()
    seen = vacancies.seen()
    vacancies.notify()  # between a job's look and its wait
    assert vacancies.wait(seen, 0.01) is True
    seen = vacancies.seen()
    assert vacancies.wait(seen, 0.05) is False
    m, _api = market()
    seen = m.vacancies.seen()
    threading.Timer(0.05, lambda: m.release(10)).start()
    start = time.monotonic()
    assert m.vacancies.wait(seen, 5) is True
    assert time.monotonic() - start < 2


def test_an_instance_known_only_by_its_journaled_facts_counts_as_possibly_fitting():
    """A re-attached instance: GPU, count and price are journaled, not the whole offer. What
    is unknown must not rule it out (the job waits for it), what is known still does."""
    m, _api = market()
    m.own_offers = lambda: [{"gpu_name": "RTX 3090", "num_gpus": 1, "dph_total": 0.2}]
    assert m.own_instance_fits(REQUEST)
    assert not m.own_instance_fits(build_offer_request(OfferSettings(), {"gpu": 2}))
