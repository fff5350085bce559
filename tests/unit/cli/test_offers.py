"""``snakemake-vastai offers``: GPU models, counts and prices, from one real search."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict

import pytest

from snakemake_executor_plugin_vastai.cli import main as cli_main
from snakemake_executor_plugin_vastai.simulator import catalog


def expected(query: dict) -> dict[str, list[float]]:
    """Prices per GPU model of the simulator's built-in market (seed 0) under the SDK's
    defaults (verified, rentable, not rented, not external) and ``query``."""
    prices: dict[str, list[float]] = defaultdict(list)
    for offer in catalog.load(None, 0):
        if offer["verified"] and offer["rentable"] and not offer["rented"] \
                and not offer["external"] and all(offer[k] == v for k, v in query.items()):
            prices[offer["gpu_name"]].append(offer["dph_total"])
    return prices


@pytest.fixture
def key_env(monkeypatch, simulator):
    for name in ("SNAKEMAKE_VASTAI_API_KEY", "VAST_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VAST_API_KEY", simulator.api_key)


def test_offers_counts_and_prices_each_gpu_model_for_a_query(simulator, key_env, capsys):
    assert cli_main.main(["offers", "num_gpus=1", "--api-url", simulator.url, "--json"]) == 0
    models = {m["gpu_name"]: m for m in json.loads(capsys.readouterr().out)}
    want = expected({"num_gpus": 1})
    assert set(models) == set(want) and len(want) > 3
    for name, prices in want.items():
        got = models[name]
        assert (got["offers"], got["num_gpus"]) == (len(prices), [1]), name
        # the search prices the disk in (10 GB by default), a fraction of a cent an hour
        assert (got["dph_min"], got["dph_max"]) == pytest.approx((min(prices), max(prices)),
                                                                 abs=0.005)
    assert cli_main.main(["offers", "num_gpus=1", "--api-url", simulator.url]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split()[:3] == ["GPU", "OFFERS", "GPUS/OFFER"] and len(rows) == len(want)
    cheapest = min(want, key=lambda n: min(want[n]))
    assert rows[0].startswith(cheapest)


def test_offers_refuses_a_bad_query_and_a_missing_key(simulator, key_env, capsys, monkeypatch):
    assert cli_main.main(["offers", "gpu_ram>=lots", "--api-url", simulator.url]) == 2
    assert "gpu_ram" in capsys.readouterr().err
    monkeypatch.delenv("VAST_API_KEY")
    assert cli_main.main(["offers", "--api-url", simulator.url]) == 2
    assert "no Vast.ai API key" in capsys.readouterr().err


def test_every_subcommand_answers_help_through_python_m():
    commands = ("demo", "simulate", "offers", "plan", "journal")
    procs = {c: subprocess.Popen([sys.executable, "-m", "snakemake_executor_plugin_vastai", c,
                                  "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True) for c in commands}  # side by side: 5 starts
    for command, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and "usage" in out.lower(), (command, err)
