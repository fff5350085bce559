"""Every fault kind, its targeting, and its determinism."""

from __future__ import annotations

import time

import paramiko
import pytest
import requests

from snakemake_executor_plugin_vastai.simulator.faults import FaultPlan
from snakemake_executor_plugin_vastai.simulator.sandbox import tagged_pids

from .helpers import IMAGE, ClientKey, cheapest, port_open, rent, sdk, wait_for, wait_status

pytestmark = pytest.mark.timeout(60)

SSH_ERRORS = (paramiko.SSHException, OSError, EOFError)


def truth_of(sim, iid):
    return next(r for r in sim.truth()["instances"] if r["id"] == iid)


@pytest.fixture
def sim(simulator_factory):
    return simulator_factory(boot_delay=0.15, log_delay=0.05)


@pytest.fixture
def key(sim, tmp_path):
    k = ClientKey(tmp_path)
    sdk(sim).create_ssh_key(k.public)
    return k


# --------------------------------------------------------------------------- boot faults


def test_boot_delay_targets_the_next_instance_only(sim):
    sim.add_fault("boot_delay", next_n=1, seconds=1.2)
    api = sdk(sim)
    slow, fast = rent(api), rent(api)
    wait_status(api, fast, "running")
    assert api.show_instance(slow)["actual_status"] in (None, "loading")
    wait_status(api, slow, "running", timeout=5)
    history = next(r for r in sim.truth()["instances"] if r["id"] == slow)["history"]
    assert history[-1][0] >= 1.2  # seconds from create to running


def test_boot_hang_by_label(sim):
    sim.add_fault("boot_hang", label_pattern="stuck-*")
    api = sdk(sim)
    stuck, fine = rent(api, label="stuck-1"), rent(api, label="fine-1")
    wait_status(api, fine, "running")
    time.sleep(0.5)
    assert api.show_instance(stuck)["actual_status"] == "loading"
    api.reboot_instance(stuck)  # each fault acts once per instance: a reboot fixes it
    wait_status(api, stuck, "running")


@pytest.mark.parametrize("final", ["exited", "created"])
def test_boot_fatal(sim, key, final):
    msg = "Error response from daemon: manifest unknown"
    sim.add_fault("boot_fatal", next_n=1, status_msg=msg, final_status=final)
    api = sdk(sim)
    iid = rent(api)
    row = wait_status(api, iid, final)
    assert row["status_msg"] == msg and row["ports"] == {}
    with pytest.raises(SSH_ERRORS):
        key.run(row["ssh_port"], "true", timeout=3)
    assert wait_status(api, rent(api), "running")  # the next one boots


def test_boot_fatal_default_message_is_the_pull_rate_limit(sim):
    sim.add_fault("boot_fatal")
    api = sdk(sim)
    row = wait_status(api, rent(api), "exited")
    assert "pull rate limit" in row["status_msg"]


# --------------------------------------------------------------------------- running faults


def test_offline_and_back(sim, key):
    sim.add_fault("offline", after_seconds=0.2, duration=1.0)
    api = sdk(sim)
    iid = rent(api, onstart_cmd="sleep 300")
    port = wait_status(api, iid, "running")["ssh_port"]
    wait_status(api, iid, "offline")
    with pytest.raises(SSH_ERRORS):
        key.run(port, "true", timeout=3)
    tag = truth_of(sim, iid)["tag"]
    assert tagged_pids(tag)  # the processes keep running
    wait_status(api, iid, "running", timeout=5)
    assert key.run(port, "echo back")[1] == "back\n"


def test_offline_tears_down_established_connections(sim, key):
    """A host that loses its heartbeat loses its links too: a command in flight over an
    established connection does not quietly finish."""
    sim.add_fault("offline", after_seconds=1.0, duration=3.0)
    api = sdk(sim)
    iid = rent(api, onstart_cmd="sleep 300")
    port = wait_status(api, iid, "running")["ssh_port"]
    started = time.monotonic()
    with pytest.raises(SSH_ERRORS):
        key.run(port, "sleep 8; echo survived", timeout=15)
    assert time.monotonic() - started < 7  # torn down when it went offline, not at the end


def test_stays_running_hides_the_end_of_the_args_command(sim):
    sim.add_fault("stays_running", next_n=1)
    api = sdk(sim)
    iid = rent(api, args=["sh", "-c", "echo finished-work; exit 4"])
    wait_status(api, iid, "running")
    assert wait_for(lambda: truth_of(sim, iid)["exit_code"] == 4)
    time.sleep(0.5)
    row = api.show_instance(iid)
    assert row["actual_status"] == "running"  # never reported
    assert "finished-work" in api.logs(iid)
    assert truth_of(sim, iid)["alive"] is True
    other = rent(api, args=["sh", "-c", "exit 0"])  # next_n=1: the next one reports
    wait_status(api, other, "exited")


