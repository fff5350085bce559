"""Two first runs in a fresh copy of a workflow directory must agree on one new identity.

``startup.open_journal`` notices a journal copied along with its directory and sets it
aside so the copy gets a fresh label prefix. Without its lock file, two runs starting
together in the copy would both set a journal aside: the second one would move away the
journal the first had just made, and the two runs would hold different prefixes for one
directory, each later taking the other's instances for strays.
"""

from __future__ import annotations

import multiprocessing
import shutil
from pathlib import Path

from snakemake_executor_plugin_vastai.journal.store import RELATIVE_PATH
from snakemake_executor_plugin_vastai.run import startup
from snakemake_executor_plugin_vastai.run.logs import PluginLogger

RUNS = 6


class _Quiet:
    """A stand-in for Snakemake's logger: the warnings are not what is tested here."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def _open(workdir: str, barrier, results) -> None:
    barrier.wait()
    journal = startup.open_journal(Path(workdir), PluginLogger(_Quiet()))
    results.put(journal.workflow_id)
    journal.close()


def test_runs_starting_together_in_a_copy_take_one_fresh_identity(tmp_path):
    original = tmp_path / "original"
    original.mkdir()
    first = startup.open_journal(original, PluginLogger(_Quiet()))
    original_id = first.workflow_id
    first.close()
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)

    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(RUNS), ctx.Queue()
    procs = [ctx.Process(target=_open, args=(str(copy), barrier, results)) for _ in range(RUNS)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=60)
    failed = [proc.exitcode for proc in procs if proc.exitcode != 0]
    assert not failed, f"{len(failed)} of {RUNS} runs could not open the copied journal"
    ids = [results.get(timeout=5) for _ in procs]

    assert len(set(ids)) == 1, f"runs in one copy took different identities: {ids}"
    assert ids[0] != original_id
    aside = [p.name for p in (copy / RELATIVE_PATH.parent).iterdir() if "copied" in p.name]
    assert len(aside) == 1, f"the copied journal was set aside {len(aside)} times: {aside}"
