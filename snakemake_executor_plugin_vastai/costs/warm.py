"""Where a shared instance's bill went: boot, the jobs' leased time, idle.

With warm instances (``pool.py``) one instance serves several jobs, so its bill
splits three ways (Vast.ai bills from its ``start_date`` to the accepted
destroy, see ``ledger.billed``):

- **leased**: from each job's ``leased_at`` (booted, or leased from the pool)
  to its ``released_at`` (given back) or, for the last job, its end (each
  job's share of the whole bill is in proportion to it, ``rules.py``);
- **boot**: from the billing start to the first job's lease (the image pull
  and container start a warm instance saves the later jobs);
- **idle**: the rest (waiting in the pool, and the teardown's latency).

Pure functions over journal rows; ``journal cost --detail`` prints the result.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from . import ledger


def split(instance: dict, jobs: list[dict], now: float) -> dict[str, float]:
    """Billed seconds of one instance as boot / leased / idle (they sum to the bill)."""
    total = float(instance.get("billed_seconds") or 0.0)
    if total <= 0:
        return {"boot": 0.0, "leased": 0.0, "idle": 0.0}
    start = float(first(instance.get("started_at"), instance.get("created_at"), now))
    end = start + total
    leased = 0.0
    firsts = []
    for job in jobs:
        begin, stop = job_window(job, end)
        if begin is None:
            continue
        firsts.append(begin)
        leased += max(0.0, min(stop, end) - max(begin, start))
    leased = min(leased, total)
    boot = max(0.0, min(min(firsts, default=end), end) - start)
    boot = min(boot, total - leased)
    return {"boot": boot, "leased": leased, "idle": max(0.0, total - leased - boot)}


def job_window(job: dict, end: float) -> tuple[float | None, float]:
    """When the job held its instance: leased_at to released_at (or its end)."""
    begin = job.get("leased_at")
    if begin is None:
        return None, end
    stop = first(job.get("released_at"), job.get("ended_at"), end)
    return float(begin), float(stop)


def report(instances: list[dict], jobs: list[dict], now: float | None = None) -> dict[str, Any]:
    """Per run: boots, jobs served, boots avoided and the three shares (seconds, dollars);
    per rule: the jobs' leased time. ``instances`` carry ``billed_seconds``
    (``Journal.instances_with_cost``)."""
    now = time.time() if now is None else now
    by_label: dict[str, list[dict]] = defaultdict(list)
    for job in jobs:
        if job.get("label"):
            by_label[job["label"]].append(job)
    runs: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    rules: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for inst in instances:
        served = [j for j in by_label.get(inst["label"], []) if j.get("leased_at") is not None]
        shares = split(inst, served, now)
        price = float(inst.get("dph_total") or 0.0) / 3600.0
        run = runs[inst.get("run_id") or "?"]
        run["boots"] += 1 if inst.get("created_at") is not None else 0
        run["jobs"] += len(served)
        run["boots_avoided"] += max(0, len(served) - 1)
        for share, seconds in shares.items():
            run[f"{share}_seconds"] += seconds
            run[f"{share}_dollars"] += seconds * price
        end = float(first(inst.get("started_at"), inst.get("created_at"), now)) + float(
            inst.get("billed_seconds") or 0.0)
        for job in served:
            begin, stop = job_window(job, end)
            seconds = max(0.0, min(stop, end) - float(begin or stop))
            rules[job["rule"]]["seconds"] += seconds
            rules[job["rule"]]["dollars"] += seconds * price
            rules[job["rule"]]["jobs"] += 1
    return {"runs": [{"run": k, **v} for k, v in runs.items()],
            "rules": [{"rule": k, **v} for k, v in rules.items()]}


def first(*values: Any) -> Any:
    """The first value that is not None (an epoch of 0.0 is a time, not a missing one)."""
    return next((v for v in values if v is not None), None)


def worth_keeping(idle_dph: float, fresh_dph: float | None, boot_s: float,
                  work_s: float | None) -> tuple[bool, str]:
    """Lease an idle instance at ``idle_dph`` $/h, or let it go and rent a free offer at
    ``fresh_dph``? Keeping bills ``idle_dph * work``; replacing bills ``fresh_dph *
    (boot + work)`` (Vast.ai bills a boot). So keep while the idle instance's premium,
    ``(idle_dph - fresh_dph) * work``, is at most the fresh boot's bill, ``fresh_dph *
    boot``. Ties keep (a boot also costs wall time); an unknown amount of work keeps
    (the boot saved is certain, the premium a guess). Returns (keep, why)."""
    if fresh_dph is None:
        return True, f"kept at ${idle_dph:.3f}/h: no fitting offer is free on the market"
    if idle_dph <= fresh_dph:
        return True, (f"kept at ${idle_dph:.3f}/h: the cheapest free offer costs "
                      f"${fresh_dph:.3f}/h")
    if work_s is None:
        return True, (f"kept at ${idle_dph:.3f}/h although an offer costs ${fresh_dph:.3f}/h: "
                      "no job time measured yet")
    premium = ledger.dollars_at(idle_dph - fresh_dph, work_s)
    boot = ledger.dollars_at(fresh_dph, boot_s)
    figures = (f"premium ${premium:.4f} over {work_s:.0f} s of expected work against a "
               f"{boot_s:.0f} s boot at ${fresh_dph:.3f}/h, ${boot:.4f}")
    if premium <= boot:
        return True, f"kept at ${idle_dph:.3f}/h: {figures}"
    return False, f"replaced, ${idle_dph:.3f}/h against a free ${fresh_dph:.3f}/h: {figures}"