@pytest.mark.parametrize("state", ["loading", "running"])
def test_vanish(sim, state):
    sim.add_fault("vanish", at_state=state, after_seconds=0.1)
    api = sdk(sim)
    offer = cheapest(api)["id"]
    iid = api.create_instance(offer, image=IMAGE, onstart_cmd="sleep 300")["new_contract"]
    wait_for(lambda: api.show_instance(iid) is None)
    assert all(r["id"] != iid for r in api.show_instances())
    fact = truth_of(sim, iid)
    assert fact["alive"] is False and fact["vanished"] is True
    # the kill is sent as it vanishes; the processes are reaped a moment later
    wait_for(lambda: tagged_pids(fact["tag"]) == [], timeout=5)
    if fact["ssh_port"]:  # its listener closes on the server's loop, a moment later too
        wait_for(lambda: not port_open(fact["ssh_port"]), timeout=5)
    billed = fact["billed_seconds"]
    time.sleep(0.2)
    assert truth_of(sim, iid)["billed_seconds"] == billed
    assert offer not in [o["id"] for o in api.search_offers("num_gpus=1", limit=500)]
    with pytest.raises(requests.HTTPError):
        api.destroy_instance(iid)


def test_ssh_refuse_for_a_while_after_running(sim, key):
    sim.add_fault("ssh_refuse", seconds=1.0)
    api = sdk(sim)
    iid = rent(api)
    port = wait_status(api, iid, "running")["ssh_port"]
    with pytest.raises(SSH_ERRORS):
        key.run(port, "true", timeout=3)
    assert wait_for(lambda: _ssh_works(key, port), timeout=5)


def test_ssh_refuse_a_counted_number_of_connections_whenever_they_come(sim, key):
    sim.add_fault("ssh_refuse", seconds=0, connections=2)
    api = sdk(sim)
    port = wait_status(api, rent(api), "running")["ssh_port"]
    time.sleep(1.0)  # long after any time window: the count still holds
    for _ in range(2):
        with pytest.raises(SSH_ERRORS):
            key.run(port, "true", timeout=3)
    assert key.run(port, "echo ok", timeout=3)[1] == "ok\n"


def _ssh_works(key, port):
    try:
        return key.run(port, "echo ok", timeout=3)[1] == "ok\n"
    except SSH_ERRORS:
        return False


def test_ssh_drop_after_bytes_is_one_shot(sim, key):
    sim.add_fault("ssh_drop", after_bytes=1000)
    api = sdk(sim)
    port = wait_status(api, rent(api), "running")["ssh_port"]
    with pytest.raises(SSH_ERRORS):
        key.run(port, "head -c 200000 /dev/zero", timeout=5)
    assert key.run(port, "head -c 200000 /dev/zero | wc -c")[1].strip() == "200000"


def test_ssh_drop_after_seconds(sim, key):
    sim.add_fault("ssh_drop", after_seconds=0.3)
    api = sdk(sim)
    port = wait_status(api, rent(api), "running")["ssh_port"]
    with pytest.raises(SSH_ERRORS):
        key.run(port, "sleep 2; echo late", timeout=5)
    assert key.run(port, "echo fine")[1] == "fine\n"


def test_ssh_throttle_slows_what_the_client_sends(sim, key):
    """2 MB at 1 MB/s take about 2 s and all arrive (tests that must act mid-upload)."""
    import time

    import paramiko

    sim.add_fault("ssh_throttle", bytes_per_second=1_000_000)
    api = sdk(sim)
    port = wait_status(api, rent(api), "running")["ssh_port"]
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect("127.0.0.1", port=port, username="root", key_filename=str(key.path),
                   look_for_keys=False, allow_agent=False, timeout=10)
    try:
        stdin, stdout, _ = client.exec_command("wc -c")
        start = time.monotonic()
        stdin.write(b"x" * 2_000_000)
        stdin.channel.shutdown_write()
        assert stdout.read().strip() == b"2000000"
        assert time.monotonic() - start >= 1.5
    finally:
        client.close()


