"""Checkpoints in storage mode: their outputs must be where input functions look for them.

After a checkpoint, input functions that depend on it are evaluated again, and they read
the checkpoint's output as local files (``glob_wildcards`` over a ``directory()``,
``open()`` on a file). Under Snakemake's local executor those files are on disk: the job
wrote them there. In storage mode a job writes them on an instance and only the bucket
keeps them, and input functions are evaluated in two places:

- here, when Snakemake updates the DAG after the checkpoint: :func:`bring_home` retrieves
  the checkpoint's outputs into Snakemake's local storage copy first;
- on the instance, when the remote Snakemake of a later job builds its own DAG: the
  container fetches the checkpoint outputs created so far into the remote job's local
  storage copy before it runs the job (:func:`fetch_command`). Only jobs whose rule has
  an input or params function can consult a checkpoint there (:func:`may_consult`), so
  only their containers fetch: a large checkpoint output is not copied into every job.

Without this a glob finds nothing, silently: the DAG loses its data-dependent jobs, or a
later job runs with an empty input list.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# Runs on the instance with the Snakemake and storage plugin installed there: parses the
# same storage options the job gets (Snakemake's own parser) and retrieves each query
# into the remote job's local storage prefix, as Snakemake itself would.
FETCH_SCRIPT = """\
import asyncio, logging, os, sys
from pathlib import Path
from snakemake.cli import get_argument_parser
from snakemake_interface_storage_plugins.registry import StoragePluginRegistry
prefix, count, *rest = sys.argv[1:]
queries, argv = rest[:int(count)], rest[int(count):]
args = get_argument_parser().parse_args(argv)
plugin = StoragePluginRegistry().get_plugin(args.default_storage_provider)
settings = plugin.get_settings(args).get_settings(None)
provider = plugin.storage_provider(logger=logging.getLogger("vastai"), is_default=True,
    local_prefix=Path(os.path.expandvars(prefix)), settings=settings)
for query in queries:
    asyncio.run(provider.object(query).managed_retrieve())
    print("vastai: retrieved checkpoint output", query, file=sys.stderr)
"""


def checkpoint_outputs(job: Any) -> list[Any]:
    """The storage-backed outputs of the checkpoint jobs in ``job`` (itself or a group)."""
    members = getattr(job, "jobs", None) or [job]
    return [f for member in members if getattr(member, "is_checkpoint", False)
            for f in member.output if getattr(f, "is_storage", False)]


async def bring_home(job: Any) -> str | None:
    """Retrieve a finished checkpoint's outputs into Snakemake's local storage copy; the
    failure as a message (None if fine). A checkpoint whose outputs cannot be read here
    must not pass, or the jobs depending on its contents would silently be left out.
    Snakemake removes the local copies later, as it does the local executor's."""
    try:
        for iofile in checkpoint_outputs(job):
            await iofile.retrieve_from_storage()
    except Exception as exc:  # every provider raises its own types
        return (f"the checkpoint's outputs are in storage but could not be retrieved to "
                f"this machine, where Snakemake reads them to update the DAG: "
                f"{type(exc).__name__}: {exc}\n")
    return None


def may_consult(job: Any) -> bool:
    """Can evaluating this job's rule (or a grouped job's) call ``checkpoints.x.get()``?
    Only input and params functions are evaluated while the remote Snakemake builds the
    job's DAG; plain file names cannot consult a checkpoint."""
    if job is None:  # an earlier run's job, re-attached: its container already runs
        return False
    members = getattr(job, "jobs", None) or [job]
    for member in members:
        rule = member.rule
        if any(callable(item) for item in (*rule.input, *rule.params)):
            return True
    return False


def created_queries(workflow: Any) -> list[str]:
    """Storage queries of every checkpoint output created so far in this run.

    ``created_output`` grows on Snakemake's main thread; ``set.copy`` takes its
    snapshot in one step, so a job thread can call this safely.
    """
    created = getattr(getattr(workflow, "checkpoints", None), "created_output", None)
    snapshot = created.copy() if created else set()
    return sorted({f.storage_object.query for f in snapshot if getattr(f, "is_storage", False)})


def fetch_command(queries: Iterable[str], local_prefix: str, storage_args: str) -> str:
    """The container's shell line that fetches ``queries`` ("" when there are none)."""
    queries = list(queries)
    if not queries:
        return ""
    words = [shlex.quote(w) for w in (local_prefix, str(len(queries)), *queries)]
    return f"python -c {shlex.quote(FETCH_SCRIPT)} {' '.join(words)} {storage_args}".rstrip()


def remote_local_prefix(workflow: Any, provider: str) -> str:
    """Where the remote job's Snakemake keeps local copies of the default provider's
    objects: its local storage prefix (``--remote-job-local-storage-prefix``) plus the
    provider's name, as Snakemake lays it out."""
    settings = workflow.storage_settings
    base = getattr(settings, "remote_job_local_storage_prefix", None) or \
        settings.local_storage_prefix
    return str(Path(str(base)) / provider)
