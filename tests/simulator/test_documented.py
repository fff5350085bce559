"""What the simulator does because Vast.ai's published API description says so (the parts
the contract test cannot see: timing, listing semantics, statuses over time)."""

from __future__ import annotations

import time

import pytest
import requests

from snakemake_executor_plugin_vastai.simulator import cli
from snakemake_executor_plugin_vastai.simulator.api import DOCUMENTED_INTERVALS
from snakemake_executor_plugin_vastai.simulator.server import SimConfig

from .helpers import IMAGE, cheapest, rent, sdk, wait_status

pytestmark = pytest.mark.timeout(60)

SHOW = "GET /api/v0/instances/{id}/"
DESTROY = "DELETE /api/v0/instances/{id}/"


def get(sim, path, **params):
    return requests.get(sim.url + path, params=params, timeout=10,
                        headers={"Authorization": f"Bearer {sim.api_key}"})


def test_realistic_profile_has_the_documented_intervals_per_endpoint():
    config = SimConfig.realistic()
    assert config.rate_limit_intervals == {
        "GET /api/v1/instances/": 1.0, SHOW: 2.0, DESTROY: 3.0, "DELETE /api/v0/instances/": 3.0,
        "PUT /api/v0/asks/{id}/": 4.5, "PUT /api/v0/instances/bid_price/{id}/": 5.5}
    assert config.rate_limit_intervals == DOCUMENTED_INTERVALS
    args = cli.build_parser().parse_args(["--rate-interval", "create=1.5",
                                          "--rate-interval", "GET /api/v1/instances/=0.3"])
    assert cli.config_from(args).rate_limit_intervals == {
        "PUT /api/v0/asks/{id}/": 1.5, "GET /api/v1/instances/": 0.3}
    with pytest.raises(ValueError, match="ENDPOINT=SECONDS"):
        cli.parse_intervals(["nonsense"])


def test_each_endpoint_keeps_its_own_interval_and_its_own_429_body(simulator_factory):
    sim = simulator_factory(rate_limit_intervals={SHOW: 0.6, DESTROY: 0.6})
    api = sdk(sim)
    iid = rent(api)
    assert get(sim, f"/api/v0/instances/{iid}/").status_code == 200
    second = get(sim, f"/api/v0/instances/{iid}/")
    assert second.status_code == 429
    assert second.json() == {"detail": "API requests too frequent endpoint threshold=0.6"}
    assert get(sim, "/api/v1/instances/").status_code == 200  # no interval of its own
    assert get(sim, "/api/v1/instances/").status_code == 200
    headers = {"Authorization": f"Bearer {sim.api_key}"}
    requests.delete(f"{sim.url}/api/v0/instances/{iid}/", headers=headers, timeout=10)
    again = requests.delete(f"{sim.url}/api/v0/instances/{iid}/", headers=headers, timeout=10)
    assert again.status_code == 429 and again.json() == {
        "success": False, "error": "rate_limit_exceeded",
        "msg": "API requests too frequent endpoint threshold=0.6"}
    time.sleep(0.6)
    assert get(sim, f"/api/v0/instances/{iid}/").json() == {"instances": None}


def test_the_v1_listing_answers_as_documented(simulator):
    api = sdk(simulator)
    for n in range(6):
        rent(api, label=f"page-{n}")
    page = get(simulator, "/api/v1/instances/", limit=0).json()
    assert page["success"] is True and page["instances_found"] == len(page["instances"]) == 5
    assert page["total_instances"] == 6 and page["next_token"]
    for column in ("dph_total", "num_gpus"):
        bad = get(simulator, "/api/v1/instances/", select_filters=f'{{"{column}": {{"gt": 0}}}}')
        assert bad.status_code == 400 and bad.json()["error"] == "invalid_request"
        assert column in bad.json()["msg"]
    ok = get(simulator, "/api/v1/instances/", select_filters='{"label": {"eq": "page-1"}}')
    assert ok.json()["instances_found"] == 1
    token = get(simulator, "/api/v1/instances/", after_token="!!not-a-token")
    assert token.status_code == 400 and token.json()["error"] == "invalid_token"


@pytest.mark.parametrize("status", ["offline", "unknown"])
def test_a_lost_heartbeat_never_comes_back_unless_told_to(simulator, status):
    """The description: an instance 'offline' or 'unknown' will never reach running."""
    api = sdk(simulator)
    simulator.add_fault("offline", after_seconds=0.0, status=status)
    iid = rent(api)
    wait_status(api, iid, status)
    time.sleep(1.0)
    assert api.show_instance(iid)["actual_status"] == status


@pytest.mark.parametrize(("status", "error"), [(410, "no_such_ask"), (400, "invalid_price")])
def test_create_refusals_are_seeded_outcomes_that_rent_nothing(simulator, status, error):
    api = sdk(simulator)
    simulator.add_fault("create_refused", status=status, count=1)
    offer = cheapest(api)["id"]
    with pytest.raises(requests.HTTPError) as err:
        api.create_instance(offer, image=IMAGE)
    body = err.value.response.json()
    assert err.value.response.status_code == status
    assert body["error"] == error and body["ask_id"] == offer and body["success"] is False
    assert simulator.truth()["created_count"] == 0
    assert api.create_instance(offer, image=IMAGE)["success"] is True  # count spent
    with pytest.raises(ValueError, match="410"):
        simulator.add_fault("create_refused", status=500)