def test_kill_job_sigkills_the_entrypoint(sim):
    sim.add_fault("kill_job", after_seconds=0.3)
    api = sdk(sim)
    iid = rent(api, args=["sh", "-c", "echo started; sleep 300"])
    row = wait_status(api, iid, "exited", timeout=5)
    assert "137" in row["status_msg"]
    assert truth_of(sim, iid)["exit_code"] == 137


def test_kill_job_keeps_sshd_serving(sim, key):
    sim.add_fault("kill_job", after_seconds=0.8)
    api = sdk(sim)
    iid = rent(api, onstart_cmd="sleep 300")
    port = wait_status(api, iid, "running")["ssh_port"]
    tag = truth_of(sim, iid)["tag"]
    wait_for(lambda: tagged_pids(tag))
    wait_for(lambda: not tagged_pids(tag), timeout=5)
    assert api.show_instance(iid)["actual_status"] == "running"
    assert key.run(port, "echo alive")[1] == "alive\n"


def test_host_key_change(sim, key):
    sim.add_fault("host_key_change", after_seconds=0.8)
    api = sdk(sim)
    port = wait_status(api, rent(api), "running")["ssh_port"]
    before = key.host_key(port)
    wait_for(lambda: key.host_key(port) != before, timeout=5)


def test_fault_for_an_existing_instance(sim):
    api = sdk(sim)
    target, other = rent(api), rent(api)
    wait_status(api, target, "running")
    wait_status(api, other, "running")
    sim.add_fault("offline", instance_id=target, after_seconds=0.0, duration=0.8)
    wait_status(api, target, "offline")
    assert api.show_instance(other)["actual_status"] == "running"
    with pytest.raises(ValueError):
        sim.add_fault("offline", instance_id=999)


# --------------------------------------------------------------------------- market and API


def test_offer_taken(sim):
    sim.add_fault("offer_taken", count=2)
    api = sdk(sim)
    for _ in range(2):
        offer = cheapest(api)["id"]
        with pytest.raises(requests.HTTPError) as err:
            api.create_instance(offer, image=IMAGE)
        assert err.value.response.status_code == 404
        body = err.value.response.json()  # the documented 404: invalid_args, reason in msg
        assert body["error"] == "invalid_args" and "no_such_ask" in body["msg"]
        assert offer not in [o["id"] for o in api.search_offers("num_gpus=1", limit=500)]
    assert rent(api)
    assert sim.truth()["created_count"] == 1


def test_offer_taken_for_one_offer(sim):
    api = sdk(sim)
    first, second = (o["id"] for o in api.search_offers("num_gpus=1", order="dph_total", limit=2))
    sim.add_fault("offer_taken", offer_id=second)
    assert api.create_instance(first, image=IMAGE)["success"]
    with pytest.raises(requests.HTTPError):
        api.create_instance(second, image=IMAGE)


def test_api_status_gateway_errors_then_recovery(sim):
    sim.add_fault("api_status", code=503, endpoint="*/bundles/*", count=2, retry_after="0")
    r = requests.post(
        sim.url + "/api/v0/bundles/",
        json={},
        headers={"Authorization": f"Bearer {sim.api_key}"},
        timeout=5,
    )
    assert r.status_code == 503 and "<html>" in r.text and r.headers["Retry-After"] == "0"
    api = sdk(sim, retry=3)  # the SDK retries a 503 (after the server's Retry-After)
    assert api.search_offers("num_gpus=1", limit=1)
    assert sim.truth()["rejected"]["5xx"] == 2
    assert api.show_user()  # other endpoints were never hit


@pytest.mark.parametrize("code", [429, 500, 502])
def test_api_status_bodies(sim, code):
    sim.add_fault("api_status", code=code, endpoint="GET /api/v0/users/current", count=1)
    r = requests.get(
        sim.url + "/api/v0/users/current",
        headers={"Authorization": f"Bearer {sim.api_key}"},
        timeout=5,
    )
    assert r.status_code == code and "Retry-After" not in r.headers
    if code == 429:
        assert r.json()["detail"].startswith("API requests too frequent")
    elif code == 500:
        assert r.json()["error"] == "server_error"


def test_api_status_fraction_is_deterministic(simulator_factory):
    def pattern(seed):
        s = simulator_factory(seed=seed)
        s.add_fault("api_status", code=500, fraction=0.5, endpoint="GET *")
        return [
            requests.get(
                s.url + "/api/v0/users/current",
                timeout=5,
                headers={"Authorization": f"Bearer {s.api_key}"},
            ).status_code
            for _ in range(16)
        ]

    first = pattern(7)
    assert first == pattern(7) and {200, 500} == set(first)


