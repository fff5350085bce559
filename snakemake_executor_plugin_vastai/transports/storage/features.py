"""What a workflow may not do in storage mode, found before anything is rented.

In storage mode a job runs on an instance that shares nothing with this machine but the
bucket and the source archive: every file it writes that should outlive it must go to the
bucket. Snakemake itself runs a job with a ``local()`` input or output on this machine
(the plugin declares no shared file system, which also overrides ``--shared-fs-usage``),
and the local executor runs everything here. One thing works there that cannot work on an
instance: a ``local()`` log or benchmark of a job that otherwise runs remotely. Snakemake
does not look at logs and benchmarks when it decides where a job runs, so the file would
be written on the instance and lost with it (a benchmark is then reported missing after
the instance was paid for). It is refused here, naming the rule and the file.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def _members(jobs: Iterable[Any]) -> list[Any]:
    members = []
    for job in jobs:
        members.extend(job.jobs if job.is_group() else [job])
    return members


def _is_local_file(f: Any) -> bool:
    return bool(getattr(f, "is_flagged", None) and f.is_flagged("local"))


def storage_mode_problems(jobs: Iterable[Any]) -> list[str]:
    """One sentence per ``local()`` log or benchmark of a job that runs remotely."""
    problems: list[str] = []
    for job in _members(jobs):
        if job.is_local:
            continue
        rule = job.rule.name
        kept = [("log", f) for f in job.log]
        kept += [("benchmark", job.benchmark)] if job.benchmark else []
        for kind, f in kept:
            if _is_local_file(f):
                problems.append(
                    f"rule {rule}: {kind} {f!s} is marked local(), but in storage mode the "
                    "job runs on a Vast.ai instance and only files in storage come back; "
                    f"drop local() or list {rule} in localrules:")
    return sorted(set(problems))


def check_storage_features(workflow: Any) -> str | None:
    """The problems of the jobs Snakemake plans to run, as one message (None if none)."""
    dag = getattr(workflow, "dag", None)
    if dag is None:
        return None
    try:
        jobs = list(dag.needrun_jobs())
    except Exception:  # the DAG interface is Snakemake-internal; never block on it
        return None
    problems = storage_mode_problems(jobs)
    if not problems:
        return None
    return "storage mode (--default-storage-provider) cannot run this workflow:\n  " + \
        "\n  ".join(problems)
