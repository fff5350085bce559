"""Where a run's time and money went, as data: one row per instance, one span per state.

``snakemake-vastai journal timeline [RUN] [-o FILE.html]``
reads the journal and writes one self-contained HTML page (``timeline_svg.py``
draws it). This module holds the reading: it turns the append-only
``transitions`` rows into state spans, groups them by the instance that served
the job, and totals the run exactly as ``journal cost`` does (the same
``instances_with_cost`` rows, summed by the same function, ``journal/cost.py``),
so the picture and the table can never disagree about dollars. The rows and
spans are the types of ``timeline_model.py``; the command is
``journal/timeline.py``.

How the journal maps onto rows:

- An instance row (``instances``, by label) is one row of the chart. The jobs it
  served are the run's jobs whose ``label`` names it (a job re-attached to an
  earlier run's instance, or a warm instance leased to a later job, shows on
  the row of the instance that did the work).
- A job that never got an instance (it failed or was cancelled while
  searching) gets a row of its own, without GPU or price.
- A job's span in a state runs from the transition into it to the next
  transition that changes its state; ``retry`` rows (same state) stay inside
  the span and are listed in its hover text. Any state name found in the
  journal is drawn (the renderer has colours for the known ones and a fallback).
- Billed time of an instance that no job span covers (a warm instance waiting
  for its next job, or the seconds between a job's end and the destroy being
  accepted) is drawn as ``idle`` when it is long enough to see.
- "Boots avoided" counts the run's jobs served by an instance rented for
  another job: each of those skipped a search, a rent and a boot.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..costs.totals import total
from ..journal.store import TERMINAL_STATES, Journal
from ..run.liveness import is_live
from ..run.verdict import FAILED, final_states, run_verdict
from .tables import gpu_text
from .timeline_model import IDLE, JobView, Row, Span, Timeline
from .timeline_svg import render_html

MIN_IDLE = 1.0  # seconds: shorter uncovered billed time is API latency, not idleness


def build(journal: Journal, run_id: str | None = None, *, now: float | None = None) -> Timeline:
    """The timeline of the run ``run_id`` (default: the latest run). The ``journal
    timeline`` command resolves a prefix the user typed first."""
    run_id = run_id or journal.latest_run_id()
    if run_id is None:
        raise ValueError(f"journal {journal.path} holds no run yet")
    run = next(r for r in journal.runs() if r["id"] == run_id)
    jobs = journal.jobs(run_id=run_id)
    history = {job["id"]: journal.transitions_of(job["id"]) for job in jobs}
    instances = journal.instances_with_cost()
    view_end = _view_end(run, history, instances, time.time() if now is None else now)
    spans = {job_id: job_spans(rows, view_end) for job_id, rows in history.items()}
    rows = _rows(run, jobs, instances, spans, view_end)
    rows.sort(key=lambda row: (row.start, row.key))
    start = min((row.start for row in rows), default=run["started_at"])
    end = max([view_end, *(row.end for row in rows)])
    return Timeline(run, rows, start, end, totals(run, jobs, instances))


def totals(run: dict, jobs: list[dict], instances: list[dict]) -> dict[str, Any]:
    """The header's figures; instance-hours and dollars are ``journal cost``'s for the run,
    the outcome and job counts ``journal runs``' (a retried job counts once, as its last
    attempt)."""
    own = [row for row in instances if row["run_id"] == run["id"]]
    created = {row["label"]: row for row in instances if row["instance_id"] is not None}
    cost = total(own)
    states = final_states(jobs)
    return {
        "outcome": run_verdict(run, jobs),
        "jobs": len(states),
        "attempts": len(jobs),
        "failed": sum(state == FAILED for state in states),
        "instances": cost["instances"],
        "instance_seconds": cost["instance_seconds"],
        "instance_hours": cost["instance_hours"],
        "dollars": cost["dollars"],
        "boots_avoided": sum(
            1 for job in jobs
            if job.get("label") in created and created[job["label"]]["job_id"] != job["id"]
        ),
    }


def job_spans(transitions: list[dict], view_end: float) -> list[Span]:
    """Maximal runs of one state, from the transition into it to the one out of it.

    The terminal state is not a span (nothing happens in it); a job the journal
    leaves in a non-terminal state is drawn up to ``view_end``, marked open.
    """
    spans: list[Span] = []
    for row in transitions:
        note = _note(row)
        state = row["to_state"]
        if spans and spans[-1].state == state:
            spans[-1].notes.append(note)  # a retry: same state, same bar
            continue
        if spans:
            spans[-1].end = row["at"]
        if state in TERMINAL_STATES:
            if spans:
                spans[-1].notes.append(note)
            break
        spans.append(Span(state, row["at"], row["at"], row["job_id"], [note]))
    else:
        if spans:
            spans[-1].end = max(view_end, spans[-1].start)
            spans[-1].open = True
    return spans


def _note(row: dict) -> str:
    """One transition for the hover text: time, trigger, move and its detail."""
    moment = time.strftime("%H:%M:%S", time.localtime(row["at"]))
    text = f"{moment} {row['trigger']}: {row['from_state'] or '-'} -> {row['to_state']}"
    detail = row.get("detail")
    if detail:
        text += f" ({_short_detail(detail)})"
    return text


def _short_detail(detail: str, limit: int = 200) -> str:
    try:
        value = json.loads(detail)
    except ValueError:
        value = detail
    if isinstance(value, dict):
        value = ", ".join(f"{k}={v}" for k, v in value.items())
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _view_end(run: dict, history: dict[str, list[dict]], instances: list[dict],
              now: float) -> float:
    """Where open spans stop: now for a live run, else the last time the journal knows."""
    seen = [run["started_at"], run.get("ended_at") or 0.0]
    if is_live(run):
        seen.append(now)
    seen += [row["at"] for rows in history.values() for row in rows]
    for row in instances:
        if row["run_id"] == run["id"]:
            seen += [t for t in _instance_times(row) if t is not None]
    return max(seen)


def _instance_times(row: dict) -> list[float | None]:
    return [row.get("started_at"), row["created_at"], row.get("destroy_accepted_at"),
            row["destroyed_at"]]


def _rows(run: dict, jobs: list[dict], instances: list[dict], spans: dict[str, list[Span]],
          view_end: float) -> list[Row]:
    """One row per instance the run rented or used, one per job that had none."""
    run_id = run["id"]
    by_label = {row["label"]: row for row in instances}
    served: dict[str, list[dict]] = {}
    alone: list[dict] = []
    for job in jobs:
        label = job.get("label")
        if label in by_label and by_label[label]["instance_id"] is not None:
            served.setdefault(label, []).append(job)
        else:
            alone.append(job)
    labels = [row["label"] for row in instances
              if row["label"] in served or (row["run_id"] == run_id
                                            and row["instance_id"] is not None)]
    rows = [_instance_row(by_label[label], served.get(label, []), spans, view_end,
                          since=None if by_label[label]["run_id"] == run_id
                          else run["started_at"])
            for label in labels]
    rows += [_lone_row(job, spans[job["id"]]) for job in alone]
    return rows


def _instance_row(instance: dict, jobs: list[dict], spans: dict[str, list[Span]],
                  view_end: float, *, since: float | None) -> Row:
    """``since``: an earlier run rented the instance; this run's view starts at its start
    (the earlier run's time on it belongs to that run's timeline)."""
    bars = [span for job in jobs for span in spans[job["id"]]]
    billed = _billed(instance, view_end)
    if billed is not None and since is not None:
        billed = (max(billed[0], since), max(billed[1], since))
    if billed is not None:
        bars += idle_spans(billed, bars)
    bars.sort(key=lambda span: (span.start, span.end))
    return Row(
        key=instance["label"],
        instance_id=instance["instance_id"],
        gpu=gpu_text(instance),
        region=instance.get("geolocation"),
        dph=instance["dph_total"],
        billed_seconds=instance["billed_seconds"],
        billed_dollars=instance["billed_dollars"],
        billed=billed,
        jobs=[_job_view(job, instance) for job in jobs],
        spans=bars,
        rented_by_run=None if since is None else instance["run_id"],
    )


def _lone_row(job: dict, spans: list[Span]) -> Row:
    return Row(job["id"], None, None, None, None, 0.0, 0.0, None, [_job_view(job, None)],
               list(spans))


def _job_view(job: dict, instance: dict | None) -> JobView:
    return JobView(
        id=job["id"],
        rule=job["rule"],
        snakemake_jobid=job["snakemake_jobid"],
        state=job["state"],
        attempt=job["attempt"],
        last_error=job["last_error"],
        rented_here=instance is not None and instance["job_id"] == job["id"],
    )


def _billed(instance: dict, view_end: float) -> tuple[float, float] | None:
    """The instance's billing clock (as journal cost prices it), or None if never created."""
    start = instance.get("started_at") or instance["created_at"]
    if start is None:
        return None
    end = instance.get("destroy_accepted_at") or instance["destroyed_at"] or view_end
    return start, max(start, end)


