"""A whole run (``run/runtime.Run``) in process, without Snakemake: the keep-warm and watchdog
fault tests (issue 30) drive the real run, journal, pool, recovery, driver and SSH transport
against the simulator, with stand-in jobs in place of Snakemake's.

As a script (``python -m tests.harness.inprocess_run``) it runs jobs in a process of its own,
so that a test can kill it at a crash point (``SNAKEMAKE_VASTAI_CRASH_AT``) or freeze it
(``SIGSTOP``) as a real run would be; it prints one JSON line when the run has ended.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from snakemake_executor_plugin_vastai.lifecycle.models import JobModel
from snakemake_executor_plugin_vastai.run.logs import PluginLogger
from snakemake_executor_plugin_vastai.run.runtime import Run, SnakemakeHooks
from snakemake_executor_plugin_vastai.settings import RunSettings
from snakemake_executor_plugin_vastai.vastai.bids import BidSettings
from snakemake_executor_plugin_vastai.vastai.offers import OfferSettings


@dataclass
class StandInJob:
    """What the run reads of a Snakemake job (one rule, no group)."""

    command: str
    jobid: int = 1
    attempt: int = 1
    input: list[str] = field(default_factory=list)
    output: list[str] = field(default_factory=lambda: ["out.txt"])
    log: list[str] = field(default_factory=list)
    benchmark: str | None = None
    resources: dict = field(default_factory=dict)
    threads: int = 1
    rule: Any = field(default_factory=lambda: SimpleNamespace(name="step", workflow=None))

    def is_group(self) -> bool:
        return False


def make_run(url: str, api_key: str, workdir: Path, *, keep_warm: float = 0.0,
             orphan_timeout: float = 20.0, grace: float = 300.0, journal: Any = None,
             logger: str = "vastai-inprocess") -> Run:
    """A run of the workflow in ``workdir`` with warm instances on (SSH mode)."""
    settings = RunSettings(api_url=url, image="img", disk=10, boot_timeout=60,
                           keep_instances=False, forward_credentials=False,
                           status_interval=0.2, offline_grace=5,
                           offer_settings=OfferSettings(reliability=0), idle_timeout=60,
                           orphan_timeout=orphan_timeout, keep_warm=keep_warm,
                           bids=BidSettings(grace=grace))
    hooks = SnakemakeHooks(job_command=lambda job: job.command, declared_envvars=dict,
                           write_source_archive=None, snakemake_version="")
    return Run(workdir=workdir, settings=settings, api_key=api_key, hooks=hooks,
               log=PluginLogger(logging.getLogger(logger)), journal=journal)


def run_jobs(run: Run, jobs: list[StandInJob], timeout: float = 120.0) -> list[JobModel]:
    """Submit every job at once and wait until each has ended."""
    models = [run.submit(job) for job in jobs]
    for model in models:
        assert run.drivers[model.job_id].done.wait(timeout), f"job stuck in {model.state}"
    return models


def end(run: Run) -> str | None:
    """The run's normal end (Snakemake's shutdown): hand over or tear down, then close."""
    run.finish()
    return run.close("finished")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api-url", required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--keep-warm", type=float, default=0.0)
    parser.add_argument("--orphan-timeout", type=float, default=20.0)
    parser.add_argument("--grace", type=float, default=300.0)
    parser.add_argument("--command", action="append", default=[],
                        help="a job's shell command (one job per --command)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    run = make_run(args.api_url, os.environ["VAST_API_KEY"], args.workdir,
                   keep_warm=args.keep_warm, orphan_timeout=args.orphan_timeout,
                   grace=args.grace)
    run.recovery.reconcile({})
    models = run_jobs(run, [StandInJob(c, jobid=n + 1, output=[f"out{n + 1}.txt"])
                            for n, c in enumerate(args.command)], timeout=300.0)
    pending = end(run)
    print(json.dumps({"run_id": run.run_id, "states": [m.state.value for m in models],
                      "failures": [m.failure for m in models], "pending": pending,
                      "adopted": run.recovery.adopted, "kept": run.pool.kept,
                      "leases": run.pool.leases}), flush=True)
    return 0 if all(m.state.value == "succeeded" for m in models) and not pending else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
