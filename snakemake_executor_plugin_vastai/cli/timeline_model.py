"""What a run's timeline is made of, as data: rows of spans, and the run's totals.

:class:`Timeline` holds :class:`Row` s (an instance and the jobs it served, or a
job that never had one), each with its :class:`Span` s (a job, or the idle
instance, in one state from one time to another) and :class:`JobView` s.
``timeline.py`` builds them from the journal and ``timeline_svg.py`` draws them;
both import these types from here, so the drawing does not import the reading
(which writes the page with the drawing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

IDLE = "idle"


@dataclass
class Span:
    """One bar: a job (or an idle instance) in one state from ``start`` to ``end``."""

    state: str
    start: float
    end: float
    job_id: str | None
    notes: list[str] = field(default_factory=list)  # the transitions inside, for hover text
    open: bool = False  # the journal ends while the job is still in this state

    @property
    def seconds(self) -> float:
        return max(0.0, self.end - self.start)


@dataclass
class JobView:
    """A job as the chart names it, with how it ended."""

    id: str
    rule: str
    snakemake_jobid: int | None
    state: str
    attempt: int | None
    last_error: str | None
    rented_here: bool  # this job's own rent created the row's instance

    @property
    def failed(self) -> bool:
        return self.state == "failed"

    @property
    def name(self) -> str:
        number = "" if self.snakemake_jobid is None else f" #{self.snakemake_jobid}"
        return f"{self.rule}{number}"


@dataclass
class Row:
    """One line of the chart: an instance and the jobs it served, or a job without one."""

    key: str  # the instance label, or the job id of a job that never had an instance
    instance_id: int | None
    gpu: str | None
    region: str | None
    dph: float | None
    billed_seconds: float
    billed_dollars: float
    billed: tuple[float, float] | None  # the instance's billing clock, start to end
    jobs: list[JobView]
    spans: list[Span]
    rented_by_run: str | None = None  # an earlier run's instance: its cost counts there

    @property
    def start(self) -> float:
        starts = [s.start for s in self.spans] + ([self.billed[0]] if self.billed else [])
        return min(starts, default=0.0)

    @property
    def end(self) -> float:
        ends = [s.end for s in self.spans] + ([self.billed[1]] if self.billed else [])
        return max(ends, default=0.0)

    @property
    def failed(self) -> bool:
        return any(job.failed for job in self.jobs)


@dataclass
class Timeline:
    """A run's rows (sorted by start), its time window and its totals."""

    run: dict
    rows: list[Row]
    start: float
    end: float
    totals: dict[str, Any]
