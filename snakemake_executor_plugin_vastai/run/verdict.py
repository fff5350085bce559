"""How a run ended, in the words ``journal runs``, the run summary and the timeline share.

The journal's ``runs.outcome`` says how the plugin's run ended ("finished" when
Snakemake shut the executor down in order), not whether the work succeeded: a
``--keep-going`` run in which three of six jobs failed still "finished". A person
reading "finished" takes it for success, so every place that shows a run's end
shows :func:`verdict` instead, which names the failures first. The recorded
outcome is kept as it is (``--json`` shows both).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .liveness import is_live

FAILED = "failed"


def recorded_status(run: Mapping[str, Any]) -> str:
    """The recorded outcome; else "running" while the run's process lives on this host
    (its lease, ``liveness.py``), "unfinished" when it crashed or was killed."""
    if run["ended_at"] is not None:
        return str(run["outcome"] or "ended")
    return "running" if is_live(dict(run)) else "unfinished"


def run_verdict(run: Mapping[str, Any], jobs: Iterable[Mapping[str, Any]]) -> str:
    """What every view of a run shows as its end: :func:`verdict` of its status."""
    return verdict(recorded_status(run), final_states(jobs))


def final_states(jobs: Iterable[Mapping[str, Any]]) -> list[str]:
    """The state of each Snakemake job's last attempt (a retried job counts once).

    Attempts of one job share its ``snakemake_jobid`` within a run; a row without one
    (journaled before Snakemake numbered it) counts as a job of its own.
    """
    last: dict[Any, Mapping[str, Any]] = {}
    for job in jobs:
        key = (job.get("run_id"), job.get("snakemake_jobid")) \
            if job.get("snakemake_jobid") is not None else job.get("id")
        held = last.get(key)
        if held is None or _attempt(job) >= _attempt(held):
            last[key] = job
    return [str(job["state"]) for job in last.values()]


def _attempt(job: Mapping[str, Any]) -> tuple[int, float]:
    return int(job.get("attempt") or 0), float(job.get("created_at") or 0.0)


def verdict(outcome: str, states: Iterable[str]) -> str:
    """``"failed (3 of 6 jobs)"`` when jobs failed, else ``outcome`` unchanged.

    What follows the outcome's first word (``"; teardown pending"``) is kept, so
    nothing the run recorded is hidden:

    >>> verdict("finished", ["succeeded", "failed", "succeeded"])
    'failed (1 of 3 jobs)'
    >>> verdict("finished; teardown pending", ["failed"])
    'failed (1 of 1 job); teardown pending'
    >>> verdict("interrupted", ["failed", "cancelled"])
    'interrupted, failed (1 of 2 jobs)'
    >>> verdict("finished", ["succeeded"])
    'finished'
    """
    states = list(states)
    failed = sum(state == FAILED for state in states)
    if not failed:
        return outcome
    count = f"{FAILED} ({failed} of {len(states)} job{'' if len(states) == 1 else 's'})"
    head, sep, rest = outcome.partition(";")
    if head.strip() in ("finished", "ended"):
        return count + sep + rest
    return f"{head}, {count}{sep}{rest}"
