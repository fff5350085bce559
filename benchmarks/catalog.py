"""An offer catalogue big enough for 200 concurrent jobs.

The simulator's built-in market (seeded, realistic) holds about 130 offers of
which only a score pass the plugin's default filters (verified, datacenter,
reliability >= 0.98, one GPU). A benchmark of N concurrent jobs needs at least N
matching offers, or it measures the marketplace running dry instead of the
plugin. So we clone one matching built-in offer into many, with distinct ids,
machines and slightly different prices (so the ranking is stable and realistic).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MATCHING = {
    "num_gpus": 1,
    "hosting_type": 1,
    "verification": "verified",
    "verified": True,
    "external": False,
    "rentable": True,
    "rented": False,
    "reliability": 0.995,
    "reliability2": 0.995,
    "disk_space": 500.0,
}
ID_FIELDS = ("id", "ask_contract_id", "bundle_id", "machine_id", "host_id")


def built_in(seed: int = 0) -> list[dict[str, Any]]:
    from snakemake_executor_plugin_vastai.simulator import catalog

    return [dict(o) for o in catalog.load(None, seed)]


def bench_offers(count: int, seed: int = 0) -> list[dict[str, Any]]:
    """``count`` offers that all match the plugin's default query, cheapest first."""
    template = next(o for o in built_in(seed) if o.get("num_gpus") == 1)
    offers = []
    for i in range(count):
        offer = {**template, **MATCHING}
        for name in ID_FIELDS:
            offer[name] = 5_000_000 + i
        step = 0.0005 * i  # distinct prices keep the ranking deterministic
        offer["dph_base"] = round(float(template["dph_base"]) + step, 6)
        offer["dph_total"] = round(float(template["dph_total"]) + step, 6)
        offers.append(offer)
    return offers


def write_offers(path: Path, count: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(bench_offers(count, seed)))
    return path
