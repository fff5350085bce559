"""Runs of the real ``snakemake --executor vastai`` CLI against a fresh simulator.

A :class:`Scenario` names a run (how many concurrent jobs, how long each job
sleeps, the status interval, extra arguments); :class:`Bench` runs each
scenario once per repeat and keeps the results, so figures that can share a
run (orchestration, billing, API requests and CPU/memory all read the same
200-job run) do not pay for it twice.

Every run gets its own simulator process (fast profile: boots take
``BOOT_DELAY`` seconds, no rate limits, unless the scenario sets them), its own
workflow directory and an offer catalogue with enough matching offers for all
its jobs.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import timeline
from .catalog import write_offers
from .procwatch import Watched, read_proc, watch
from .simproc import SimProcess
from .workload import write_workflow

BOOT_DELAY = 0.3  # the simulator's fast profile
FAST_STATUS_INTERVAL = 0.2  # what the project's end-to-end tests use
RUN_TIMEOUT = 1800.0
SAMPLE_EVERY = 0.2


@dataclass(frozen=True)
class Scenario:
    jobs: int
    seconds: float = 0.0  # each job's own sleep
    status_interval: float | None = FAST_STATUS_INTERVAL  # None: the plugin's default
    extra: tuple[str, ...] = ()
    rate_limit: float = 0.0  # the simulator's minimum interval per endpoint (0: none)
    boot: float = BOOT_DELAY  # the simulator's boot delay
    documented: bool = False  # the description's per-endpoint intervals (4.5 s create, ...)

    @property
    def slug(self) -> str:
        interval = "default" if self.status_interval is None else f"{self.status_interval:g}"
        extra = "-".join(a.strip("-") for a in self.extra)
        service = (f"-rl{self.rate_limit:g}" if self.rate_limit else "") + (
            f"-b{self.boot:g}" if self.boot != BOOT_DELAY else "") + (
            "-doc" if self.documented else "")
        return (f"n{self.jobs}-s{self.seconds:g}-i{interval}{service}"
                + (f"-{extra}" if extra else ""))


@dataclass
class Outcome:
    """One run: the Snakemake process as watched, the simulator's view, the jobs' times."""

    scenario: Scenario
    watched: Watched
    truth: dict[str, Any]
    requests: list[dict[str, Any]]
    jobs: list[timeline.JobTimes]
    workdir: Path
    sim_threads_peak: int = 0
    machine_busy: float | None = None  # share of all cores busy during the run (0..1)
    sim_cpu: float | None = None  # CPU seconds of the simulator process (API + SSH servers)

    @property
    def ok(self) -> bool:
        return self.watched.returncode == 0 and all(j.state == "succeeded" for j in self.jobs)

    @property
    def succeeded(self) -> list[timeline.JobTimes]:
        return [j for j in self.jobs if j.state == "succeeded"]

    @property
    def usable(self) -> bool:
        """Enough to measure: at least one job made it (failures are reported beside)."""
        return bool(self.succeeded)

    def failures(self) -> dict[str, int]:
        """Why jobs failed: the first 70 characters of each error, counted."""
        return dict(Counter((j.error or j.state)[:70] for j in self.jobs
                            if j.state != "succeeded"))

    def problem(self) -> str:
        """Why this run does not count, for a 'not available' figure."""
        last = self.watched.tail(15).replace("\n", " | ")
        bad = len(self.jobs) - len(self.succeeded)
        return (f"snakemake exited {self.watched.returncode}, {bad} of {len(self.jobs)} jobs "
                f"not succeeded ({self.failures()}); output ends: {last[-400:]}")


def clean_env(api_key: str) -> dict[str, str]:
    """This environment without Vast.ai settings, plus the simulator's key."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("VAST_API_KEY", "SNAKEMAKE_VASTAI_API_KEY", "VAST_URL")}
    env["VAST_API_KEY"] = api_key
    return env


def snakemake_argv(url: str, scenario: Scenario) -> list[str]:
    """The CLI under test. ``--keep-going``: one failed job must not stop Snakemake from
    submitting the rest, or a run of 200 would quietly measure fewer jobs.
    ``--vastai-no-reuse``: these figures measure one instance per job (a rent, a boot, a
    destroy each), as the published plugin works; warm instances have their own benchmark
    (reuse.py)."""
    argv = [sys.executable, "-m", "snakemake", "--executor", "vastai", "--keep-going",
            "--jobs", str(scenario.jobs), "--vastai-api-url", url, "--vastai-no-reuse"]
    if scenario.status_interval is not None:
        argv += ["--vastai-status-interval", f"{scenario.status_interval:g}"]
    return argv + list(scenario.extra)


def offers_for(base: Path, jobs: int) -> Path:
    return write_offers(base / f"offers-{jobs}.json", max(jobs + 20, 40))


def run_once(base: Path, scenario: Scenario, repeat: int) -> Outcome:
    """One fresh simulator, one fresh workflow, one ``snakemake`` run, all witnesses read."""
    root = base / f"{scenario.slug}-r{repeat}"
    shutil.rmtree(root, ignore_errors=True)
    workdir = write_workflow(root / "wf", scenario.jobs, scenario.seconds)
    with SimProcess(root / "sim", boot_delay=scenario.boot, rate_limit=scenario.rate_limit,
                    offers=offers_for(base, scenario.jobs),
                    documented=scenario.documented) as sim:
        peak = [0]

        def on_line(_proc: Any, _t: float, _line: str) -> None:
            peak[0] = max(peak[0], sim.thread_count())

        before = cpu_times()
        watched = watch(snakemake_argv(sim.url, scenario), cwd=workdir,
                        env=clean_env(sim.api_key), timeout=RUN_TIMEOUT,
                        sample_every=SAMPLE_EVERY, on_line=on_line)
        busy = busy_share(before, cpu_times())
        sim_proc = read_proc(sim.pid)
        truth = sim.truth()
        jobs = timeline.gather(workdir, truth, watched.finished_at())
        requests = sim.requests()
    return Outcome(scenario, watched, truth, requests, jobs, workdir, peak[0], busy,
                   sim_proc.cpu if sim_proc else None)


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all cores from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values) - idle, sum(values)


def busy_share(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    """How loaded the whole machine was between two ``cpu_times`` readings."""
    total = after[1] - before[1]
    return round((after[0] - before[0]) / total, 3) if total > 0 else None


@dataclass
class Bench:
    """Shared state of one benchmark run: where to work, quick or full, results so far."""

    base: Path
    quick: bool
    transfer_rate: float | None = None  # bytes/s measured by the transfer figure
    runs: dict[tuple[Scenario, int], Outcome] = field(default_factory=dict)
    log: Any = print

    def outcome(self, scenario: Scenario, repeat: int = 0) -> Outcome:
        key = (scenario, repeat)
        if key not in self.runs:
            self.log(f"  running {scenario.slug} (repeat {repeat + 1})")
            self.runs[key] = run_once(self.base, scenario, repeat)
            o = self.runs[key]
            self.log(f"    -> exit {o.watched.returncode}, {o.watched.wall:.1f} s wall")
        return self.runs[key]

    def outcomes(self, scenario: Scenario, repeats: int) -> list[Outcome]:
        return [self.outcome(scenario, r) for r in range(repeats)]

    @property
    def rate(self) -> float:
        return self.transfer_rate or timeline.DEFAULT_RATE