def test_api_latency(sim):
    sim.add_fault("api_latency", seconds=0.5, endpoint="GET *", count=1)
    api = sdk(sim)
    t0 = time.monotonic()
    api.show_user()
    assert time.monotonic() - t0 >= 0.5
    t0 = time.monotonic()
    api.show_user()
    assert time.monotonic() - t0 < 0.5


@pytest.mark.parametrize("mode", ["reset", "hang"])
def test_api_down_then_up(sim, mode):
    sim.add_fault("api_down", seconds=0.8, mode=mode)
    api = sdk(sim)
    t0 = time.monotonic()
    with pytest.raises(requests.ConnectionError):
        api.show_user()
    if mode == "hang":
        assert time.monotonic() - t0 >= 0.6
    assert requests.get(sim.url + "/_sim/truth", timeout=5).ok  # control stays up
    assert wait_for(lambda: _answers(api), timeout=5)
    assert sim.truth()["rejected"]["down"] >= 1


def _answers(api):
    try:
        return bool(api.show_user())
    except requests.ConnectionError:
        return False


# --------------------------------------------------------------------------- steering


def test_faults_over_http_and_clear(sim):
    url = sim.url + "/_sim/faults"
    r = requests.post(url, json={"kind": "boot_hang", "label_pattern": "x-*"}, timeout=5)
    assert r.json() == {"success": True}
    bad = requests.post(url, json={"kind": "boot_hang", "bogus": 1}, timeout=5)
    assert bad.status_code == 400 and "bogus" in bad.json()["msg"]
    assert requests.post(url, json={"kind": "nope"}, timeout=5).status_code == 400
    assert len(sim.truth()["faults"]) == 1
    assert requests.delete(url, timeout=5).json() == {"success": True}
    api = sdk(sim)
    wait_status(api, rent(api, label="x-1"), "running")


@pytest.mark.parametrize(
    ("kind", "params"),
    [
        ("boot_delay", {}),
        ("ssh_drop", {}),
        ("vanish", {"at_state": "exited"}),
        ("api_status", {"code": 200}),
        ("api_down", {"seconds": 1, "label_pattern": "x"}),
        ("offline", {"after_seconds": -1}),
    ],
)
def test_invalid_faults_are_rejected(kind, params):
    with pytest.raises(ValueError):
        FaultPlan().add(kind, **params)


def test_disk_full_gives_a_real_enospc(sim, key):
    from snakemake_executor_plugin_vastai.simulator.sandbox import can_mount

    if not can_mount():
        pytest.skip("the disk_full fault needs root to mount a tmpfs")
    sim.add_fault("disk_full", next_n=1, after_bytes=512 * 1024)
    api = sdk(sim)
    iid = rent(api, onstart_cmd="sleep 300")
    port = wait_status(api, iid, "running")["ssh_port"]
    status, _, err = key.run(port, "head -c 2000000 /dev/zero > fill.bin")
    assert status != 0 and "No space left on device" in err
    assert key.run(port, "rm fill.bin; echo small > ok.txt && cat ok.txt")[1] == "small\n"
    api.destroy_instance(iid)
    wait_for(lambda: not truth_of(sim, iid)["alive"])


@pytest.mark.parametrize("mode", ["reset", "truncate", "html", "garbage", "slow"])
def test_answer_lost_after_the_create_was_done(sim, mode):
    """The server rents, then its answer goes astray: the client cannot know it rented."""
    sim.add_fault("answer_lost", endpoint="PUT */asks/*", mode=mode, seconds=2.0)
    api = sdk(sim)
    api.client.timeout = 0.5  # shorter than the slow answer
    offer = cheapest(api)["id"]
    expected = {
        "reset": requests.ConnectionError,
        "truncate": (requests.exceptions.ChunkedEncodingError, requests.ConnectionError),
        "html": requests.exceptions.JSONDecodeError,
        "slow": requests.Timeout,
        "garbage": None,
    }[mode]
    if expected is None:  # an answer, but not one that says what was made
        assert "new_contract" not in api.create_instance(offer, image=IMAGE, label="lost-answer")
    else:
        with pytest.raises(expected):
            api.create_instance(offer, image=IMAGE, label="lost-answer")
    truth = sim.truth()
    assert truth["created_count"] == 1
    assert [i["label"] for i in truth["instances"] if i["alive"]] == ["lost-answer"]
    assert truth["rejected"]["answer_lost"] == 1
    assert rent(api)  # count=1: the next answer arrives
