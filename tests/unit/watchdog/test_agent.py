"""The instance-side watchdog's decisions (watchdog/agent.py), against the simulator's
real API with an instance's own key: it never acts on a fresh heartbeat; stale, it
destroys an idle instance, waits for a running job and then stops, stops when a finished
job's outputs were never fetched, ends a job past its maximal runtime, and retries what
the API refuses without touching the job."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
import vastai

from snakemake_executor_plugin_vastai.transports.ssh.transport import onstart_script
from snakemake_executor_plugin_vastai.watchdog import agent
from snakemake_executor_plugin_vastai.watchdog.install import ONSTART_LIMIT, start_lines

pytestmark = pytest.mark.timeout(60)
IMAGE = "vastai/pytorch:2.4.1-cuda-12.4.1"


@pytest.fixture
def sim(simulator_factory):
    return simulator_factory(boot_delay=0.1)


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """The agent's HOME: a directory of our own (the agent reads its paths from there)."""
    monkeypatch.setattr(agent, "HOME", str(tmp_path))
    monkeypatch.setattr(agent, "STATE", str(tmp_path / ".vastai-watchdog"))
    monkeypatch.setattr(agent, "HEARTBEAT", str(tmp_path / ".vastai-watchdog" / "heartbeat"))
    (tmp_path / ".vastai-watchdog").mkdir()
    return tmp_path


def rented(sim, monkeypatch) -> int:
    """An instance, with its own key in the agent's environment (as PID 1's on Vast.ai)."""
    api = vastai.VastAI(api_key=sim.api_key, server_url=sim.url, raw=True, quiet=True)
    [offer] = api.search_offers("num_gpus=1", order="dph_total", limit=1)
    answer = api.create_instance(offer["id"], image=IMAGE, disk=10)
    iid = int(answer["new_contract"])
    monkeypatch.setenv("CONTAINER_ID", str(iid))
    monkeypatch.setenv("CONTAINER_API_KEY", answer["instance_api_key"])
    return iid


def truth(sim, iid) -> dict:
    return next(r for r in sim.truth()["instances"] if r["id"] == iid)


def stale(home: Path, seconds: float = 1000.0) -> None:
    beat = home / ".vastai-watchdog" / "heartbeat"
    beat.touch()
    past = time.time() - seconds
    os.utime(beat, (past, past))


def job_dir(home: Path, name: str = "vastai-job") -> Path:
    ctl = home / name / ".vastai"
    ctl.mkdir(parents=True)
    return ctl


def started_job(ctl: Path, seconds: float, max_runtime: int = 0) -> subprocess.Popen:
    """A job as the wrapper leaves it: its own session, its pid recorded."""
    proc = subprocess.Popen(["sleep", str(seconds)], start_new_session=True)
    (ctl / "pid").write_text(f"{proc.pid}\n")
    (ctl / "max_runtime").write_text(str(max_runtime))
    return proc


def watchdog(sim, timeout: float = 5.0) -> agent.Watchdog:
    dog = agent.Watchdog(sim.url, timeout, 0.1)
    dog.started -= 10 * timeout  # it has been up for a while
    return dog


def test_a_fresh_heartbeat_means_no_action_even_when_idle(sim, home, monkeypatch):
    iid = rented(sim, monkeypatch)
    dog = watchdog(sim)
    (home / ".vastai-watchdog" / "heartbeat").touch()
    assert dog.step() is None
    assert truth(sim, iid)["alive"]


def test_a_fresh_start_counts_as_a_heartbeat(sim, home, monkeypatch):
    iid = rented(sim, monkeypatch)
    dog = agent.Watchdog(sim.url, 5.0, 0.1)  # just started, never fed
    assert dog.step() is None and truth(sim, iid)["alive"]


def test_stale_and_idle_it_destroys_its_instance(sim, home, monkeypatch):
    iid = rented(sim, monkeypatch)
    stale(home)
    assert watchdog(sim).step() == "destroy"
    assert truth(sim, iid)["alive"] is False


def test_stale_with_a_running_job_it_waits_then_stops(sim, home, monkeypatch):
    iid = rented(sim, monkeypatch)
    ctl = job_dir(home)
    proc = started_job(ctl, 30)
    stale(home)
    dog = watchdog(sim)
    assert dog.step() is None  # the job runs: wait
    assert truth(sim, iid)["actual_status"] != "stopped"
    proc.terminate()
    proc.wait()
    (ctl / "rc").write_text("0\n")
    assert dog.step() == "stop"  # its outputs wait on the disk
    sim_row = truth(sim, iid)
    deadline = time.monotonic() + 5
    while sim_row["actual_status"] != "stopped" and time.monotonic() < deadline:
        time.sleep(0.05)
        sim_row = truth(sim, iid)
    assert sim_row["alive"] and sim_row["actual_status"] == "stopped"


def test_a_finished_job_whose_outputs_never_came_home_means_stop(sim, home, monkeypatch):
    rented(sim, monkeypatch)
    ctl = job_dir(home, "vastai-jobs/j1/work")
    (ctl / "pid").write_text("999999\n")
    (ctl / "rc").write_text("0\n")
    stale(home)
    assert watchdog(sim).step() == "stop"


