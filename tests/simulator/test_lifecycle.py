"""Instance life: statuses, onstart and args entrypoints, sandboxes, reboot, cleanup."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import paramiko
import pytest

from snakemake_executor_plugin_vastai.simulator.sandbox import tagged_pids
from snakemake_executor_plugin_vastai.simulator.server import SimConfig, Simulator

from .helpers import ClientKey, port_open, rent, sdk, wait_for, wait_status

pytestmark = pytest.mark.timeout(60)


def truth_of(sim, iid):
    return next(r for r in sim.truth()["instances"] if r["id"] == iid)


def test_statuses_from_created_to_running_with_onstart_log(simulator_factory):
    sim = simulator_factory(boot_delay=0.8)
    api = sdk(sim)
    iid = rent(api, onstart_cmd="echo onstart-says-hi\necho and-bye >&2")
    seen = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        row = api.show_instance(iid)
        if not seen or seen[-1][0] != row["actual_status"]:
            seen.append((row["actual_status"], row["status_msg"]))
        if row["actual_status"] == "running":
            break
        time.sleep(0.02)
    statuses = [s for s, _ in seen]
    assert statuses[-2:] == ["loading", "running"] and statuses[0] in (None, "loading")
    assert dict(seen)["loading"].startswith("Pulling image vastai/pytorch")
    log = wait_for(lambda: "and-bye" in (t := api.logs(iid)) and t)
    assert log == "onstart-says-hi\nand-bye\n"
    history = truth_of(sim, iid)["history"]
    assert [s for _, s in history] == [None, "loading", "running"]
    assert history[-1][0] >= 0.8


def test_ssh_refuses_until_running(simulator_factory, tmp_path):
    sim = simulator_factory(boot_delay=1.5)
    api = sdk(sim)
    key = ClientKey(tmp_path)
    api.create_ssh_key(key.public)
    iid = rent(api)
    port = wait_for(lambda: api.show_instance(iid)["ssh_port"])
    assert api.show_instance(iid)["actual_status"] != "running"
    assert api.show_instance(iid)["ports"] == {}
    with pytest.raises((paramiko.SSHException, OSError, EOFError)):
        key.run(port, "true", timeout=3)
    wait_status(api, iid, "running")
    assert key.run(port, "echo up")[1] == "up\n"


def test_args_entrypoint_exit_makes_the_instance_exited(simulator):
    api = sdk(simulator)
    iid = rent(
        api, args=["sh", "-c", "echo entry-$FOO; echo oops >&2; exit 3"], env={"FOO": "point"}
    )
    row = wait_status(api, iid, "exited")
    assert "3" in row["status_msg"]
    assert row["image_runtype"] == "args"
    assert api.logs(iid) == "entry-point\noops\n"
    assert truth_of(simulator, iid)["exit_code"] == 3
    assert truth_of(simulator, iid)["alive"] is True  # still billed until destroyed


def test_processes_get_the_instance_env_and_a_private_sandbox(simulator):
    api = sdk(simulator)
    script = (
        "echo $HOME > home.txt; pwd > pwd.txt; echo $FOO > foo.txt; echo $CONTAINER_ID > id.txt"
    )
    a = rent(api, onstart_cmd=script, env={"FOO": "alpha"})
    b = rent(api, onstart_cmd=script, env={"FOO": "beta"})
    for iid, foo in ((a, "alpha"), (b, "beta")):
        box = simulator.instance_dir(iid)
        wait_for(lambda box=box: (box / "id.txt").exists() and (box / "id.txt").read_text())
        assert (box / "home.txt").read_text().strip() == str(box)
        assert (box / "pwd.txt").read_text().strip() == str(box)
        assert (box / "foo.txt").read_text().strip() == foo
        assert (box / "id.txt").read_text().strip() == str(iid)
    assert simulator.instance_dir(a) != simulator.instance_dir(b)


def test_destroy_kills_every_process_and_closes_ssh(simulator, tmp_path):
    api = sdk(simulator)
    key = ClientKey(tmp_path)
    iid = rent(api, onstart_cmd="setsid nohup sleep 300 >/dev/null 2>&1 &\nsleep 300")
    row = wait_status(api, iid, "running")
    api.attach_ssh(iid, key.public)
    key.run(row["ssh_port"], "nohup sleep 301 >/dev/null 2>&1 &")
    tag = truth_of(simulator, iid)["tag"]
    assert len(wait_for(lambda: len(tagged_pids(tag)) >= 3 and tagged_pids(tag))) >= 3
    api.destroy_instance(iid)
    assert tagged_pids(tag) == []
    assert not port_open(row["ssh_port"])
    assert simulator.leftovers() == {"pids": [], "ports": []}


def test_reboot_reruns_onstart_and_kills_old_processes(simulator):
    api = sdk(simulator)
    iid = rent(api, onstart_cmd="echo boot >> boots.txt; sleep 300")
    wait_status(api, iid, "running")
    box = simulator.instance_dir(iid)
    wait_for(lambda: (box / "boots.txt").exists())
    tag = truth_of(simulator, iid)["tag"]
    before = set(wait_for(lambda: tagged_pids(tag)))
    api.reboot_instance(iid)
    wait_status(api, iid, "running")
    wait_for(lambda: (box / "boots.txt").read_text() == "boot\nboot\n")
    assert before.isdisjoint(tagged_pids(tag))
    history = [s for _, s in truth_of(simulator, iid)["history"]]
    assert history[-3:] == ["rebooting", "loading", "running"]


def test_stop_leaves_nothing_behind_and_is_idempotent(tmp_path):
    key = ClientKey(tmp_path)
    sim = Simulator(SimConfig(boot_delay=0.1))
    sim.start()
    api = sdk(sim)
    api.create_ssh_key(key.public)
    iids = [
        rent(api, onstart_cmd="setsid nohup sleep 300 >/dev/null 2>&1 & sleep 300")
        for _ in range(3)
    ]
    rows = [wait_status(api, i, "running") for i in iids]
    key.run(rows[0]["ssh_port"], "nohup sleep 302 >/dev/null 2>&1 &")
    tags = [truth_of(sim, i)["tag"] for i in iids]
    assert all(wait_for(lambda t=t: tagged_pids(t)) for t in tags)
    state, http_port = sim.state_dir, sim.port
    sim.stop()
    sim.stop()
    assert all(tagged_pids(t) == [] for t in tags)
    assert not any(port_open(r["ssh_port"]) for r in rows)
    assert not port_open(http_port)
    assert not state.exists()
    assert sim.truth()["alive_count"] == 3  # never destroyed: the leak stays visible


def test_given_state_dir_is_kept(tmp_path):
    with Simulator(SimConfig(boot_delay=0.05, state_dir=tmp_path / "state")) as sim:
        api = sdk(sim)
        iid = rent(api, onstart_cmd="echo kept > out.txt")
        wait_for(lambda: (tmp_path / "state" / "instances" / str(iid) / "out.txt").exists())
    assert (tmp_path / "state" / "instances" / str(iid) / "out.txt").read_text() == "kept\n"


INNER_TEST = """
import json, os, time
import vastai

