"""The ``simulate`` command: start, steer from another process, stop cleanly on signals."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest
import requests
import vastai

from snakemake_executor_plugin_vastai.simulator import cli
from snakemake_executor_plugin_vastai.simulator.sandbox import tagged_pids

from .helpers import IMAGE, port_open, wait_for

pytestmark = pytest.mark.timeout(60)


def start(*args: str) -> tuple[subprocess.Popen, str, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "snakemake_executor_plugin_vastai.simulator.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    url = key = ""
    assert proc.stdout is not None
    for line in proc.stdout:
        if m := re.match(r"export VAST_URL=(\S+)", line):
            url = m.group(1)
        if m := re.match(r"export VAST_API_KEY=(\S+)", line):
            key = m.group(1)
        if url and key:
            break
    assert url and key, proc.stderr.read() if proc.stderr else ""
    return proc, url, key


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_simulate_serves_until_signalled_then_cleans_up(tmp_path, sig):
    offers = tmp_path / "offers.json"
    offers.write_text(
        json.dumps({"offers": [{"id": 7, "gpu_name": "RTX 4090", "num_gpus": 1, "dph_total": 0.3}]})
    )
    proc, url, key = start(
        "--port",
        "0",
        "--seed",
        "3",
        "--boot-delay",
        "0.1",
        "--offers",
        str(offers),
        "--api-key",
        "k-123",
    )
    try:
        assert key == "k-123"
        api = vastai.VastAI(api_key=key, server_url=url, raw=True, retry=1)
        assert [o["id"] for o in api.search_offers("num_gpus=1")] == [7]
        iid = api.create_instance(7, image=IMAGE, onstart_cmd="sleep 300")["new_contract"]
        requests.post(
            url + "/_sim/faults", json={"kind": "api_latency", "seconds": 0.01}, timeout=5
        ).raise_for_status()
        truth = wait_for(
            lambda: (
                (t := requests.get(url + "/_sim/truth", timeout=5).json())["instances"][0][
                    "actual_status"
                ]
                == "running"
                and t
            )
        )
        fact = truth["instances"][0]
        assert fact["id"] == iid and truth["faults"][0]["kind"] == "api_latency"
        wait_for(lambda: tagged_pids(fact["tag"]))
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "simulator stopped" in out
    assert tagged_pids(fact["tag"]) == []
    assert not port_open(fact["ssh_port"])
    assert not port_open(int(url.rsplit(":", 1)[1]))


def test_bad_offers_file_is_a_usage_error(tmp_path, capsys):
    assert cli.main(["--offers", str(tmp_path / "missing.json")]) == 2
    assert "simulate:" in capsys.readouterr().err


def test_busy_port_is_a_usage_error(capsys):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert cli.main(["--port", str(busy.getsockname()[1])]) == 2
    assert "cannot listen" in capsys.readouterr().err


def test_config_from_arguments():
    args = cli.build_parser().parse_args(["--realistic", "--time-scale", "0.01", "--seed", "5"])
    config = cli.config_from(args)
    assert config.seed == 5 and config.boot_delay_range == pytest.approx((0.6, 3.0))
    assert config.rate_limit_interval == pytest.approx(0.0025)
    fast = cli.config_from(cli.build_parser().parse_args(["--boot-delay", "2"]))
    assert fast.boot_delay == 2 and fast.boot_delay_range is None


def test_realistic_boot_delays_are_seeded_and_in_range():
    from snakemake_executor_plugin_vastai.simulator.server import SimConfig, Simulator

    def delays(seed):
        sim = Simulator(SimConfig.realistic(time_scale=0.5, seed=seed))
        try:
            return [sim._boot_delay_for(i) for i in range(10)]
        finally:
            sim.stop()

    first = delays(1)
    assert first == delays(1) != delays(2)
    assert all(30 <= d <= 150 for d in first) and len(set(first)) == 10


def test_package_cli_help_mentions_the_options():
    out = subprocess.run(
        [sys.executable, "-m", "snakemake_executor_plugin_vastai.simulator.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ},
    ).stdout
    for option in (
        "--port",
        "--seed",
        "--offers",
        "--boot-delay",
        "--realistic",
        "--time-scale",
        "--state-dir",
    ):
        assert option in out
