"""The contract: our adapter's requests and the simulator's answers, held to Vast.ai's
published OpenAPI description (``contract.py`` finds it and lists the waived slips).

One simulator records every ``/api/`` exchange at its HTTP layer while our API adapter
(``vastai/api.py``, through the official SDK) does everything the plugin ever asks of
Vast.ai, including the error answers (401, 404, 410, 429 in both documented bodies).
Every exchange must match the description but for the waivers in ``contract.WAIVERS``.
"""

from __future__ import annotations

from collections import Counter

import pytest

from snakemake_executor_plugin_vastai.vastai import api as api_module
from snakemake_executor_plugin_vastai.vastai.api import OfferGone, VastAPI, VastAuthError

from . import contract
from .helpers import IMAGE, ClientKey

pytestmark = pytest.mark.timeout(120)

# Every operation the plugin uses, as the description names it (bulk destroy: not there).
OPERATIONS = {
    "GET /api/v0/users/current", "POST /api/v0/bundles", "PUT /api/v0/asks/{id}",
    "POST /api/v0/instances/{id}/ssh", "GET /api/v0/instances/{id}", "GET /api/v1/instances",
    "DELETE /api/v0/instances/{id}", "DELETE /api/v0/instances",
    "PUT /api/v0/instances/bid_price/{id}", "PUT /api/v0/instances/request_logs/{id}",
}
STATUSES = {401, 404, 410, 429}


@pytest.fixture(scope="module")
def description():
    path = contract.spec_path()
    if path is None:
        pytest.skip("Vast.ai's OpenAPI description is not here (looked at "
                    f"{', '.join(str(p) for p in contract.candidates())}; set "
                    f"{contract.ENV_VAR} to its path)")
    pytest.importorskip("openapi_core", reason="openapi-core is a test dependency")
    return contract.openapi()


@pytest.fixture(scope="module")
def exchanges(description, tmp_path_factory):
    """Everything the plugin asks of Vast.ai, answered by one recording simulator."""
    from snakemake_executor_plugin_vastai.simulator.server import SimConfig, Simulator

    with Simulator(SimConfig(seed=29, boot_delay=0.1, record_exchanges=True)) as sim:
        drive(sim, tmp_path_factory.mktemp("contract"))
        yield sim.exchanges.items()


def drive(sim, tmp) -> None:
    """Our adapter through each endpoint and each error answer the plugin meets."""
    api = VastAPI(sim.api_key, sim.url, retry_budget=20.0)
    api.check_access()
    query, order = {"num_gpus": {"eq": 1}, "rentable": {"eq": True}}, [["dph_total", "asc"]]
    offers = api.search_offers_unshared(query, order, 6, 10.0)
    used = {o["id"] for o in offers[:5]}
    bids = [b for b in api.search_offers(query, order, 12, 10.0, bid=True)
            if b["id"] not in used]
    assert len(offers) >= 5 and bids
    key = ClientKey(tmp)
    ssh = api.create_instance(offers[0]["id"], image=IMAGE, disk_gb=10.0, label="c-ssh",
                              onstart="echo hi", env={"A": "1"})
    api.attach_ssh_key(ssh, key.public)
    storage = api.create_instance(offers[1]["id"], image=IMAGE, disk_gb=10.0, label="c-st",
                                  runtype="args", args=["sh", "-c", "echo hi"],
                                  env={"B": "2"})
    bid = api.create_instance(bids[0]["id"], image=IMAGE, disk_gb=10.0, label="c-bid",
                              onstart="echo hi", price=float(bids[0]["min_bid"]) * 1.2)
    api.change_bid(bid, float(bids[0]["min_bid"]) * 1.5)
    assert api.show_instance(ssh)["id"] == ssh
    assert api.logs(ssh, tail=10) is not None
    old_page = api_module.PAGE_SIZE
    api_module.PAGE_SIZE = 2  # three instances: two pages, one next_token followed
    try:
        assert {r["id"] for r in api.list_instances()} >= {ssh, storage, bid}
    finally:
        api_module.PAGE_SIZE = old_page
    errors(sim, api, offers)
    api.destroy_instance(ssh)
    assert api.show_instance(ssh) is None
    api.destroy_instance(ssh)  # 404: already gone
    api.destroy_instances([storage, bid])


def errors(sim, api: VastAPI, offers: list[dict]) -> None:
    """401, 404, 410 and 429 (both bodies) as the plugin meets them."""
    with pytest.raises(VastAuthError):
        VastAPI("not-the-key", sim.url, retry_budget=2.0).check_access()
    sim.add_fault("offer_taken", count=1, offer_id=int(offers[2]["id"]))
    with pytest.raises(OfferGone):
        api.create_instance(offers[2]["id"], image=IMAGE, disk_gb=10.0, label="c-404")
    for status in (410, 400):  # 400: invalid_price
        sim.add_fault("create_refused", count=1, status=status)
        with pytest.raises(OfferGone):
            api.create_instance(offers[3]["id"], image=IMAGE, disk_gb=10.0, label="c-410")
    one = api.create_instance(offers[4]["id"], image=IMAGE, disk_gb=10.0, label="c-429")
    for endpoint in ("GET /api/v0/instances/*", "GET /api/v1/instances/*",
                     "DELETE /api/v0/instances/*"):
        sim.add_fault("api_status", code=429, endpoint=endpoint, count=1)
    api.show_instance(one)
    api.list_instances()
    api.destroy_instance(one)


def test_every_exchange_matches_the_published_description(exchanges):
    problems = [p for ex in exchanges for p in contract.problems(ex)]
    left = contract.unwaived(problems)
    assert not left, "\n".join(str(p) for p in dict.fromkeys(left))


def test_the_contract_covers_every_endpoint_and_error_the_plugin_meets(exchanges):
    ops = {contract.operation_of(ex.method, ex.target.split("?")[0].rstrip("/"))
           for ex in exchanges}
    assert ops >= OPERATIONS, f"not exercised: {sorted(OPERATIONS - ops)}"
    statuses = Counter(ex.status for ex in exchanges)
    assert set(statuses) >= STATUSES, f"statuses seen: {dict(statuses)}"
    forms = {tuple(sorted(contract.body(ex))) for ex in exchanges if ex.status == 429}
    assert ("detail",) in forms and ("error", "msg", "success") in forms, forms


def test_every_waiver_is_still_needed(exchanges):
    """A waiver nothing needs any more hides nothing, but it would hide a future slip."""
    problems = [p for ex in exchanges for p in contract.problems(ex)]
    unused = [w for w in contract.WAIVERS if not any(w.covers(p) for p in problems)]
    assert not unused, "\n".join(f"{w.operation} {w.side} {w.where}" for w in unused)
