"""Interruptible (bid) instances in the simulator, through the official SDK: bid offers,
create with a price, the outbid fault, the bid-change endpoint, storage billed while
stopped, preemptions in the ground truth."""

from __future__ import annotations

import time

import pytest
import requests

from .helpers import IMAGE, sdk, wait_for, wait_status

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def sim(simulator_factory):
    return simulator_factory(boot_delay=0.15, log_delay=0.05)


def truth_of(sim, iid):
    return next(r for r in sim.truth()["instances"] if r["id"] == iid)


def bid_offer(api) -> dict:
    [offer] = api.search_offers("num_gpus=1", type="bid", order="dph_total", limit=1)
    return offer


def rent_bid(api, offer: dict, factor: float = 1.2) -> tuple[int, float]:
    price = round(float(offer["min_bid"]) * factor, 6)
    answer = api.create_instance(offer["id"], image=IMAGE, price=price, disk=10)
    assert answer["success"] is True
    return int(answer["new_contract"]), price


def test_bid_offers_are_priced_at_min_bid_and_on_demand_ones_are_not(sim):
    api = sdk(sim)
    offer = bid_offer(api)
    [same] = [o for o in api.search_offers("num_gpus=1", order="dph_total", limit=200)
              if o["id"] == offer["id"]]
    storage = float(offer["storage_total_cost"])
    assert offer["dph_total"] == pytest.approx(float(offer["min_bid"]) + storage, abs=1e-5)
    assert same["dph_total"] == pytest.approx(float(same["dph_base"]) + storage, abs=1e-5)
    assert offer["dph_total"] < same["dph_total"]


def test_create_with_a_price_makes_a_bid_instance_billed_at_its_bid(sim):
    api = sdk(sim)
    offer = bid_offer(api)
    iid, price = rent_bid(api, offer)
    row = wait_status(api, iid, "running")
    assert row["is_bid"] is True
    truth = truth_of(sim, iid)
    assert truth["bid_price"] == price
    storage = float(offer["storage_cost"]) * 10 / 720
    assert row["dph_total"] == pytest.approx(price + storage, abs=1e-5)


def test_a_bid_below_min_bid_is_refused_and_rents_nothing(sim):
    api = sdk(sim)
    offer = bid_offer(api)
    with pytest.raises(requests.HTTPError) as refused:
        api.create_instance(offer["id"], image=IMAGE, price=float(offer["min_bid"]) / 2)
    assert refused.value.response.status_code == 400
    assert sim.truth()["created_count"] == 0


def test_outbid_stops_keeps_the_disk_bills_storage_and_starts_again(sim):
    api = sdk(sim)
    sim.add_fault("outbid", at_state="running", after_seconds=0.1, back_after=0.8)
    iid, _ = rent_bid(api, bid_offer(api))
    wait_status(api, iid, "running")
    (sim.instance_dir(iid) / "kept.txt").write_text("still here\n")
    row = wait_status(api, iid, "stopped")
    assert (row["intended_status"], row["cur_state"], row["next_state"]) == ("stopped",) * 3
    assert row["ports"] == {}  # no SSH while stopped
    wait_status(api, iid, "running", timeout=10)
    truth = truth_of(sim, iid)
    assert truth["preemptions"] == 1 and sim.truth()["preemptions"] == 1
    assert truth["stopped_seconds"] == pytest.approx(0.8 + 0.15, abs=0.5)
    assert truth["storage_dollars_stopped"] > 0
    running = truth["billed_seconds"] - truth["stopped_seconds"]
    expected = (truth["dph_total"] * running
                + truth["storage_dollars_stopped"] * 3600.0) / 3600.0
    assert truth["billed_dollars"] == pytest.approx(expected, rel=0.05)
    assert truth["billed_dollars"] < truth["dph_total"] * truth["billed_seconds"] / 3600.0
    assert (sim.instance_dir(iid) / "kept.txt").read_text() == "still here\n"
    api.destroy_instance(iid)


def test_outbid_never_back_stays_stopped_and_a_higher_bid_starts_it(sim):
    api = sdk(sim)
    sim.add_fault("outbid", at_state="loading", competing_bid=9.0)
    iid, _ = rent_bid(api, bid_offer(api))
    wait_status(api, iid, "stopped")
    time.sleep(0.5)
    assert api.show_instance(iid)["actual_status"] == "stopped"
    with pytest.raises(requests.HTTPError):  # below min_bid: refused
        api.change_bid(iid, price=0.0001)
    api.change_bid(iid, price=8.0)  # still below the competing bid: stays stopped
    time.sleep(0.5)
    assert api.show_instance(iid)["actual_status"] == "stopped"
    api.change_bid(iid, price=9.5)
    wait_status(api, iid, "running", timeout=10)
    assert truth_of(sim, iid)["bid_price"] == 9.5
    api.destroy_instance(iid)
    wait_for(lambda: not truth_of(sim, iid)["alive"])


def test_outbid_spares_on_demand_instances_and_a_chance_picks_some(sim):
    api = sdk(sim)
    sim.add_fault("outbid", at_state="running", chance=0.0)
    sim.add_fault("outbid", at_state="loading", label_pattern="ondemand")
    iid, _ = rent_bid(api, bid_offer(api))
    [offer] = api.search_offers("num_gpus=1", order="dph_total", limit=1)
    plain = int(api.create_instance(offer["id"], image=IMAGE, label="ondemand")["new_contract"])
    wait_status(api, iid, "running")
    wait_status(api, plain, "running")
    time.sleep(0.4)
    assert api.show_instance(iid)["actual_status"] == "running"  # chance 0: never hit
    assert api.show_instance(plain)["is_bid"] is False
    assert sim.truth()["preemptions"] == 0


def test_bad_outbid_parameters_are_refused(sim):
    with pytest.raises(ValueError, match="at_state"):
        sim.add_fault("outbid", at_state="created")
    with pytest.raises(ValueError, match="chance"):
        sim.add_fault("outbid", chance=2)
