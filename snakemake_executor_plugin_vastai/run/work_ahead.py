"""Whether this run may still submit a job that an idle warm instance could serve.

An idle instance bills by the second. Waiting ``--vastai-idle-timeout`` for a next
job is worth it only while one may come; once every job Snakemake still has to
run is either running on an instance already or is a local job (``localrules``,
the input-only ``all``), waiting is pure cost: in a run of many parallel jobs the
instances freed by the last wave would each idle until the run ends. Snakemake
does not tell an executor what is left, but its DAG lists the jobs that still
need to run (``DAG.needrun_jobs``, unfinished ones only).

The answer errs towards "yes": a running checkpoint may add jobs when it ends,
a job this run has just finished may not be marked finished in the DAG yet, a
failed one may be retried, and anything unexpected (a DAG that changes while
it is read, a Snakemake without this method) keeps the idle timeout in charge.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any


def members(job: Any) -> list[Any]:
    """The single jobs of a Snakemake job (a group job's members)."""
    return list(job.jobs) if job.is_group() else [job]


def may_come(needrun: Iterable[Any], running: Iterable[Any]) -> bool:
    """True unless every unfinished job is running on an instance or runs locally.

    ``needrun``: the DAG's unfinished jobs that need to run; ``running``: the
    Snakemake jobs this run's job drivers are working on now.
    """
    busy: set[Any] = set()
    for job in running:
        singles = members(job)
        if any(getattr(j, "is_checkpoint", False) for j in singles):
            return True  # its end may add jobs to the DAG
        busy.update(singles)
    return any(job not in busy and not job.is_local for job in needrun)


def jobs_ahead(needrun: Iterable[Any], running: Iterable[Any]) -> int:
    """How many unfinished remote jobs no job driver of this run is working on yet."""
    busy = {single for job in running for single in members(job)}
    return sum(1 for job in needrun if job not in busy and not job.is_local)


def work_ahead(needrun: Callable[[], Iterable[Any]] | None,
               running: Callable[[], Iterable[Any]]) -> Callable[[], bool]:
    """A check for the pool: ``may_come`` over fresh reads, "yes" when it cannot tell."""

    def check() -> bool:
        if needrun is None:
            return True
        try:
            return may_come(list(needrun()), list(running()))
        except Exception:  # read from another thread: a set may change size mid-read
            return True

    return check
