"""The start-up market check: one search per distinct request, the rules nothing serves,
GPU names as a person reads them (run/market_check.py, against the simulator's own query
semantics in vastai/query.py, the edge the tests trust)."""

from __future__ import annotations

import pytest

from snakemake_executor_plugin_vastai.run.market_check import (
    MarketCheckError,
    RuleRequest,
    check_market,
)
from snakemake_executor_plugin_vastai.vastai.offers import (
    OfferSettings,
    build_offer_request,
    gpu_key,
)
from snakemake_executor_plugin_vastai.vastai.query import offer_fits

MARKET = [
    {"id": 1, "gpu_name": "RTX 3090", "num_gpus": 1, "dph_total": 0.17},
    {"id": 2, "gpu_name": "RTX 4090", "num_gpus": 2, "dph_total": 0.70},
    {"id": 3, "gpu_name": "H100 SXM", "num_gpus": 8, "dph_total": 20.0},
]
BASE = {"verified": True, "external": False, "rentable": True, "rented": False,
        "hosting_type": 1, "reliability": 0.99, "cpu_cores_effective": 32, "cpu_ram": 262144,
        "disk_space": 500.0, "cuda_max_good": 12.4, "geolocation": "Germany, DE"}


class Market:
    def __init__(self) -> None:
        self.calls = 0

    def search(self, query, order, limit, storage_gb):
        self.calls += 1
        found = [o for o in ({**BASE, **m} for m in MARKET) if offer_fits(o, query)]
        return sorted(found, key=lambda o: o["dph_total"])[:limit]


def requests(**by_rule) -> dict[str, RuleRequest]:
    out: dict[str, RuleRequest] = {}
    for rule, resources in by_rule.items():
        request = build_offer_request(OfferSettings(), resources, 1, rule=rule, limit=1)
        entry = out.setdefault(repr(sorted(request.query.items())), RuleRequest(request))
        entry.rules.append(rule)
    return out


def test_gpu_names_compare_as_a_person_reads_them():
    assert gpu_key("rtx_4090") == gpu_key("RTX 4090") == gpu_key("Rtx-4090")
    assert gpu_key("RTX 4090") != gpu_key("RTX 4080")


def test_rules_asking_the_same_share_one_search_and_pass():
    market = Market()
    found = check_market(requests(a={"gpu": 1}, b={"gpu": 1}), market.search, [])
    assert market.calls == 1 and found.searches == 1
    assert found.gpu_names == {}


def test_a_misspelt_gpu_names_the_rule_and_what_the_market_calls_close():
    market = Market()
    with pytest.raises(MarketCheckError) as err:
        check_market(requests(ok={"gpu": 1}, train={"gpu": 1, "gpu_model": "RTX_3909"}),
                     market.search, [])
    text = str(err.value)
    assert "rule train: no Vast.ai offer matches" in text and "rule ok" not in text
    assert "did you mean 'RTX 3090'" in text
    assert "closest offers: 1x RTX 3090 at $0.170/h" in text


def test_more_gpus_than_any_offer_lists_the_closest_offers():
    with pytest.raises(MarketCheckError, match=r"rule big: .*closest offers: 1x RTX 3090"):
        check_market(requests(big={"gpu": 64}), Market().search, [])


def test_another_spelling_of_a_market_gpu_is_learnt_not_refused():
    found = check_market(requests(t={"gpu": 1, "gpu_model": "rtx-3090"}), Market().search, [])
    assert found.gpu_names == {"rtx3090": "RTX 3090"}


def test_a_live_instance_of_the_workflow_that_fits_lets_the_rule_pass():
    """A restart whose crashed run holds the only matching machine: it may re-attach."""
    held = [{"gpu_name": "A100", "num_gpus": 4}]
    check_market(requests(t={"gpu": 4, "gpu_model": "A100"}), Market().search, held)
    with pytest.raises(MarketCheckError):
        check_market(requests(t={"gpu": 4, "gpu_model": "A100"}), Market().search, [])
