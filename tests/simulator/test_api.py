"""The REST endpoints through the official SDK (and raw HTTP where the SDK hides status)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import paramiko
import pytest
import requests
import vastai

from .helpers import IMAGE, ClientKey, rent, sdk, wait_for, wait_status

pytestmark = pytest.mark.timeout(60)


def raw(sim, method, path, key="default", **kw):
    headers = kw.pop("headers", {})
    if key is not None:
        headers["Authorization"] = f"Bearer {sim.api_key if key == 'default' else key}"
    return requests.request(method, sim.url + path, headers=headers, timeout=10, **kw)


def test_url_has_no_trailing_slash(simulator):
    assert simulator.url.startswith("http://127.0.0.1:") and not simulator.url.endswith("/")


def test_wrong_or_missing_key_is_401_json(simulator):
    bad = vastai.VastAI(api_key="not-the-key", server_url=simulator.url, retry=1)
    with pytest.raises(requests.HTTPError) as err:
        bad.show_user()
    assert err.value.response.status_code == 401
    assert err.value.response.json()["success"] is False
    r = raw(simulator, "GET", "/api/v0/users/current", key=None)
    assert r.status_code == 401 and r.json()["error"] == "auth_error"
    assert simulator.truth()["rejected"]["401"] == 2


def test_user_current(simulator):
    user = sdk(simulator).show_user()
    assert user["id"] and user["username"] and user["credit"] == pytest.approx(100.0)
    assert "api_key" not in user  # the SDK strips it


def test_unknown_path_malformed_json_and_wrong_method(simulator):
    r = raw(simulator, "GET", "/api/v0/nothing/here/")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = raw(
        simulator,
        "POST",
        "/api/v0/bundles/",
        data=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["error"] == "invalid_args"
    r = raw(simulator, "PATCH", "/api/v0/bundles/")
    assert r.status_code == 405
    assert raw(simulator, "GET", "/api/v0/users/current").status_code == 200


def test_handler_crash_is_500_and_server_survives(simulator, monkeypatch):
    def boom(body):
        raise RuntimeError("bug in the simulator")

    monkeypatch.setattr(simulator.market, "search", boom)
    r = raw(simulator, "POST", "/api/v0/bundles/", json={})
    assert r.status_code == 500 and r.json()["error"] == "server_error"
    assert simulator.truth()["rejected"]["5xx"] == 1
    monkeypatch.undo()
    assert raw(simulator, "POST", "/api/v0/bundles/", json={}).status_code == 200


def test_create_show_destroy(simulator):
    api = sdk(simulator)
    iid = rent(api, label="job-1", env={"FOO": "bar", "-p 8080:8080": "1"}, disk=20)
    row = api.show_instance(iid)
    assert row["id"] == iid and row["label"] == "job-1"
    assert row["extra_env"] == {"FOO": "bar", "-p 8080:8080": "1"}  # SDK converted pairs
    assert row["disk_space"] == 20 and row["image_uuid"] == IMAGE
    assert row["ssh_host"] == "127.0.0.1" and row["public_ipaddr"] == "127.0.0.1"
    assert row["intended_status"] == "running"
    assert 0 <= row["duration"] < 60  # from start_date
    running = wait_status(api, iid, "running")
    assert running["ports"]["22/tcp"][0] == {
        "HostIp": "0.0.0.0",
        "HostPort": str(running["ssh_port"]),
    }
    assert api.destroy_instance(iid)["success"] is True
    assert api.show_instance(iid) is None
    assert all(r["id"] != iid for r in api.show_instances())
    with pytest.raises(requests.HTTPError) as err:
        api.destroy_instance(iid)
    assert err.value.response.status_code == 404
    assert err.value.response.json()["error"] == "not_found"  # as the description documents


def test_unknown_instance_is_null_for_show_and_404_elsewhere(simulator):
    api = sdk(simulator)
    assert api.show_instance(12345) is None
    for call in (
        lambda: api.reboot_instance(12345),
        lambda: api.logs(12345),
        lambda: api.attach_ssh(12345, "ssh-ed25519 AAAA x"),
    ):
        with pytest.raises(requests.HTTPError) as err:
            call()
        assert err.value.response.status_code == 404


def test_v1_listing_pages_past_25(simulator):
    api = sdk(simulator)
    created = [rent(api, label=f"batch-{i % 3}") for i in range(28)]
    rows = api.show_instances()
    assert [r["id"] for r in rows] == sorted(created)
    assert all(isinstance(r["extra_env"], dict) for r in rows)
    page = api.show_instances_v1(
        {
            "select_filters": {"label": {"eq": "batch-1"}},
            "order_by": [{"col": "id", "dir": "desc"}],
            "limit": 4,
        }
    )
    expected = sorted((i for n, i in enumerate(created) if n % 3 == 1), reverse=True)
    assert [r["id"] for r in page["instances"]] == expected[:4]
    assert page["total_instances"] == len(expected) and page["next_token"]
    rest = api.show_instances_v1(
        {
            "select_filters": {"label": {"eq": "batch-1"}},
            "order_by": [{"col": "id", "dir": "desc"}],
            "limit": 25,
            "after_token": page["next_token"],
        }
    )
    assert [r["id"] for r in rest["instances"]] == expected[4:]
    assert rest["next_token"] is None
    assert page["label_counts"] == {"batch-1": len(expected)}
    big = api.show_instances_v1({"limit": 100})
    assert len(big["instances"]) == 25 and big["total_instances"] == 28
    for iid in created:
        api.destroy_instance(iid)
    assert api.show_instances() == []


def test_logs_follow_the_result_url(simulator_factory):
    simulator = simulator_factory(log_delay=0.1)
    api = sdk(simulator)
    script = "for i in 1 2 3 4 5; do echo line-$i; done; echo to-stderr >&2"
    iid = rent(api, onstart_cmd=script)
    wait_status(api, iid, "running")
    text = wait_for(lambda: "to-stderr" in (t := api.logs(iid)) and t)
    assert "line-1\n" in text and "line-5\n" in text
    assert api.logs(iid, tail="2").splitlines() == text.splitlines()[-2:]
    assert api.logs(iid, filter="line-3").strip() == "line-3"
    assert "status=running" in api.logs(iid, daemon_logs=True)
    assert simulator.truth()["requests"]["GET /_sim/logs/{token}"] >= 4


def test_log_url_answers_404_first_and_needs_no_auth(simulator):
    api = sdk(simulator)
    iid = rent(api, onstart_cmd="echo hi")
    wait_status(api, iid, "running")
    # The log is snapshotted at request time: wait until the onstart has written it.
    assert wait_for(lambda: simulator.fleet.get(iid).log_text() == "hi\n")
    url = raw(simulator, "PUT", f"/api/v0/instances/request_logs/{iid}/", json={}).json()
    first = requests.get(url["result_url"], timeout=5)
    assert first.status_code == 404
    assert wait_for(lambda: requests.get(url["result_url"], timeout=5).status_code == 200)
    assert requests.get(url["result_url"], timeout=5).text == "hi\n"
    assert sdk(simulator).logs(iid) == "hi\n"  # the SDK polls through the 404s


def test_attach_ssh_key_lets_the_key_in(simulator, tmp_path):
    api = sdk(simulator)
    key = ClientKey(tmp_path)
    iid = rent(api)
    row = wait_status(api, iid, "running")
    with pytest.raises(paramiko.AuthenticationException):
        key.run(row["ssh_port"], "true")
    assert api.attach_ssh(iid, key.public)["success"] is True
    status, out, _ = key.run(row["ssh_port"], "echo $HOME; pwd")
    assert status == 0
    assert out.split() == [str(simulator.instance_dir(iid))] * 2


def test_account_keys_go_to_new_instances(simulator, tmp_path):
    api = sdk(simulator)
    key = ClientKey(tmp_path)
    api.create_ssh_key(key.public)
    assert [k["public_key"] for k in api.show_ssh_keys()] == [key.public]
    iid = rent(api)
    row = wait_status(api, iid, "running")
    assert key.run(row["ssh_port"], "true")[0] == 0


def test_relabel(simulator):
    api = sdk(simulator)
    iid = rent(api, label="before")
    api.label_instance(iid, "after")
    assert api.show_instance(iid)["label"] == "after"


def test_rate_limit_is_429_without_retry_after(simulator_factory):
    sim = simulator_factory(rate_limit_interval=0.5)
    first = raw(sim, "GET", "/api/v0/users/current")
    second = raw(sim, "GET", "/api/v0/users/current")
    other = raw(sim, "POST", "/api/v0/bundles/", json={"limit": 1})  # another endpoint
    assert first.status_code == 200 and other.status_code == 200
    assert second.status_code == 429
    assert second.json() == {"detail": "API requests too frequent endpoint threshold=0.5"}
    assert "Retry-After" not in second.headers
    time.sleep(0.55)
    assert raw(sim, "GET", "/api/v0/users/current").status_code == 200
    truth = sim.truth()
    assert truth["rejected"]["429"] == 1
    assert truth["requests"]["GET /api/v0/users/current"] == 3


def test_truth_billing_stops_at_destroy(simulator):
    api = sdk(simulator)
    iid = rent(api)
    time.sleep(0.3)
    api.destroy_instance(iid)
    (row,) = simulator.truth()["instances"]
    assert row["alive"] is False and row["destroyed_at"] >= row["created_at"]
    time.sleep(0.3)
    (later,) = simulator.truth()["instances"]
    assert later["billed_seconds"] == row["billed_seconds"] >= 0.3
    assert later["billed_dollars"] == pytest.approx(row["dph_total"] * row["billed_seconds"] / 3600)
    truth = requests.get(simulator.url + "/_sim/truth", timeout=5).json()  # no auth needed
    assert truth["created_count"] == 1 and truth["alive_count"] == 0
    assert truth["requests"]["DELETE /api/v0/instances/{id}/"] == 1
    assert truth["requests_total"] >= 3


def test_truth_of_a_live_instance_keeps_billing(simulator):
    api = sdk(simulator)
    rent(api)
    first = simulator.truth()["instances"][0]["billed_seconds"]
    time.sleep(0.2)
    assert simulator.truth()["instances"][0]["billed_seconds"] >= first + 0.2
    assert simulator.truth()["alive_count"] == 1


def test_foreign_instance_is_visible_and_marked(simulator):
    api = sdk(simulator)
    fid = simulator.create_foreign_instance()
    row = api.show_instance(fid)
    assert row["actual_status"] == "running" and row["label"] == "someone-else"
    (truth,) = simulator.truth()["instances"]
    assert truth["foreign"] is True and truth["alive"] is True
    answer = requests.post(simulator.url + "/_sim/foreign", json={"label": "other"}, timeout=5)
    assert answer.json()["success"] is True
    assert {r["label"] for r in api.show_instances()} == {"someone-else", "other"}


def test_vastai_cli_lists_instances(simulator, tmp_path):
    api = sdk(simulator)
    iid = rent(api, label="from-cli")
    cli = Path(sys.executable).with_name("vastai")
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    env.pop("VAST_API_KEY", None)
    out = subprocess.run(
        [
            str(cli),
            "--url",
            simulator.url,
            "--api-key",
            simulator.api_key,
            "show",
            "instances",
            "--raw",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    ).stdout
    rows = json.loads(out)
    assert [(r["id"], r["label"]) for r in rows] == [(iid, "from-cli")]


def test_same_seed_same_market_and_ids_never_reused(simulator_factory):
    """The market is a function of the seed; instance ids grow like the real service's,
    so a journal kept across simulator restarts never meets a reused id."""

    def first_rental(seed):
        api = sdk(simulator_factory(seed=seed))
        offers = api.search_offers("num_gpus=1", order="dph_total", limit=10)
        return [o["id"] for o in offers], rent(api)

    (offers_a, id_a), (offers_b, id_b), (offers_c, _) = (
        first_rental(4), first_rental(4), first_rental(5))
    assert offers_a == offers_b != offers_c
    assert id_b > id_a
