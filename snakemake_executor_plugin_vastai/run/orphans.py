"""Instances the plugin rented that no journal here knows: named at every start, and the
rule by which ``journal cleanup --orphans`` removes them.

Every label the plugin gives starts with ``smk-<workflow id>-``. An instance whose label
starts with ``smk-`` but not with this workflow's prefix belongs to another workflow
directory, another machine, or a journal that was lost (the workflow id is derived
from the machine and the directory, so ``rm -rf .snakemake`` keeps this directory's own
prefix: those are this journal's strays, handled by the reconcile). Such an instance is
reported at start, with its age, price and the commands that remove it, and never
touched: only the user, naming it, may destroy it. Its own watchdog ends its billing once
no run feeds it (``watchdog/``).

Which orphans may go (:func:`plan`)
-----------------------------------
A run feeds its instances' watchdogs over SSH with keys only it holds, so nobody else can
read an instance's heartbeat. What anyone can read is what the watchdog does once its
heartbeat is stale: it destroys an idle instance, or lets the job finish and then STOPS
the instance. So an instance that Vast.ai lists as stopped (``intended_status`` is
``stopped`` and the container is not running: ``actual_status`` ``stopped`` in the
simulator, ``exited`` on Vast.ai) runs no watchdog and no job, and no run is feeding it;
a run that wanted it back would ask Vast.ai to start it first, which turns
``intended_status`` to ``running``. Such an orphan is removed. Every other one (running,
booting, being started again) may be fed by a live run somewhere (another machine,
another directory), so it is listed with why it is left: if nobody feeds it, its
watchdog stops or destroys it within its orphan timeout, and a later ``--orphans``
removes what it stopped. The status is read again just before each destroy, so an
instance started again since the listing is left too.

Scope: without ids, the instances with this directory's prefix that no journal row here
knows (the journal is read after the listing, and every label is journaled before its
create, so a live run of this directory knows each instance it rented); instances of
other workflows are only reported. With ids, exactly those instances, which may belong to
another workflow, but only if their label carries the plugin's ``smk-`` prefix: an
instance the plugin did not rent is refused, by id and label, and nothing is destroyed.
A stopped instance may hold a finished job's outputs that its own workflow's next run
would have fetched: naming another workflow's instance gives those up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from .commands import own_command

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
         f"{'; '.join(lines)}{more}. If they are leftovers, "
         f"'{own_command()} journal cleanup --orphans {ids}' removes those their watchdog "
         f"has stopped (no run feeds them), and 'vastai destroy instances {ids}' removes "
         "them whatever they are doing")
    return others


# -- journal cleanup --orphans: which orphans may go ----------------------------------------
@dataclass
class Orphan:
    """A listed instance of the plugin and why it is removed or left."""

    row: dict
    reason: str

    @property
    def instance_id(self) -> int:
        return int(self.row["id"])

    @property
    def label(self) -> str:
        return str(self.row.get("label") or "")


@dataclass
class OrphanPlan:
    remove: list[Orphan] = field(default_factory=list)  # proven unfed: destroyed
    left: list[Orphan] = field(default_factory=list)  # may be fed, or this journal's
    foreign: list[dict] = field(default_factory=list)  # other workflows', not named
    refused: list[dict] = field(default_factory=list)  # named, not rented by the plugin
    missing: list[int] = field(default_factory=list)  # named, not listed


def _status(row: dict, name: str) -> str:
    return str(row.get(name) or "").lower()


def proven_unfed(row: dict) -> bool:
    """Vast.ai says nobody wants it running and its container does not run (module
    docstring): its watchdog stopped it, or someone else did; no run feeds it."""
    return (_status(row, "intended_status") == "stopped"
            and _status(row, "actual_status") in ("stopped", "exited"))


def why_left(row: dict) -> str:
    """Why an orphan that is not :func:`proven_unfed` is left, for the user."""
    actual = _status(row, "actual_status") or "starting"
    if _status(row, "intended_status") == "stopped":
        return (f"being stopped ({actual}); run --orphans again once Vast.ai lists it "
                "stopped")
    if actual in ("stopped", "exited"):
        return (f"{actual}, but Vast.ai is asked to run it: a run may be starting it again "
                "to bring outputs home")
    return (f"{actual}: a live run (another machine or directory) may feed its watchdog; "
            "if none does, the watchdog stops or destroys it within its orphan timeout")


def plan(listed: list[dict], *, own_prefix: str, known_labels: Collection[str],
         known_ids: Collection[int], named: list[int] | None = None) -> OrphanPlan:
    """What ``journal cleanup --orphans`` removes and leaves, from one listing (all of the
    account's instances) and what this directory's journal knows; changes nothing.

    ``named`` None: this directory's prefix, minus what the journal knows; other
    workflows' instances are only reported. ``named``: exactly those ids, each with the
    plugin's ``smk-`` prefix, else refused (see the module docstring).
    """
    result = OrphanPlan()

    def known(row: dict) -> bool:
        return str(row.get("label") or "") in known_labels or int(row["id"]) in known_ids

    if named is None:
        candidates = [r for r in listed if str(r.get("label") or "").startswith(own_prefix)
                      and not known(r)]
        result.foreign = foreign(listed, own_prefix)
    else:
        by_id = {int(r["id"]): r for r in listed}
        candidates = []
        for iid in dict.fromkeys(named):
            row = by_id.get(iid)
            if row is None:
                result.missing.append(iid)
            elif not str(row.get("label") or "").startswith(PLUGIN_PREFIX):
                result.refused.append(row)
            elif str(row.get("label")).startswith(own_prefix) and known(row):
                result.left.append(Orphan(row, "in this directory's journal, not an orphan: "
                                               "'journal cleanup' ends it"))
            else:
                candidates.append(row)
    for row in candidates:
        if proven_unfed(row):
            result.remove.append(Orphan(row, "stopped: no watchdog runs, no run feeds it"))
        else:
            result.left.append(Orphan(row, why_left(row)))
    return result
