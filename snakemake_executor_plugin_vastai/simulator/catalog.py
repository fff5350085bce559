"""The offer catalogue: a seeded, realistic built-in marketplace, or offers loaded from JSON.

Offers are stored in the units of the REST API (what ``POST /api/v0/bundles/`` answers),
which the SDK's query parser converts to on the way in:

- ``cpu_ram``, ``gpu_ram``, ``gpu_total_ram``: MB. The SDK multiplies a query's GB by
  1000 (``cpu_ram>=64`` is sent as ``{"cpu_ram": {"gte": 64000.0}}``), so 64 GiB of RAM is
  stored as 65536 and satisfies it.
- ``disk_space``: GB; ``inet_up``/``inet_down``: Mbit/s; ``duration``: seconds (the SDK
  multiplies days by 86400); ``storage_cost``: $/GB/month; ``inet_*_cost``: $/GB.
- ``dph_base``: $/hour of the GPUs, CPU and RAM. ``dph_total`` depends on the disk you
  ask for: ``dph_base + storage_cost * allocated_storage / 720`` (a month of 720 hours);
  the market recomputes it per search and per rental (see ``price``).
- ``gpu_name`` with spaces (``RTX 4090``; the SDK turns ``RTX_4090`` into that).
- ``hosting_type``: 1 for a datacenter, 0 otherwise; the SDK derives ``datacenter`` from it.
- ``geolocation``: ``"Region, CC"`` or a bare country code such as ``"US"``.

Every field the SDK knows as an offer field (``vastai.api.query.offers_fields``) is present,
so any of them can be filtered on. The built-in catalogue is a pure function of the seed.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HOURS_PER_MONTH = 720.0
DEFAULT_STORAGE_GB = 5.0


@dataclass(frozen=True)
class GpuModel:
    """Typical market facts of one GPU model (per GPU)."""

    name: str
    ram_mb: int
    price: tuple[float, float]  # $/hour per GPU, low..high
    dlperf: float
    tflops: float
    mem_bw: float  # GB/s
    power: int  # W
    compute_cap: int
    cuda_max: float
    weight: int  # relative frequency in the market
    datacenter_bias: float  # probability the machine sits in a datacenter
    counts: tuple[int, ...]  # GPU counts machines of this model come with


GPU_MODELS: tuple[GpuModel, ...] = (
    GpuModel("RTX 3060", 12288, (0.05, 0.10), 9.5, 12.7, 360, 170, 860, 12.4, 4, 0.05, (1, 2)),
    GpuModel("RTX A4000", 16376, (0.10, 0.18), 13.0, 19.2, 448, 140, 860, 12.4, 3, 0.3, (1, 2, 4)),
    GpuModel(
        "RTX 3090", 24576, (0.13, 0.26), 25.0, 35.6, 936, 350, 860, 12.4, 10, 0.15, (1, 2, 4, 8)
    ),
    GpuModel(
        "RTX 4090", 24564, (0.28, 0.55), 50.0, 82.6, 1008, 450, 890, 12.8, 14, 0.25, (1, 2, 4, 8)
    ),
    GpuModel(
        "RTX 5090", 32607, (0.55, 0.95), 75.0, 104.8, 1792, 575, 1200, 12.8, 7, 0.3, (1, 2, 4, 8)
    ),
    GpuModel(
        "RTX A6000", 49140, (0.35, 0.60), 28.0, 38.7, 768, 300, 860, 12.4, 5, 0.5, (1, 2, 4, 8)
    ),
    GpuModel("L40S", 46068, (0.50, 0.90), 55.0, 91.6, 864, 350, 890, 12.8, 4, 0.8, (1, 2, 4, 8)),
    GpuModel(
        "A100 PCIE", 40960, (0.65, 1.10), 60.0, 19.5, 1555, 250, 800, 12.4, 3, 0.8, (1, 2, 4, 8)
    ),
    GpuModel(
        "A100 SXM4", 81920, (0.90, 1.50), 70.0, 19.5, 2039, 400, 800, 12.4, 4, 0.9, (1, 2, 4, 8)
    ),
    GpuModel(
        "H100 PCIE", 81559, (1.40, 2.30), 100.0, 51.2, 2039, 350, 900, 12.8, 3, 0.9, (1, 2, 4, 8)
    ),
    GpuModel(
        "H100 SXM", 81559, (1.60, 2.80), 130.0, 66.9, 3352, 700, 900, 12.8, 5, 0.95, (1, 2, 4, 8)
    ),
)

GEOLOCATIONS: tuple[str, ...] = (
    "Poland, PL",
    "Germany, DE",
    "California, US",
    "Texas, US",
    "Virginia, US",
    "US",
    "Japan, JP",
    "Quebec, CA",
    "Netherlands, NL",
    "Sweden, SE",
    "Czechia, CZ",
    "Taiwan, TW",
    "Norway, NO",
    "France, FR",
    "United Kingdom, GB",
    "Spain, ES",
    "Singapore, SG",
    "Australia, AU",
    "Brazil, BR",
    "Finland, FI",
    "Romania, RO",
    "Oregon, US",
)

CPU_NAMES: tuple[str, ...] = (
    "AMD EPYC 7543 32-Core Processor",
    "AMD EPYC 7763 64-Core Processor",
    "AMD Ryzen 9 5950X 16-Core Processor",
    "Intel Xeon Gold 6338",
    "AMD EPYC 9654 96-Core",
    "Intel Core i9-13900K",
    "AMD Ryzen Threadripper PRO 5975WX 32-Cores",
)
MOBOS: tuple[str, ...] = ("ROMED8-2T", "H12SSL-i", "X570 AORUS MASTER", "WRX80E-SAGE", "MZ73-LM0")
DRIVERS: tuple[tuple[str, float], ...] = (
    ("535.183.01", 12.2),
    ("550.54.14", 12.4),
    ("550.127.05", 12.4),
    ("560.35.03", 12.6),
    ("570.86.10", 12.8),
)

# Fields a loaded offer gets when it does not say otherwise.
OFFER_DEFAULTS: dict[str, Any] = {
    "verified": True,
    "verification": "verified",
    "rentable": True,
    "rented": False,
    "external": False,
    "hosting_type": 0,
    "reliability": 0.99,
    "geolocation": "US",
    "cpu_cores": 16,
    "cpu_ram": 65536,
    "disk_space": 200.0,
    "inet_up": 500.0,
    "inet_down": 1000.0,
    "cuda_max_good": 12.4,
    "driver_version": "550.54.14",
    "storage_cost": 0.0,
    "inet_up_cost": 0.0,
    "inet_down_cost": 0.0,
    "gpu_ram": 24576,
    "compute_cap": 860,
    "cpu_arch": "amd64",
    "has_avx": 1,
    "static_ip": False,
    "direct_port_count": 100,
    "pci_gen": 4.0,
    "pcie_bw": 25.0,
    "disk_bw": 2000.0,
    "gpu_display_active": False,
    "vms_enabled": False,
    "cluster_id": None,
    "bw_nvlink": 0.0,
    "ubuntu_version": "22.04",
    "mobo_name": "ROMED8-2T",
    "cpu_name": "AMD EPYC 7543",
    "cpu_ghz": 3.0,
    "gpu_arch": "nvidia",
    "gpu_mem_bw": 900.0,
    "gpu_max_power": 350.0,
    "gpu_max_temp": 83.0,
    "duration": 30 * 86400.0,
    "dlperf": 25.0,
    "total_flops": 35.0,
    "gpu_frac": 1.0,
    "os_version": "22.04",
    "disk_name": "nvme",
    "is_bid": False,
}


def _pick_weighted(rng: random.Random, models: tuple[GpuModel, ...]) -> GpuModel:
    return rng.choices(models, weights=[m.weight for m in models])[0]


def _machine(rng: random.Random, machine_id: int, host_id: int) -> dict[str, Any]:
    """One machine: the facts its offers share."""
    model = _pick_weighted(rng, GPU_MODELS)
    datacenter = rng.random() < model.datacenter_bias
    counts = model.counts
    weights = [4 if c == 8 and datacenter else (3 if c == 1 else 2) for c in counts]
    gpus = rng.choices(counts, weights=weights)[0]
    driver, cuda = rng.choice(DRIVERS)
    cores = rng.choice((8, 16, 24, 32, 48, 64, 128, 192)) if gpus > 1 else rng.choice((8, 12, 16))
    verified = rng.random() < (0.97 if datacenter else 0.82)
    return {
        "model": model,
        "gpus": gpus,
        "machine_id": machine_id,
        "host_id": host_id,
        "datacenter": datacenter,
        "verified": verified,
        "reliability": round(
            rng.uniform(0.975, 0.999) if datacenter else rng.uniform(0.90, 0.995), 4
        ),
        "geolocation": rng.choice(GEOLOCATIONS),
        "cpu_cores": max(cores, 4 * gpus),
        "cpu_ram": int(rng.choice((32, 64, 128, 256, 512, 1024)) * 1024 * max(1, gpus // 2)),
        "disk_space": float(rng.choice((250, 500, 1000, 2000, 4000))) * max(1, gpus // 2),
        "inet_up": round(rng.uniform(80, 9000 if datacenter else 1200), 1),
        "inet_down": round(rng.uniform(200, 9500 if datacenter else 2000), 1),
        "storage_cost": round(rng.uniform(0.05, 0.30), 4),
        "price_per_gpu": rng.uniform(*model.price),
        "driver_version": driver,
        "cuda_max_good": min(cuda, model.cuda_max),
        "cpu_name": rng.choice(CPU_NAMES),
        "mobo_name": rng.choice(MOBOS),
        "pci_gen": rng.choice((3.0, 4.0, 4.0, 5.0)),
        "duration_days": rng.uniform(3, 180),
        "static_ip": datacenter or rng.random() < 0.3,
    }


def _offer(rng: random.Random, m: dict[str, Any], offer_id: int, num_gpus: int) -> dict[str, Any]:
    """One offer of ``num_gpus`` of machine ``m`` in API units (dph_total for 5 GB)."""
    model: GpuModel = m["model"]
    frac = num_gpus / m["gpus"]
    dph_base = round(m["price_per_gpu"] * num_gpus * (1.0 + 0.02 * rng.random()), 4)
    dlperf = round(model.dlperf * num_gpus * rng.uniform(0.9, 1.05), 3)
    flops = round(model.tflops * num_gpus, 2)
    cores = int(m["cpu_cores"])
    offer = {
        "id": offer_id,
        "ask_contract_id": offer_id,
        "bundle_id": offer_id + 7_000_000,
        "machine_id": m["machine_id"],
        "host_id": m["host_id"],
        "gpu_name": model.name,
        "num_gpus": num_gpus,
        "gpu_frac": round(frac, 4),
        "gpu_ram": model.ram_mb,
        "gpu_total_ram": model.ram_mb * num_gpus,
        "gpu_arch": "nvidia",
        "gpu_mem_bw": float(model.mem_bw),
        "gpu_max_power": float(model.power),
        "gpu_max_temp": 83.0,
        "gpu_display_active": False,
        "gpu_lanes": 16,
        "compute_cap": model.compute_cap,
        "cuda_max_good": m["cuda_max_good"],
        "driver_version": m["driver_version"],
        "cpu_name": m["cpu_name"],
        "cpu_arch": "amd64",
        "cpu_cores": cores,
        "cpu_cores_effective": round(cores * frac, 1),
        "cpu_ghz": round(rng.uniform(2.4, 5.2), 1),
        "cpu_ram": int(m["cpu_ram"] * frac),
        "has_avx": 1,
        "mobo_name": m["mobo_name"],
        "pci_gen": m["pci_gen"],
        "pcie_bw": round(
            {3.0: 12.5, 4.0: 25.1, 5.0: 50.2}[m["pci_gen"]] * rng.uniform(0.8, 1.0), 1
        ),
        "bw_nvlink": 0.0,
        "disk_space": round(m["disk_space"] * frac, 1),
        "disk_bw": round(rng.uniform(800, 6000), 1),
        "disk_name": "nvme",
        "inet_up": m["inet_up"],
        "inet_down": m["inet_down"],
        "inet_up_cost": round(rng.uniform(0.0, 0.01), 4),
        "inet_down_cost": round(rng.uniform(0.0, 0.01), 4),
        "direct_port_count": rng.choice((20, 50, 100, 200)),
        "static_ip": m["static_ip"],
        "hosting_type": 1 if m["datacenter"] else 0,
        "geolocation": m["geolocation"],
        "reliability": m["reliability"],
        "reliability2": m["reliability"],
        "verified": m["verified"],
        "verification": "verified" if m["verified"] else "unverified",
        "rentable": True,
        "rented": False,
        "external": False,
        "vms_enabled": False,
        "cluster_id": None,
        "storage_cost": m["storage_cost"],
        "dph_base": dph_base,
        "min_bid": round(dph_base * rng.uniform(0.35, 0.7), 4),
        "dlperf": dlperf,
        "total_flops": flops,
        "duration": round(m["duration_days"] * 86400.0, 1),
        "ubuntu_version": "22.04",
        "os_version": "22.04",
        "is_bid": False,
        "logo": "/static/logos/vastai_small2.png",
        "webpage": None,
        "public_ipaddr": f"198.51.100.{m['machine_id'] % 250 + 1}",
    }
    return price(offer, DEFAULT_STORAGE_GB)


def _splits(rng: random.Random, gpus: int) -> list[int]:
    """GPU counts a machine is offered in: always whole, sometimes halves and singles."""
    counts = [gpus]
    if gpus >= 2 and rng.random() < 0.5:
        counts.append(gpus // 2)
    if gpus >= 4 and rng.random() < 0.35:
        counts.append(1)
    return counts


def generate(seed: int = 0, machines: int = 90) -> list[dict[str, Any]]:
    """The built-in catalogue: a pure function of ``seed`` (about 120-150 offers)."""
    rng = random.Random(f"vastai-sim-catalogue-{seed}")
    machine_ids = sorted(rng.sample(range(2_000, 60_000), machines))
    host_ids = rng.sample(range(10_000, 400_000), max(machines // 2, 1))
    next_offer = rng.randrange(11_000_000, 19_000_000)
    offers = []
    for machine_id in machine_ids:
        m = _machine(rng, machine_id, rng.choice(host_ids))
        for count in _splits(rng, m["gpus"]):
            next_offer += rng.randrange(1, 4_000)
            offers.append(_offer(rng, m, next_offer, count))
    return offers


def price(offer: dict[str, Any], storage_gb: float, bid: bool = False) -> dict[str, Any]:
    """A copy of ``offer`` priced for ``storage_gb`` of disk (and as a bid, if asked).

    Recomputes the derived money fields the way the service does: the storage part of
    the hourly price, ``dph_total``, and the per-dollar figures and ``score`` from it.
    """
    out = dict(offer)
    base = float(out["min_bid"] if bid and out.get("min_bid") is not None else out["dph_base"])
    storage = float(out.get("storage_cost") or 0.0) * storage_gb / HOURS_PER_MONTH
    total = round(base + storage, 6)
    out["storage_total_cost"] = round(storage, 6)
    out["dph_total"] = total
    out["is_bid"] = bool(bid)
    per_dollar = total if total > 0 else 1e-9
    out["dlperf_per_dphtotal"] = round(float(out.get("dlperf") or 0.0) / per_dollar, 3)
    out["flops_per_dphtotal"] = round(float(out.get("total_flops") or 0.0) / per_dollar, 3)
    reliability = float(out.get("reliability2") or out.get("reliability") or 0.0)
    out["score"] = round(out["dlperf_per_dphtotal"] * reliability**4, 3)
    return out


def normalize(raw: dict[str, Any]) -> dict[str, Any]:
    """Complete a user-supplied offer with defaults so it is searchable and rentable.

    Needs at least ``id``. A given ``dph_total`` without ``dph_base`` is taken as the
    price for the default 5 GB of storage, so filters on it behave as written.
    """
    if "id" not in raw:
        raise ValueError(f"offer without an id: {raw!r}")
    offer = {**OFFER_DEFAULTS, **raw}
    offer["id"] = int(offer["id"])
    offer.setdefault("ask_contract_id", offer["id"])
    offer.setdefault("machine_id", offer["id"])
    offer.setdefault("host_id", offer["machine_id"])
    offer.setdefault("gpu_name", "RTX 4090")
    offer.setdefault("num_gpus", 1)
    offer.setdefault("gpu_total_ram", offer["gpu_ram"] * offer["num_gpus"])
    offer.setdefault("cpu_cores_effective", float(offer["cpu_cores"]) * offer["gpu_frac"])
    offer.setdefault("reliability2", offer["reliability"])
    if "dph_base" not in offer:
        storage = float(offer["storage_cost"]) * DEFAULT_STORAGE_GB / HOURS_PER_MONTH
        offer["dph_base"] = round(float(offer.get("dph_total", 0.25)) - storage, 6)
    offer.setdefault("min_bid", round(float(offer["dph_base"]) * 0.5, 6))
    return price(offer, DEFAULT_STORAGE_GB)


def load(source: Path | str | list[dict[str, Any]] | None, seed: int = 0) -> list[dict[str, Any]]:
    """Offers from a JSON file (a list, or ``{"offers": [...]}``), a list, or the built-in."""
    if source is None:
        return generate(seed)
    data: Any = source
    if isinstance(source, str | Path):
        data = json.loads(Path(source).read_text())
    if isinstance(data, dict):
        data = data.get("offers")
    if not isinstance(data, list):
        raise ValueError("offers must be a list of offer objects (or {'offers': [...]})")
    offers = [normalize(dict(o)) for o in data]
    ids = [o["id"] for o in offers]
    if len(set(ids)) != len(ids):
        raise ValueError("offer ids must be unique")
    return offers
