"""Figure 7's measurement: kill Snakemake mid-job, let the job finish, restart, time it.

The sequence, against one simulator:

1. start ``snakemake --executor vastai`` on a one-job workflow whose job sleeps;
2. once the job runs on its instance (the wrapper's pid file exists in the
   sandbox), SIGKILL Snakemake (nothing gets to clean up: lock and incomplete
   marker stay, the instance keeps running and billing);
3. wait until the remote job has finished (the wrapper's rc file appears);
4. ``snakemake --unlock`` (not timed), then restart with ``--rerun-incomplete``
   and time it: from starting the process to its ``Finished jobid`` line.

Resume counts as present when the restarted run rented no new instance and
its journal shows the job re-attached (a ``resume`` transition).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import timeline
from .procwatch import Watched, watch
from .scenarios import Scenario, clean_env, offers_for, snakemake_argv
from .simproc import SimProcess
from .workload import write_workflow

WAIT = 120.0


@dataclass
class ResumeResult:
    """What happened; ``reason`` says why resume does not count (empty: it worked)."""

    restart: Watched | None = None
    plain_start: Watched | None = None  # `snakemake --dry-run`: Snakemake's own start-up
    killed_at: float = 0.0
    remote_done_at: float = 0.0
    instances_before: int = 0
    instances_after: int = 0
    triggers: list[str] = field(default_factory=list)
    job: timeline.JobTimes | None = None
    run_started: float | None = None  # the restarted run's journal start (executor created)
    reason: str = ""

    def seconds(self) -> float | None:
        """Restart until Snakemake marks the re-attached job done."""
        if self.restart is None or self.job is None or self.job.finished is None:
            return None
        return self.job.finished - self.restart.started


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def _control(sim: SimProcess, name: str) -> Path | None:
    """``vastai-job/.vastai/<name>`` of the only instance, if it exists yet."""
    instances = sim.truth()["instances"]
    if not instances:
        return None
    path = Path(instances[0]["sandbox"]) / timeline.JOB_DIR / ".vastai" / name
    return path if path.exists() else None


def measure(base: Path, job_seconds: float, log: Any) -> ResumeResult:
    """Run the kill-and-restart sequence (see the module docstring)."""
    result = ResumeResult()
    workdir = write_workflow(base / "wf", 1, job_seconds)
    result.plain_start = watch([sys.executable, "-m", "snakemake", "--dry-run"], cwd=workdir,
                               timeout=300)
    with SimProcess(base / "sim", offers=offers_for(base, 1)) as sim:
        env = clean_env(sim.api_key)
        argv = snakemake_argv(sim.url, Scenario(jobs=1))
        with open(base / "first-run.log", "w") as out:
            first = subprocess.Popen(argv, cwd=workdir, env=env, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait(lambda: _control(sim, "pid") is not None, WAIT, "the job to start remotely")
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait()
        result.killed_at = time.time()
        log(f"  killed snakemake; waiting {job_seconds:g} s job to finish remotely")
        _wait(lambda: _control(sim, "rc") is not None, WAIT + job_seconds, "the remote job")
        result.remote_done_at = time.time()
        result.instances_before = sim.truth()["created_count"]
        subprocess.run([sys.executable, "-m", "snakemake", "--unlock"], cwd=workdir, env=env,
                       capture_output=True, timeout=300, check=False)
        result.restart = watch([*argv, "--rerun-incomplete"], cwd=workdir, env=env,
                               timeout=600)
        truth = sim.truth()
        result.instances_after = truth["created_count"]
        _read_journal(result, workdir, truth)
    _judge(result)
    return result


def _read_journal(result: ResumeResult, workdir: Path, truth: dict[str, Any]) -> None:
    assert result.restart is not None
    jobs = timeline.gather(workdir, truth, result.restart.finished_at())
    if jobs:
        result.job = jobs[0]
        rows = timeline.journal_jobs(workdir)
        result.triggers = [t["trigger"] for t in rows[0]["transitions"]] if rows else []
    runs = timeline.runs(workdir)
    result.run_started = runs[-1]["started_at"] if runs else None


def _judge(result: ResumeResult) -> None:
    restart = result.restart
    if restart is None or restart.returncode != 0:
        tail = restart.tail(8).replace("\n", " | ") if restart else ""
        result.reason = f"the restarted run failed: {tail[-500:]}"
    elif result.instances_after > result.instances_before:
        result.reason = ("resume did not re-attach: the restarted run rented a new instance "
                         f"({result.instances_before} -> {result.instances_after})")
    elif "resume" not in result.triggers:
        result.reason = f"no resume transition in the journal (triggers: {result.triggers})"
    elif result.seconds() is None:
        result.reason = "no 'Finished jobid' line for the re-attached job"
