"""What a run cost in dollars, from the simulator's ground truth (``GET /_sim/truth``).

Users pay dollars, not seconds: every benchmark that compares runs prints this bill
beside wall time and instance-seconds. The simulator bills ``dph_total`` per second
from creation to destruction (the disk's storage price is part of it), storage alone
while an instance is stopped, and bandwidth per GB each way. The split here:

- storage: the disk's $/h (``storage_dph``) over the seconds it ran, plus what it
  billed while stopped;
- bandwidth: ``billed_bandwidth_dollars``;
- compute: the rest (GPU, CPU, RAM).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def ours(truth: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's instances (a foreign instance a test made is not the run's bill)."""
    return [i for i in truth["instances"] if not i.get("foreign")]


def bill(instances: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Total, compute, storage and bandwidth dollars, instance-seconds and instances."""
    out = {"dollars": 0.0, "compute": 0.0, "storage": 0.0, "bandwidth": 0.0,
           "instance_seconds": 0.0, "instances": 0.0}
    for i in instances:
        running = float(i["billed_seconds"]) - float(i.get("stopped_seconds") or 0.0)
        storage = float(i.get("storage_dph") or 0.0) * running / 3600 + float(
            i.get("storage_dollars_stopped") or 0.0)
        bandwidth = float(i.get("billed_bandwidth_dollars") or 0.0)
        total = float(i["billed_dollars"])
        out["dollars"] += total
        out["storage"] += storage
        out["bandwidth"] += bandwidth
        out["compute"] += total - storage - bandwidth
        out["instance_seconds"] += float(i["billed_seconds"])
        out["instances"] += 1
    return out


def text(b: dict[str, float]) -> str:
    """One line: $total (compute / storage / bandwidth)."""
    return (f"${b['dollars']:.4f} (compute ${b['compute']:.4f}, storage ${b['storage']:.4f},"
            f" bandwidth ${b['bandwidth']:.4f})")
