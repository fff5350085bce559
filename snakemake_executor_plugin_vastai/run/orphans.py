"""Instances the plugin rented that no journal here knows: named at every start.

Every label the plugin gives starts with ``smk-<workflow id>-``. An instance whose label
starts with ``smk-`` but not with this workflow's prefix belongs to another workflow
directory, another machine, or a journal that was lost (the workflow id is derived
from the machine and the directory, so ``rm -rf .snakemake`` keeps this directory's own
prefix: those are this journal's strays, handled by the reconcile). Such an instance is
reported, with its age, price and the command that removes it, and never touched: only
the user, naming it, may destroy it. Its own watchdog ends its billing once no run
feeds it (``watchdog/``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

PLUGIN_PREFIX = "smk-"
SHOWN = 10


def foreign(listed: list[dict], own_prefix: str) -> list[dict]:
    """Listed instances of the plugin that are not this workflow's."""
    return [r for r in listed if str(r.get("label") or "").startswith(PLUGIN_PREFIX)
            and not str(r.get("label") or "").startswith(own_prefix)]


def describe(row: dict, now: float) -> str:
    """``instance 123 (smk-1a2b3c4d-...): up 2.1 h, $0.350/h, running``."""
    started = row.get("start_date")
    age = f"up {(now - float(started)) / 3600:.1f} h" if started else "age unknown"
    dph = row.get("dph_total")
    price = f"${float(dph):.3f}/h" if dph is not None else "price unknown"
    return (f"instance {row.get('id')} ({row.get('label')}): {age}, {price}, "
            f"{row.get('actual_status') or 'status unknown'}")


def report(list_instances: Callable[[str], list[dict]], own_prefix: str,
           warn: Callable[..., Any], now: float | None = None) -> list[dict]:
    """Warn about every foreign instance of the plugin (one listing); returns them."""
    others = foreign(list_instances(PLUGIN_PREFIX), own_prefix)
    if not others:
        return others
    now = time.time() if now is None else now
    lines = [describe(r, now) for r in others[:SHOWN]]
    more = f" and {len(others) - SHOWN} more" if len(others) > SHOWN else ""
    ids = " ".join(str(r.get("id")) for r in others)
    warn(f"{len(others)} instance(s) rented by this plugin for another workflow directory "
         f"or machine (or a lost journal) are alive and billing; they are not touched: "
         f"{'; '.join(lines)}{more}. If they are leftovers, remove them with: "
         f"vastai destroy instances {ids}")
    return others
