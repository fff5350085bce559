"""Settings + job resources -> the Vast.ai offer search (offers.py).

Each mapping row is checked with exact filter entries. The produced request
is also sent through the real SDK (only the socket is faked) and compared
with what the SDK's own parser makes of ``request.text``.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import requests
from vastai.api import offers as sdk_offers
from vastai.api.client import VastClient, VastSession
from vastai.api.query import offers_alias, offers_fields, offers_mult, parse_query
from vastai.utils import _regions, preprocess_search_query

from snakemake_executor_plugin_vastai.vastai.offers import (
    REGIONS,
    SDK_DEFAULTS,
    OfferRequest,
    OfferSettings,
    build_offer_request,
    describe,
    ram_mib,
)
from snakemake_executor_plugin_vastai.workflow.validation import ConfigError

BASE = {
    "verified": {"eq": True},
    "external": {"eq": False},
    "rentable": {"eq": True},
    "rented": {"eq": False},
    "datacenter": {"eq": True},
    "reliability": {"gte": 0.98},
    "num_gpus": {"eq": 1},
    "cpu_cores_effective": {"gte": 1},
    "disk_space": {"gte": 40.0},
}


def build(resources=None, threads=1, **settings) -> OfferRequest:
    return build_offer_request(OfferSettings(**settings), resources or {}, threads, rule="train")


# -- defaults --------------------------------------------------------------------------
def test_defaults_rent_one_gpu_on_a_reliable_verified_datacenter_host_cheapest_first():
    request = build()
    assert request.query == BASE
    assert request.order == [["dph_total", "asc"]]
    assert request.limit == 20
    assert request.storage_gb == 40


def test_sdk_defaults_are_explicit_so_no_default_searches_keep_them():
    assert all(request_filter in build().query.items() for request_filter in SDK_DEFAULTS.items())


def test_the_request_does_not_share_dicts_with_module_constants():
    build().query["verified"]["eq"] = False
    assert build().query["verified"] == {"eq": True}


# -- per-job resources -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("resources", "gpus"),
    [({"gpu": 2}, 2), ({"nvidia_gpu": 4}, 4), ({"gpu": "2"}, 2), ({"gpu": 3.0}, 3),
     ({"gpu": 2, "nvidia_gpu": 2}, 2), ({}, 1)],
)  # fmt: skip
def test_gpu_resources_become_an_exact_gpu_count(resources, gpus):
    assert build(resources).query["num_gpus"] == {"eq": gpus}


def test_gpu_model_resource_overrides_the_gpu_name_setting():
    request = build({"gpu_model": "H100_SXM"}, gpu_name="RTX_4090")
    assert request.query["gpu_name"] == {"eq": "H100 SXM"}
    assert "gpu_name=H100_SXM" in request.text
    assert "RTX" not in request.text


def test_gpu_name_setting_applies_when_the_rule_names_no_model():
    assert build(gpu_name="RTX_4090").query["gpu_name"] == {"eq": "RTX 4090"}


def test_gpu_model_with_spaces_is_read_as_vast_naming():
    assert build({"gpu_model": "RTX 4090"}).query["gpu_name"] == {"eq": "RTX 4090"}


def test_no_gpu_model_means_any_model():
    assert "gpu_name" not in build().query


def test_threads_become_effective_cpu_cores():
    assert build(threads=8).query["cpu_cores_effective"] == {"gte": 8}


@pytest.mark.parametrize(
    ("mem_mb", "mib"), [(8000, 7630), (1, 1), (1048.576, 1000), ("2000", 1908)]
)
def test_mem_mb_becomes_a_cpu_ram_minimum_in_mib(mem_mb, mib):
    assert build({"mem_mb": mem_mb}).query["cpu_ram"] == {"gte": mib}


def test_mib_conversion_rounds_up_so_the_job_never_gets_less_than_it_asked():
    assert ram_mib(1000) * 2**20 >= 1000 * 10**6
    assert (ram_mib(1000) - 1) * 2**20 < 1000 * 10**6


def test_cpu_ram_text_means_the_same_to_the_sdk_parser():
    request = build({"mem_mb": 8000})
    assert "cpu_ram>=7.63" in request.text
    parsed = parse_query("cpu_ram>=7.63", {}, offers_fields, offers_alias, offers_mult)
    assert parsed["cpu_ram"]["gte"] == pytest.approx(7630)


def test_no_or_zero_mem_mb_sets_no_ram_filter():
    assert "cpu_ram" not in build({"mem_mb": 0}).query
    assert "cpu_ram" not in build().query


@pytest.mark.parametrize(
    ("disk_gb", "disk_mb", "storage"),
    [(40, None, 40.0), (40, 10_000, 40.0), (40, 100_000, 100.0), (40, 50_500, 50.5),
     (120, 100_000, 120.0)],
)  # fmt: skip
def test_disk_allocation_is_the_larger_of_the_setting_and_disk_mb(disk_gb, disk_mb, storage):
    resources = {} if disk_mb is None else {"disk_mb": disk_mb}
    request = build(resources, disk_gb=disk_gb)
    assert request.storage_gb == storage
    assert request.query["disk_space"] == {"gte": storage}


def test_vastai_query_resource_is_appended_verbatim():
    request = build({"vastai_query": "cuda_vers>=12.4  inet_down>=500"})
    assert request.query["cuda_max_good"] == {"gte": 12.4}
    assert request.query["inet_down"] == {"gte": 500}
    assert request.text.endswith("cuda_vers>=12.4  inet_down>=500")


# -- settings --------------------------------------------------------------------------
def test_max_price_caps_dph_total():
    assert build(max_price=0.5).query["dph_total"] == {"lte": 0.5}
    assert "dph_total" not in build().query


def test_reliability_setting_and_zero_disables_it():
    assert build(reliability=0.9).query["reliability"] == {"gte": 0.9}
    assert "reliability" not in build(reliability=0).query


def test_datacenter_only_unless_hobbyists_are_allowed():
    assert build().query["datacenter"] == {"eq": True}
    assert "datacenter" not in build(allow_hobbyist=True).query


def test_search_query_setting_is_parsed_with_the_vastai_syntax():
    request = build(search_query="gpu_ram>=24 static_ip=true")
    assert request.query["gpu_ram"] == {"gte": 24000.0}  # the SDK's GB -> API unit
    assert request.query["static_ip"] == {"eq": True}


def test_rule_query_comes_after_search_query_and_wins_on_the_same_operator():
    request = build({"vastai_query": "cuda_vers>=12.6"}, search_query="cuda_vers>=12.0")
    assert request.query["cuda_max_good"] == {"gte": 12.6}


def test_user_queries_override_and_remove_our_filters_like_the_cli_does():
    request = build({"vastai_query": "reliability>=0.9 verified=any"})
    assert request.query["reliability"] == {"gte": 0.9}
    assert "verified" not in request.query


# -- geolocation -----------------------------------------------------------------------
def test_region_shortcut_expands_to_the_sdk_region_table():
    request = build(geolocation="EU")
    assert request.query["geolocation"] == {"in": _regions["EU"].split(",")}
    assert {"AF", "AS", "EU", "LC", "NA", "OC"} == set(REGIONS)


def test_region_expansion_matches_the_vastai_cli_georegion_directive():
    _, _, cli = preprocess_search_query("geolocation=NA georegion=true")
    cli_query = parse_query(cli, {}, offers_fields, offers_alias, offers_mult)
    assert build(geolocation="NA").query["geolocation"] == cli_query["geolocation"]


@pytest.mark.parametrize(
    ("value", "codes"),
    [("PL,DE,CZ", ["PL", "DE", "CZ"]), ("pl, de", ["PL", "DE"]), ("US", ["US"]),
     ("NA,CA,MX", ["CA", "US", "MX"])],
)  # fmt: skip
def test_country_code_lists_become_an_in_filter(value, codes):
    assert build(geolocation=value).query["geolocation"] == {"in": codes}


def test_blank_geolocation_means_anywhere():
    assert "geolocation" not in build(geolocation=" ").query


# -- exclusions and order --------------------------------------------------------------
def test_machines_that_failed_the_job_are_excluded():
    request = build_offer_request(OfferSettings(), {}, exclude_machines=[42, 7, 42])
    assert request.query["machine_id"] == {"notin": [7, 42]}
    assert request.text.endswith("machine_id notin [7,42]")


def test_exclusions_merge_with_the_users_own_and_cannot_be_lifted_by_a_query():
    settings = OfferSettings(search_query="machine_id notin [3]")
    merged = build_offer_request(settings, {"vastai_query": "machine_id=any"}, exclude_machines=[9])
    assert merged.query["machine_id"] == {"notin": [9]}
    kept = build_offer_request(settings, {}, exclude_machines=[9])
    assert kept.query["machine_id"] == {"notin": [3, 9]}


def test_no_exclusions_no_machine_filter():
    assert "machine_id" not in build().query


@pytest.mark.parametrize(
    ("order", "parsed"),
    [("dph_total", [["dph_total", "asc"]]),
     ("dlperf_usd-", [["dlperf_per_dphtotal", "desc"]]),
     ("score-,dph", [["score", "desc"], ["dph_total", "asc"]]),
     ("-reliability", [["reliability", "desc"]])],
)  # fmt: skip
def test_order_uses_the_vastai_order_syntax(order, parsed):
    assert build(order=order).order == parsed


def test_limit_is_passed_through_and_must_be_positive():
    assert build_offer_request(OfferSettings(), {}, limit=5).limit == 5
    with pytest.raises(ValueError, match="limit"):
        build_offer_request(OfferSettings(), {}, limit=0)


# -- what the SDK makes of it ----------------------------------------------------------
FULL = dict(
    gpu_name="RTX_4090", max_price=1.25, geolocation="PL,DE", disk_gb=60, reliability=0.95,
    search_query="cuda_vers>=12.4 driver_version>=535.86.05", order="dlperf_usd-",
)  # fmt: skip
FULL_RESOURCES = {"gpu": 2, "mem_mb": 64000, "disk_mb": 80_000, "vastai_query": "inet_down>200"}


def full_request() -> OfferRequest:
    return build_offer_request(
        OfferSettings(**FULL), FULL_RESOURCES, 16, rule="train", exclude_machines=[5]
    )


def test_the_sdk_sends_the_request_unchanged_to_the_bundles_endpoint(monkeypatch):
    sent = []

    def fake_send(session, prepared, **_kwargs):
        sent.append(prepared)
        response = requests.Response()
        response.status_code, response._content = 200, b'{"offers": [{"id": 1}]}'
        response.headers["Content-Type"] = "application/json"
        return response

    monkeypatch.setattr(VastSession, "send", fake_send)
    request = full_request()
    client = VastClient(api_key="not-a-key", server_url="http://vast.invalid")
    found = sdk_offers.search_offers(
        client, query=dict(request.query), order=request.order, limit=request.limit,
        storage=request.storage_gb, no_default=True,
    )  # fmt: skip
    assert found == [{"id": 1}]
    (prepared,) = sent
    assert (prepared.method, prepared.url) == ("POST", "http://vast.invalid/api/v0/bundles/")
    assert json.loads(prepared.body) == {
        **request.query, "order": request.order, "type": "on-demand", "limit": 20,
        "allocated_storage": 80.0,
    }  # fmt: skip


def test_with_sdk_defaults_on_the_result_is_the_same():
    request = full_request()
    captured = {}

    class Client:
        def post(self, path, json_data):
            captured.update(json_data)
            return SimpleNamespace(raise_for_status=lambda: None, json=lambda: {"offers": []})

    sdk_offers.search_offers(Client(), query=dict(request.query), order=request.order)
    assert {k: v for k, v in captured.items() if k in request.query} == request.query


def _normal(value):
    """Compare our typed values with the SDK parser's strings: numbers as rounded floats."""
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normal(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    try:
        return round(float(value), 6)
    except (TypeError, ValueError):
        return value


def test_text_is_the_same_search_for_the_vastai_cli_parser(capsys):
    request = full_request()
    cli = parse_query(request.text, {}, offers_fields, offers_alias, offers_mult)
    assert _normal(cli) == _normal(request.query)
    assert capsys.readouterr() == ("", "")  # every field we emit is one the SDK knows


def test_request_is_plain_json():
    request = full_request()
    assert json.loads(json.dumps(request.query)) == request.query


def test_full_request_fields():
    query = full_request().query
    assert query["num_gpus"] == {"eq": 2}
    assert query["gpu_name"] == {"eq": "RTX 4090"}
    assert query["cpu_cores_effective"] == {"gte": 16}
    assert query["cpu_ram"] == {"gte": 61036}
    assert query["disk_space"] == {"gte": 80.0}
    assert query["dph_total"] == {"lte": 1.25}
    assert query["reliability"] == {"gte": 0.95}
    assert query["geolocation"] == {"in": ["PL", "DE"]}
    assert query["cuda_max_good"] == {"gte": 12.4}
    assert query["driver_version"] == {"gte": 535086005}
    assert query["inet_down"] == {"gt": 200}
    assert query["machine_id"] == {"notin": [5]}


# -- describe --------------------------------------------------------------------------
def test_describe_is_short_and_leaves_out_unchanged_sdk_defaults():
    request = build_offer_request(
        OfferSettings(geolocation="EU", max_price=2), {"gpu": 1}, 4, exclude_machines=[1, 2]
    )
    short = describe(request)
    assert "verified" not in short and "rentable" not in short
    assert "geolocation in [AL,AD,AT,BY,... 45 in all]" in short
    assert "machine_id notin [1,2]" in short
    assert short.endswith("(order dph_total, disk 40 GB)")
    assert "dph_total<=2" in short and "num_gpus=1" in short
    assert len(short) < len(request.text)


def test_describe_shows_a_lifted_default_and_descending_order():
    request = build(search_query="verified=false", order="dlperf_usd-")
    assert "verified=false" in describe(request)
    assert "order dlperf_per_dphtotal-" in describe(request)


# -- settings object -------------------------------------------------------------------
def executor_settings(**overrides) -> SimpleNamespace:
    values = dict(
        api_key=None, api_url=None, gpu_name=None, max_price=None, geolocation=None, disk=40,
        image="vastai/pytorch:@vastai-automatic-tag", reliability=0.98, no_datacenter=False,
        order="dph_total", search_query=None, boot_timeout=1800, no_forward_credentials=False,
        keep_instances=False,
    )  # fmt: skip
    return SimpleNamespace(**(values | overrides))


def test_offer_settings_from_executor_settings():
    s = executor_settings(gpu_name="RTX 4090", max_price="1.5", geolocation=" EU ", disk=80,
                          reliability=0, no_datacenter=True, order=" dlperf_usd- ",
                          search_query="  cuda_vers>=12.4 ")  # fmt: skip
    assert OfferSettings.from_executor_settings(s) == OfferSettings(
        gpu_name="RTX_4090", max_price=1.5, geolocation="EU", disk_gb=80.0, reliability=0.0,
        allow_hobbyist=True, order="dlperf_usd-", search_query="cuda_vers>=12.4",
    )  # fmt: skip


def test_offer_settings_defaults_for_missing_attributes():
    assert OfferSettings.from_executor_settings(SimpleNamespace()) == OfferSettings()
    assert OfferSettings.from_executor_settings(executor_settings()) == OfferSettings()


@pytest.mark.parametrize(
    ("override", "culprit"),
    [({"geolocation": "Europe"}, "--vastai-geolocation"), ({"disk": 0}, "--vastai-disk"),
     ({"order": "cheapness"}, "--vastai-order"), ({"search_query": "x"}, "--vastai-search-query")],
)  # fmt: skip
def test_offer_settings_refuse_bad_values(override, culprit):
    with pytest.raises(ConfigError, match=culprit):
        OfferSettings.from_executor_settings(executor_settings(**override))


def test_unevaluated_resources_fail_the_build_instead_of_being_ignored():
    tbd = pytest.importorskip("snakemake.common.tbdstring").TBDString()
    for name in ("gpu", "mem_mb", "disk_mb", "gpu_model", "vastai_query"):
        with pytest.raises(ConfigError, match=f"rule train: resource {name} is still <TBD>"):
            build({name: tbd})


def test_bad_resources_fail_the_build_naming_the_rule():
    with pytest.raises(ConfigError, match="rule train: resource vastai_query"):
        build({"vastai_query": "cuda_vers=>12"})
    with pytest.raises(ConfigError, match="rule train: resource gpu"):
        build({"gpu": 0})
