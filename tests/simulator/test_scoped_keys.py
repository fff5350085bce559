"""An instance's own API key (Vast.ai's CONTAINER_API_KEY) and stop/start by request in the
simulator, through the official SDK: what the key may do, where it lives, what a stopped
instance bills, and a start that cannot happen (its GPUs were taken)."""

from __future__ import annotations

import pytest
import requests
import vastai

from .helpers import IMAGE, ClientKey, cheapest, sdk, wait_for, wait_status

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def sim(simulator_factory):
    return simulator_factory(boot_delay=0.15, log_delay=0.05)


def scoped_sdk(sim, key: str) -> vastai.VastAI:
    return vastai.VastAI(api_key=key, server_url=sim.url, raw=True, quiet=True, retry=1)


def rent_with_key(api, onstart: str | None = None) -> tuple[int, str]:
    answer = api.create_instance(cheapest(api)["id"], image=IMAGE, disk=10, onstart_cmd=onstart)
    assert answer["success"] is True
    return int(answer["new_contract"]), answer["instance_api_key"]


def truth_of(sim, iid):
    return next(r for r in sim.truth()["instances"] if r["id"] == iid)


def status_code(call) -> int:
    with pytest.raises(requests.HTTPError) as refused:
        call()
    return refused.value.response.status_code


def test_the_key_manages_its_own_instance_and_nothing_else(sim):
    api = sdk(sim)
    mine, key = rent_with_key(api)
    other, _ = rent_with_key(api)
    assert key and key != sim.api_key
    own = scoped_sdk(sim, key)
    assert own.show_instance(mine)["id"] == mine
    assert status_code(lambda: own.show_instance(other)) == 403
    assert status_code(lambda: own.destroy_instance(other)) == 403
    assert status_code(lambda: own.search_offers("num_gpus=1")) == 401
    assert status_code(lambda: own.show_instances()) == 401
    own.destroy_instance(mine)
    assert truth_of(sim, mine)["alive"] is False and truth_of(sim, other)["alive"] is True
    # a destroyed instance's key is worth nothing any more
    assert status_code(lambda: own.show_instance(mine)) == 401


def test_the_key_is_in_the_main_process_environment_not_in_ssh_sessions(sim, tmp_path):
    api = sdk(sim)
    iid, key = rent_with_key(api, onstart='env > "$HOME/pid1.env"')
    client = ClientKey(tmp_path)
    api.attach_ssh(iid, client.public)
    row = wait_status(api, iid, "running")
    env_file = sim.instance_dir(iid) / "pid1.env"
    text = wait_for(lambda: env_file.exists() and env_file.read_text())
    assert f"CONTAINER_API_KEY={key}" in text and f"CONTAINER_ID={iid}" in text
    status, ssh_env, _ = client.run(int(row["ssh_port"]), "env")
    assert status == 0 and f"CONTAINER_ID={iid}" in ssh_env
    assert "CONTAINER_API_KEY" not in ssh_env


def test_a_stopped_instance_keeps_its_disk_bills_storage_and_starts_again(sim):
    api = sdk(sim)
    iid, key = rent_with_key(api)
    wait_status(api, iid, "running")
    (sim.instance_dir(iid) / "kept.txt").write_text("outputs\n")
    scoped_sdk(sim, key).stop_instance(iid)
    row = wait_status(api, iid, "stopped")
    assert row["intended_status"] == "stopped" and row["ports"] == {}
    wait_for(lambda: truth_of(sim, iid)["stopped_seconds"] > 0.3)
    api.start_instance(iid)
    wait_status(api, iid, "running")
    truth = truth_of(sim, iid)
    assert truth["stops"] == 1 and truth["storage_dollars_stopped"] > 0
    running = truth["billed_seconds"] - truth["stopped_seconds"]
    assert truth["billed_dollars"] == pytest.approx(
        (truth["dph_total"] * running + truth["storage_dollars_stopped"] * 3600.0) / 3600.0,
        rel=0.05)
    assert (sim.instance_dir(iid) / "kept.txt").read_text() == "outputs\n"
    api.destroy_instance(iid)


def test_a_start_whose_gpus_were_taken_leaves_it_stopped_and_says_why(sim):
    api = sdk(sim)
    sim.add_fault("start_fails")
    iid, _ = rent_with_key(api)
    wait_status(api, iid, "running")
    api.stop_instance(iid)
    wait_status(api, iid, "stopped")
    assert api.start_instance(iid)["success"] is True  # accepted, as the service does
    row = wait_for(lambda: (r := api.show_instance(iid))["status_msg"].startswith(
        "Cannot start") and r)
    assert row["actual_status"] == "stopped"
    api.destroy_instance(iid)