def idle_spans(billed: tuple[float, float], bars: list[Span]) -> list[Span]:
    """Billed stretches no job span covers, at least ``MIN_IDLE`` seconds long."""
    cursor, end = billed
    gaps: list[Span] = []
    for span in sorted(bars, key=lambda s: s.start):
        if span.start - cursor >= MIN_IDLE:
            gaps.append(Span(IDLE, cursor, min(span.start, end), None,
                             ["billed, no job on it"]))
        cursor = max(cursor, span.end)
        if cursor >= end:
            break
    if end - cursor >= MIN_IDLE:
        gaps.append(Span(IDLE, cursor, end, None, ["billed, no job on it"]))
    return gaps


# -- the command ------------------------------------------------------------------------------
def default_path(journal: Journal, run_id: str) -> Path:
    """Beside the journal: ``.snakemake/vastai/timeline-<run>.html``."""
    return journal.path.parent / f"timeline-{run_id}.html"


def write_html(timeline: Timeline, path: Path) -> Path:
    """Write the page (via a temporary name, so a reader never sees half of it)."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(render_html(timeline), encoding="utf-8")
    partial.replace(path)
    return path


def summary(timeline: Timeline, path: Path) -> str:
    t = timeline.totals
    failed = f" ({t['failed']} failed)" if t["failed"] else ""
    return (f"wrote {path}: {_n(t['jobs'], 'job')}{failed} on {_n(t['instances'], 'instance')}, "
            f"{t['instance_hours']:.3f} instance-hours, ${t['dollars']:.4f}, "
            f"{_n(t['boots_avoided'], 'boot')} avoided")


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def as_json(timeline: Timeline, path: Path) -> dict[str, Any]:
    """What the page shows, for scripts: totals and every row with its spans."""
    return {
        "path": str(path),
        "run": timeline.run["id"],
        "totals": timeline.totals,
        "rows": [
            {
                "key": row.key, "instance_id": row.instance_id, "gpu": row.gpu,
                "region": row.region, "dph_total": row.dph,
                "billed_seconds": row.billed_seconds, "billed_dollars": row.billed_dollars,
                "jobs": [job.id for job in row.jobs],
                "spans": [{"state": s.state, "job_id": s.job_id, "start": s.start,
                           "end": s.end, "open": s.open} for s in row.spans],
            }
            for row in timeline.rows
        ],
    }
