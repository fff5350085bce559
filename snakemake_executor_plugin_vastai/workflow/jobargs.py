"""The job-specific part of the remote Snakemake command line, quoted for a POSIX shell.

Snakemake's executor interface formats these arguments with Python's ``repr()``, which is
not shell quoting: a wildcard value holding ``$y`` arrives expanded, one with a backslash
arrives doubled, one with both quote kinds arrives mangled. The remote command runs under
``sh``, so here every value goes through :func:`shlex.quote`. The arguments are the ones
``RealExecutor.get_job_args`` emits (snakemake-interface-executor-plugins 9.x); the plugin
never uses a shared file system, so the remote executor's wait-for-files part is empty.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from typing import Any


def option(flag: str, values: Iterable[Any]) -> str:
    """``flag v1 v2 ...`` with each value shell-quoted ('' when there is none)."""
    words = [shlex.quote(str(v)) for v in values]
    return f"{flag} {' '.join(words)}" if words else ""


def job_args(job: Any, *, cores: Any, unneeded_temp_files: Iterable[Any]) -> str:
    """What tells the remote Snakemake which job(s) to run, and how."""
    from snakemake_interface_executor_plugins.utils import encode_target_jobs_cli_args

    parts = [
        option("--target-jobs", encode_target_jobs_cli_args(job.get_target_spec())),
        option("--allowed-rules", job.rules),
        option("--local-groupid", [job.jobid]) if job.is_group() else "",
        option("--cores", [cores]) if cores else "",
        option("--attempt", [job.attempt]),
        "" if job.is_group() else "--force-use-threads",
        option("--unneeded-temp-files", list(unneeded_temp_files)),
    ]
    return " ".join(p for p in parts if p)