def test_fails_with_a_live_instance(simulator):
    api = vastai.VastAI(api_key=simulator.api_key, server_url=simulator.url, raw=True)
    offer = api.search_offers("num_gpus=1", order="dph_total", limit=1)[0]
    iid = api.create_instance(offer["id"], image="img", onstart_cmd="sleep 300")["new_contract"]
    deadline = time.time() + 10
    while api.show_instance(iid)["actual_status"] != "running" and time.time() < deadline:
        time.sleep(0.05)
    row = [r for r in simulator.truth()["instances"] if r["id"] == iid][0]
    with open(os.environ["INNER_OUT"], "w") as fh:
        json.dump({"tag": row["tag"], "port": row["ssh_port"], "url": simulator.url}, fh)
    assert False, "this test fails on purpose"
"""


def test_fixture_cleans_up_after_a_failing_test(tmp_path):
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(INNER_TEST))
    out = tmp_path / "out.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "snakemake_executor_plugin_vastai.simulator.testing",
            "-p",
            "no:cacheprovider",
            str(tmp_path / "test_inner.py"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, "INNER_OUT": str(out)},
    )
    assert result.returncode == 1, result.stdout[-2000:]
    assert "1 failed" in result.stdout and "error" not in result.stdout.splitlines()[-1]
    import json

    facts = json.loads(out.read_text())
    assert tagged_pids(facts["tag"]) == []
    assert not port_open(facts["port"])
    assert not port_open(int(facts["url"].rsplit(":", 1)[1]))


def test_leftovers_are_detected_and_reported(tmp_path):
    from snakemake_executor_plugin_vastai.simulator import sandbox, testing

    sim = Simulator(SimConfig(boot_delay=0.05))
    sim.start()
    api = sdk(sim)
    iid = rent(api)
    wait_status(api, iid, "running")
    tag = truth_of(sim, iid)["tag"]
    api.destroy_instance(iid)
    env = sandbox.sandbox_env(tmp_path, tag, {})
    straggler = sandbox.spawn("exec sleep 30", sandbox=tmp_path, env=env)  # as if it escaped
    try:
        assert wait_for(lambda: sim.leftovers()["pids"]) == [straggler.pid]
        with pytest.raises(AssertionError, match="left behind"):
            testing._stop_and_check([sim])
    finally:
        straggler.kill()
        straggler.wait()
    assert sim.leftovers() == {"pids": [], "ports": []}
