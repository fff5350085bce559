"""Figures, their summary statistics, the printed table and the JSON file.

A :class:`Figure` is one row of the table: a value (a median, with min and max
over repeats or jobs), the target it is held against, its ratio to its floor
(the physical minimum measured side by side in the same run), and a verdict:
``pass``, ``miss``, ``info`` (no target) or ``n/a`` (could not be measured, with
the reason). Every figure keeps its raw numbers in ``details`` for the JSON.
"""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Summary:
    """Median, min and max of some measurements (n of them)."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Summary | None:
        got = [float(v) for v in values if v is not None]
        if not got:
            return None
        return cls(statistics.median(got), min(got), max(got), len(got))


@dataclass
class Figure:
    """One row of the results table."""

    key: str  # stable id, e.g. "1.overhead.n200"
    name: str
    unit: str
    value: Summary | None = None
    target: str = ""
    met: bool | None = None  # None: no target (info) or not measured
    ratio: float | None = None  # value / floor (or plugin / reference)
    ratio_label: str = ""
    reason: str = ""  # why not available
    note: str = ""  # shown after the value, e.g. "7/200 jobs failed"
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        if self.value is None:
            return "n/a"
        if self.met is None:
            return "info"
        return "pass" if self.met else "miss"

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["status"] = self.status
        out["value"] = None if self.value is None else asdict(self.value)
        if self.value is None:
            out["value"] = "not available"
        return out


def unavailable(key: str, name: str, unit: str, reason: str, target: str = "") -> Figure:
    return Figure(key=key, name=name, unit=unit, target=target, reason=reason)


def check(figure: Figure, passed: Callable[[float], bool]) -> Figure:
    """Set the verdict from the median."""
    if figure.value is not None:
        figure.met = bool(passed(figure.value.median))
    return figure


# --------------------------------------------------------------------------- the table


def _fmt(x: float) -> str:
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def value_text(fig: Figure) -> str:
    if fig.value is None:
        return f"not available: {fig.reason}"
    v = fig.value
    text = f"{_fmt(v.median)} {fig.unit}"
    if v.n > 1 and v.low != v.high:
        text += f" [{_fmt(v.low)}..{_fmt(v.high)}] n={v.n}"
    return f"{text} ({fig.note})" if fig.note else text


def ratio_text(fig: Figure) -> str:
    if fig.ratio is None:
        return ""
    return f"{fig.ratio:.2f}" + (f" {fig.ratio_label}" if fig.ratio_label else "")


def table(figures: list[Figure]) -> str:
    """A Markdown table (readable as plain text too)."""
    rows = [("figure", "value (median [min..max])", "target", "ratio", "verdict")]
    rows += [(f"{f.key} {f.name}", value_text(f), f.target, ratio_text(f), f.status)
             for f in figures]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = []
    for n, row in enumerate(rows):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
                     + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the machine


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import paramiko

    return {
        "cpu_model": _cpu_model(),
        "cores": _cores(),
        "memory_gib": _memory_gib(),
        "python": platform.python_version(),
        "paramiko": paramiko.__version__,
        "openssh": _openssh(),
        "snakemake": _version("snakemake"),
        "asyncssh": _version("asyncssh"),
        "kernel": platform.release(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


def _memory_gib() -> float | None:
    """MemTotal from /proc/meminfo, in GiB."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _openssh() -> str:
    try:
        done = subprocess.run(["ssh", "-V"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    return (done.stderr or done.stdout).strip()


def _version(module: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return "not installed"


def write_json(path: Path, figures: list[Figure], meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {**meta, "figures": [f.as_dict() for f in figures]}
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
