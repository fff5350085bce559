"""How big and how often: the full benchmark and the --quick one (under 3 minutes)."""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024


@dataclass(frozen=True)
class Plan:
    concurrency: tuple[int, ...]  # figure 1/2: concurrent trivial jobs
    repeats: dict[int, int]  # runs per concurrency level
    whatif_repeats: int  # figure 1: the 1-job run with the status-check workaround (0: skip)
    api_job_seconds: float  # figure 3: one job of this length, default status interval
    many_jobs: int  # figures 3 and 5: concurrent jobs
    big_bytes: int  # figure 4
    small_files: int
    transfer_repeats: int
    startup_repeats: int  # figure 6
    resume_job_seconds: float  # figure 7

    @property
    def largest(self) -> int:
        return max(self.concurrency)


FULL = Plan(concurrency=(1, 10, 50, 200), repeats={1: 5, 10: 3, 50: 2, 200: 1},
            whatif_repeats=3, api_job_seconds=60.0, many_jobs=200, big_bytes=1024 * MiB,
            small_files=5000, transfer_repeats=3, startup_repeats=5, resume_job_seconds=8.0)

QUICK = Plan(concurrency=(1, 10), repeats={1: 1, 10: 1}, whatif_repeats=0,
             api_job_seconds=10.0, many_jobs=20, big_bytes=128 * MiB, small_files=1000,
             transfer_repeats=1, startup_repeats=3, resume_job_seconds=3.0)
