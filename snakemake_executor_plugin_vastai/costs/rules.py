"""What each rule cost: every instance's whole bill shared out over the jobs it served.

There is one per-rule figure, and it adds up to the bill. An instance that served
one job is that job's rule's, whole (boot, idle, bytes, storage included). A warm
instance that served several jobs splits its bill in proportion to the time each
job held it (``warm.job_window``); its boot and idle time are shared the same way,
since the jobs are why it was rented and kept. An instance no job held (a job
failed while it booted) is its renting job's rule's.

The boot / leased / idle split of ``warm.py`` says *why* a run cost what it did;
this module says *who* it was for. ``journal cost`` shows these figures and no
other per-rule dollars, so two tables can never disagree about a rule.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from . import warm

UNKNOWN = "?"  # an instance whose renting job the journal does not name


def by_rule(instances: list[dict], jobs: list[dict],
            now: float | None = None) -> list[dict[str, Any]]:
    """Per rule: jobs, instances used (one shared by two rules counts for both), the time
    its jobs held instances, and its share of the instance seconds and dollars.
    ``instances`` carry ``billed_seconds`` and ``billed_dollars``
    (``Journal.instances_with_cost``); the dollars summed over rules are theirs summed."""
    rule_of = {job["id"]: job["rule"] for job in jobs}
    rules: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for inst, shares in _allocation(instances, jobs, now):
        for rule in {rule_of.get(job_id, UNKNOWN) for job_id, _, _ in shares}:
            rules[rule]["instances"] += 1  # a shared instance counts for each of its rules
        for job_id, held, share in shares:
            rule = rules[rule_of.get(job_id, UNKNOWN)]
            rule["held_seconds"] += held
            rule["instance_seconds"] += share * float(inst["billed_seconds"] or 0.0)
            rule["dollars"] += share * float(inst["billed_dollars"] or 0.0)
    for job in jobs:  # every job attempt counts, also one that never held an instance
        rules[job["rule"]]["jobs"] += 1
    return [{"rule": rule, "jobs": int(v["jobs"]), "instances": int(v["instances"]),
             "held_seconds": v["held_seconds"], "instance_seconds": v["instance_seconds"],
             "dollars": v["dollars"]}
            for rule, v in sorted(rules.items())]


def by_job(instances: list[dict], jobs: list[dict],
           now: float | None = None) -> dict[str, dict[str, float]]:
    """Per job id: its share of its instance's seconds and dollars, as :func:`by_rule`
    shares them (a rule's figure is its jobs' sum). ``jobs`` must be all the jobs the
    instances served, not a filtered few, or the shares come out wrong."""
    out: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for inst, shares in _allocation(instances, jobs, now):
        for job_id, _held, share in shares:
            out[job_id]["instance_seconds"] += share * float(inst["billed_seconds"] or 0.0)
            out[job_id]["dollars"] += share * float(inst["billed_dollars"] or 0.0)
    return {job_id: dict(v) for job_id, v in out.items()}


def _allocation(instances: list[dict], jobs: list[dict], now: float | None
                ) -> list[tuple[dict, list[tuple[str, float, float]]]]:
    """Each instance with (job id, seconds held, share of the bill) of its jobs."""
    now = time.time() if now is None else now
    served: dict[str, list[dict]] = defaultdict(list)
    for job in jobs:
        if job.get("label") and job.get("leased_at") is not None:
            served[job["label"]].append(job)
    return [(inst, _shares(inst, served.get(inst["label"], []), now)) for inst in instances]


def _shares(inst: dict, jobs: list[dict], now: float) -> list[tuple[str, float, float]]:
    """(job id, seconds held, share of the bill) for each job on ``inst``; shares sum to 1.
    No job held it: its renting job's (the id the instance row names)."""
    start = float(warm.first(inst.get("started_at"), inst.get("created_at"), now))
    end = start + float(inst.get("billed_seconds") or 0.0)
    held = []
    for job in jobs:
        begin, stop = warm.job_window(job, end)
        begin = stop if begin is None else begin
        held.append(max(0.0, min(stop, end) - max(begin, start)))
    total = sum(held)
    if not jobs:
        return [(inst.get("job_id") or "", 0.0, 1.0)]
    if total <= 0:
        return [(job["id"], 0.0, 1.0 / len(jobs)) for job in jobs]
    return [(job["id"], h, h / total) for job, h in zip(jobs, held, strict=True)]