def test_outputs_home_and_nothing_running_means_destroy(sim, home, monkeypatch):
    iid = rented(sim, monkeypatch)
    ctl = job_dir(home)
    (ctl / "pid").write_text("999999\n")
    (ctl / "rc").write_text("0\n")
    (ctl / "home").touch()  # the run's clean-up after its download
    stale(home)
    assert watchdog(sim).step() == "destroy"
    assert not truth(sim, iid)["alive"]


def test_an_orphaned_job_past_its_maximal_runtime_is_ended(sim, home, monkeypatch):
    rented(sim, monkeypatch)
    ctl = job_dir(home)
    proc = started_job(ctl, 30, max_runtime=1)
    past = time.time() - 5
    os.utime(ctl / "pid", (past, past))  # started 5 s ago, cap 1 s
    stale(home)
    assert watchdog(sim).step() is None
    assert proc.wait(timeout=5) == -15  # SIGTERM to its process group


def test_a_job_within_its_runtime_is_never_touched(sim, home, monkeypatch):
    rented(sim, monkeypatch)
    proc = started_job(job_dir(home), 30, max_runtime=600)
    stale(home)
    assert watchdog(sim).step() is None
    assert proc.poll() is None
    proc.kill()
    proc.wait()


def test_a_refused_key_is_retried_later_and_never_touches_a_job(sim, home, monkeypatch):
    iid = rented(sim, monkeypatch)
    monkeypatch.setenv("CONTAINER_API_KEY", "0" * 64)  # refused: 401
    stale(home)
    dog = watchdog(sim)
    assert dog.step() == "failed"
    assert dog.step() is None  # not before the pause is over
    assert dog.pause == 10.0 and truth(sim, iid)["alive"]
    dog.next_try = 0.0
    assert dog.step() == "failed" and dog.pause == 20.0


def test_the_start_script_fits_vast_ais_onstart_limit():
    key = "ssh-ed25519 " + "A" * 68 + " snakemake-vastai-run-0123456789abcdef"
    script = onstart_script(key, start_lines("https://console.vast.ai", 600))
    assert len(script) <= ONSTART_LIMIT, len(script)
    assert "CONTAINER_API_KEY" not in script  # the key is read from the environment


def test_the_packed_agent_unpacks_and_runs_with_the_start_lines(tmp_path):
    """The start lines, run by sh as the instance would: the agent is unpacked and starts
    (it says it is watching) from a HOME of its own."""
    env = {"HOME": str(tmp_path), "PATH": os.environ["PATH"]}
    lines = start_lines("http://127.0.0.1:9", 600)
    done = subprocess.run(["sh", "-c", lines], env=env, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    log = tmp_path / ".vastai-watchdog" / "log"
    deadline = time.monotonic() + 10
    while not (log.exists() and "watching" in log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "watching (orphan timeout 600 s" in log.read_text()
    subprocess.run(["pkill", "-f", str(tmp_path / ".vastai-watchdog" / "agent.py")])


def reaped(argv: list[str]) -> tuple[subprocess.Popen, threading.Thread]:
    """A job in its own process group, reaped as the container's shell reaps it (the
    agent is not its parent, so it never sees a zombie)."""
    proc = subprocess.Popen(argv, start_new_session=True)
    reaper = threading.Thread(target=proc.wait, daemon=True)
    reaper.start()
    return proc, reaper


def test_storage_mode_a_job_past_its_runtime_and_the_timeout_is_ended(home):
    proc, reaper = reaped(["sleep", "30"])
    started = time.monotonic()
    agent.watch_job(proc.pid, max_runtime=0.5, timeout=0.5, tick=0.1)
    reaper.join(5)
    assert proc.returncode == -15
    assert time.monotonic() - started >= 1.0  # not before runtime + timeout


def test_storage_mode_a_job_within_its_runtime_ends_on_its_own(home):
    proc, reaper = reaped(["sleep", "0.3"])
    agent.watch_job(proc.pid, max_runtime=60, timeout=5, tick=0.05)
    reaper.join(5)
    assert proc.returncode == 0


def wait_status(sim, iid, status: str, seconds: float = 5.0) -> dict:
    deadline = time.monotonic() + seconds
    while truth(sim, iid)["actual_status"] != status and time.monotonic() < deadline:
        time.sleep(0.05)
    return truth(sim, iid)


@pytest.mark.parametrize("rc, pickup", [(1, 30.0), (0, 0.0)])
def test_storage_mode_a_failed_job_or_directory_outputs_stop_the_instance(
        sim, home, monkeypatch, rc, pickup):
    """The log, which only the instance holds, waits at storage price for the run."""
    iid = rented(sim, monkeypatch)
    started = time.monotonic()
    assert agent.job_ended(sim.url, rc, pickup) == 0
    assert time.monotonic() - started < 5  # at once, not after the pickup
    row = wait_status(sim, iid, "stopped")
    assert row["alive"] and row["user_stopped"] is True


def test_storage_mode_a_succeeded_job_not_picked_up_destroys_the_instance(
        sim, home, monkeypatch):
    """Its outputs are in the bucket: with no run to pick it up, nothing bills on."""
    iid = rented(sim, monkeypatch)
    started = time.monotonic()
    assert agent.job_ended(sim.url, 0, 1.0) == 0
    assert time.monotonic() - started >= 1.0  # the run had its pickup window first
    row = truth(sim, iid)
    assert not row["alive"] and row["stops"] == 0
