"""Offer search and renting, through the official SDK (string queries and dict queries)."""

from __future__ import annotations

import pytest
import requests
from vastai.api import offers as offers_api
from vastai.api.query import offers_fields

from snakemake_executor_plugin_vastai.simulator import catalog
from snakemake_executor_plugin_vastai.simulator.market import Market, OfferGone
from snakemake_executor_plugin_vastai.vastai.query import QueryError

from .helpers import IMAGE, sdk

pytestmark = pytest.mark.timeout(60)

OFFERS = [
    {
        "id": 101,
        "machine_id": 1,
        "gpu_name": "RTX 4090",
        "num_gpus": 1,
        "dph_total": 0.40,
        "cpu_ram": 32768,
        "geolocation": "Germany, DE",
        "hosting_type": 1,
        "reliability": 0.99,
        "cuda_max_good": 12.4,
    },
    {
        "id": 102,
        "machine_id": 2,
        "gpu_name": "RTX 4090",
        "num_gpus": 2,
        "dph_total": 0.80,
        "cpu_ram": 65536,
        "geolocation": "Poland, PL",
        "hosting_type": 0,
        "reliability": 0.95,
        "cuda_max_good": 12.8,
    },
    {
        "id": 103,
        "machine_id": 3,
        "gpu_name": "RTX 3090",
        "num_gpus": 1,
        "dph_total": 0.20,
        "cpu_ram": 131072,
        "geolocation": "US",
        "hosting_type": 0,
        "reliability": 0.92,
        "verified": False,
        "cuda_max_good": 12.2,
    },
    {
        "id": 104,
        "machine_id": 4,
        "gpu_name": "H100 SXM",
        "num_gpus": 8,
        "dph_total": 20.0,
        "cpu_ram": 1048576,
        "geolocation": "Japan, JP",
        "hosting_type": 1,
        "reliability": 0.999,
    },
    {
        "id": 105,
        "machine_id": 4,
        "gpu_name": "H100 SXM",
        "num_gpus": 4,
        "dph_total": 10.0,
        "cpu_ram": 524288,
        "geolocation": "Japan, JP",
        "hosting_type": 1,
        "reliability": 0.999,
    },
    {
        "id": 106,
        "machine_id": 4,
        "gpu_name": "H100 SXM",
        "num_gpus": 4,
        "dph_total": 10.5,
        "cpu_ram": 524288,
        "geolocation": "Japan, JP",
        "hosting_type": 1,
        "reliability": 0.999,
    },
]


@pytest.fixture
def api(simulator_factory):
    sim = simulator_factory(offers=OFFERS, boot_delay=0.1)
    return sdk(sim)


def ids(offers):
    return sorted(o["id"] for o in offers)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("num_gpus=1", [101, 103]),
        ("gpu_name=RTX_4090", [101, 102]),
        ("gpu_name!=RTX_4090", [103, 104, 105, 106]),
        ("dph_total<0.4", [103]),
        ("dph_total<=0.4", [101, 103]),
        ("dph_total>10", [104, 106]),
        ("dph_total>=10", [104, 105, 106]),
        ("geolocation in [DE,PL]", [101, 102]),
        ("geolocation=US", [103]),
        ("gpu_name notin [RTX_4090,RTX_3090]", [104, 105, 106]),
        ("num_gpus in [2,8]", [102, 104]),
        ("cpu_ram>=64", [102, 103, 104, 105, 106]),  # GB on the way in, MB on the server
        ("cpu_ram<64", [101]),
        ("datacenter=true", [101, 104, 105, 106]),
        ("datacenter=false", [102, 103]),
        ("cuda_vers>=12.4 num_gpus=1", [101]),  # an alias of cuda_max_good
        ("reliability>0.95 num_gpus<8", [101, 105, 106]),
    ],
)
def test_string_query_operators(api, query, expected):
    assert ids(api.search_offers(query, no_default=True, limit=100)) == expected


def test_default_filters_hide_unverified(api):
    assert 103 not in ids(api.search_offers("num_gpus=1", limit=100))
    assert 103 in ids(api.search_offers("num_gpus=1 verified=any", limit=100))


def test_dict_query_with_server_side_alias_and_datacenter(api):
    found = offers_api.search_offers(
        api.client, query={"dph": {"lt": 1.0}, "datacenter": {"eq": True}}, order=[["id", "asc"]]
    )
    assert ids(found) == [101]


def test_ordering_and_limit(api):
    cheap = api.search_offers("num_gpus>=1", order="dph_total", limit=3, no_default=True)
    assert [o["id"] for o in cheap] == [103, 101, 102]
    dear = api.search_offers("num_gpus>=1", order="dph_total-", limit=2, no_default=True)
    assert [o["id"] for o in dear] == [104, 106]
    mixed = api.search_offers("num_gpus>=1", order="num_gpus-,dph_total", limit=3, no_default=True)
    assert [o["id"] for o in mixed] == [104, 105, 106]


def test_datacenter_flag_matches_hosting_type(api):
    for offer in api.search_offers("num_gpus>=1", no_default=True, limit=100):
        assert offer["datacenter"] is (offer["hosting_type"] == 1)


def test_unknown_field_and_operator_are_rejected(api):
    with pytest.raises(requests.HTTPError) as err:
        offers_api.search_offers(api.client, query={"gpu_nmae": {"eq": "RTX 4090"}})
    assert err.value.response.status_code == 400
    assert err.value.response.json()["error"] == "invalid_args"
    with pytest.raises(requests.HTTPError):
        offers_api.search_offers(api.client, query={"num_gpus": {"approx": 1}})


def test_storage_and_bid_pricing(simulator):
    api = sdk(simulator)
    small = {o["id"]: o for o in api.search_offers("num_gpus=1", storage=5, limit=500)}
    big = {o["id"]: o for o in api.search_offers("num_gpus=1", storage=500, limit=500)}
    oid = next(i for i, o in small.items() if o["storage_cost"] > 0)
    extra = small[oid]["storage_cost"] * 495 / 720
    assert big[oid]["dph_total"] == pytest.approx(small[oid]["dph_total"] + extra, abs=1e-5)
    bids = {o["id"]: o for o in api.search_offers("num_gpus=1", type="bid", limit=500)}
    assert bids[oid]["dph_total"] < small[oid]["dph_total"]
    assert bids[oid]["is_bid"] is True


def test_rented_offer_leaves_search_and_comes_back(api):
    iid = api.create_instance(101, image=IMAGE)["new_contract"]
    assert 101 not in ids(api.search_offers("num_gpus>=1", no_default=True, limit=100))
    with pytest.raises(requests.HTTPError) as err:
        api.create_instance(101, image=IMAGE)
    assert err.value.response.status_code == 404
    body = err.value.response.json()  # the documented 404: invalid_args, reason in msg
    assert body["error"] == "invalid_args" and "no_such_ask" in body["msg"]
    api.destroy_instance(iid)
    assert 101 in ids(api.search_offers("num_gpus>=1", no_default=True, limit=100))


def test_renting_takes_the_machines_gpus(api):
    half = api.create_instance(105, image=IMAGE)["new_contract"]
    visible = ids(api.search_offers("gpu_name=H100_SXM", no_default=True, limit=100))
    assert visible == [106]  # the 8-GPU offer needs GPUs 105 holds
    with pytest.raises(requests.HTTPError):
        api.create_instance(104, image=IMAGE)
    api.destroy_instance(half)
    assert ids(api.search_offers("gpu_name=H100_SXM", no_default=True, limit=100)) == [
        104,
        105,
        106,
    ]


def test_create_rejects_bad_payloads(api):
    for payload in (
        {"image": ""},
        {"image": IMAGE, "env": "not-a-dict"},
        {"image": IMAGE, "disk": 1e9},
    ):
        r = requests.put(
            f"{api.client.server_url}/api/v0/asks/101/",
            json=payload,
            headers={"Authorization": f"Bearer {api.client.api_key}"},
            timeout=5,
        )
        assert r.status_code == 400, payload
        assert r.json()["error"] == "invalid_args"
    assert 101 in ids(api.search_offers("num_gpus=1", no_default=True, limit=100))


def test_builtin_catalogue_is_realistic_and_seeded():
    first, again, other = catalog.generate(0), catalog.generate(0), catalog.generate(1)
    assert first == again and first != other
    assert 100 <= len(first) <= 200
    names = {o["gpu_name"] for o in first}
    assert {"RTX 4090", "RTX 3090", "H100 SXM"} <= names
    assert len({o["geolocation"] for o in first}) >= 10
    assert {o["hosting_type"] for o in first} == {0, 1}
    assert {o["num_gpus"] for o in first} >= {1, 2, 4, 8}
    for offer in first:
        assert offers_fields - {"datacenter"} <= set(offer), offers_fields - set(offer)
        assert 0.90 <= offer["reliability"] <= 0.999
        assert offer["cpu_ram"] >= 8 * 1024  # MB
        assert offer["dph_total"] / offer["num_gpus"] < 3.5


def test_builtin_catalogue_searches_like_the_real_one(simulator):
    api = sdk(simulator)
    found = api.search_offers(
        "gpu_name=RTX_4090 num_gpus=1 reliability>0.95 "
        "geolocation in [DE,PL,US,SE,NL,CZ,FR,GB,JP,CA,TW]",
        order="dph_total",
        limit=5,
    )
    assert found, "the built-in market should have single 4090s"
    assert [o["dph_total"] for o in found] == sorted(o["dph_total"] for o in found)
    assert all(o["gpu_name"] == "RTX 4090" and o["num_gpus"] == 1 for o in found)
    default = api.search_offers()
    assert len(default) == 64  # the service's default page size
    assert [o["score"] for o in default] == sorted((o["score"] for o in default), reverse=True)


def test_market_unit_single_use_and_retire():
    market = Market(catalog.load(OFFERS))
    market.take(101, holder=1)
    with pytest.raises(OfferGone):
        market.take(101, holder=2)
    market.release(101)
    market.retire(101)
    assert 101 not in market.available_ids()
    assert market.snatch(102) and not market.snatch(102)
    with pytest.raises(QueryError):
        market.search({"order": [["nonexistent", "asc"]]})
