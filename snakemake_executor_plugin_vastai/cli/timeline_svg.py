"""Lay a :class:`timeline_model.Timeline` out as one self-contained HTML page (inline SVG).

No script, no font, no stylesheet from the network: the page is a file to mail,
attach to an issue or open from a CI artefact, and it must look the same
offline. This module works out what to draw (the time scale, positions, colours
and texts) as plain data; ``timeline_page.py`` writes the markup from Jinja2
templates with autoescape, so every text from the journal (rule names, errors,
labels, regions) is escaped on its way in. The page scales the drawing to the
window (no sideways scrolling).

Long idle stretches: the time axis is linear wherever some job is doing
something (searching, renting, booting, moving data, running, destroying),
and every stretch in which no job does anything that is longer than
``max(MIN_BREAK, BREAK_SHARE x the active time)`` is cut down to a fixed-width
break, drawn as a hatched band labelled with its real length. Compared with a
log scale, durations inside the active parts stay comparable by eye (a bar
twice as long took twice as long), and the breaks say plainly what was left
out; instances that bill during a break show it as an idle bar crossing it.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

from . import tables
from .timeline_model import IDLE, Row, Span, Timeline
from .timeline_page import render_page

STATE_COLOURS = {
    "searching": "#b0bec5",
    "waiting": "#cfd8dc",
    "renting": "#ffb74d",
    "booting": "#ffd54f",
    "uploading": "#4fc3f7",
    "running": "#66bb6a",
    "downloading": "#7986cb",
    "destroying": "#a1887f",
    "idle": "#eceff1",
    "leased": "#4db6ac",
    "preempted": "#ba68c8",
}
FALLBACK_COLOUR = "#f06292"  # a state this version does not know, drawn all the same
FAILED_COLOUR = "#c62828"

GUTTER = 676  # px of row labels left of the chart
CHART = 760  # px of time axis (the page scales the whole drawing to the window)
AXIS = 34  # px above the first row
MIN_BREAK = 60.0  # seconds: a shorter quiet stretch is drawn to scale
BREAK_SHARE = 0.05  # ... and so is one shorter than this share of the active time
BREAK_PX = 28  # px a break takes on the axis
TICK_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600,
              43200, 86400]
MIN_TICK_PX = 70


@dataclass
class Segment:
    """A stretch of the axis: ``[t0, t1)`` drawn from ``x0`` to ``x1``; a break or to scale."""

    t0: float
    t1: float
    x0: float
    x1: float
    is_break: bool


class TimeScale:
    """Seconds to pixels, linear within each segment; breaks take a fixed width."""

    def __init__(self, segments: list[Segment]) -> None:
        self.segments = segments
        self._starts = [s.t0 for s in segments]

    def x(self, t: float) -> float:
        i = max(0, bisect.bisect_right(self._starts, t) - 1)
        seg = self.segments[i]
        if seg.t1 <= seg.t0:
            return seg.x0
        share = min(1.0, max(0.0, (t - seg.t0) / (seg.t1 - seg.t0)))
        return seg.x0 + share * (seg.x1 - seg.x0)

    @property
    def breaks(self) -> list[Segment]:
        return [s for s in self.segments if s.is_break]


def time_scale(timeline: Timeline, width: float = CHART) -> TimeScale:
    """Breaks where no job is active for long; the rest of the width shared out to scale."""
    start, end = timeline.start, max(timeline.end, timeline.start + 1.0)
    active = merged([(s.start, s.end) for row in timeline.rows for s in row.spans
                     if s.state != IDLE])
    busy = sum(b - a for a, b in active)
    threshold = max(MIN_BREAK, BREAK_SHARE * busy)
    quiet = [(a, b) for a, b in gaps(active, start, end) if b - a > threshold]
    pieces: list[tuple[float, float, bool]] = []
    cursor = start
    for a, b in quiet:
        if a > cursor:
            pieces.append((cursor, a, False))
        pieces.append((a, b, True))
        cursor = b
    if cursor < end or not pieces:
        pieces.append((cursor, end, False))
    linear = sum(b - a for a, b, is_break in pieces if not is_break) or 1.0
    per_second = (width - BREAK_PX * len(quiet)) / linear
    segments, x = [], 0.0
    for a, b, is_break in pieces:
        w = BREAK_PX if is_break else (b - a) * per_second
        segments.append(Segment(a, b, x, x + w, is_break))
        x += w
    return TimeScale(segments)


def merged(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The union of intervals, sorted and non-overlapping."""
    out: list[tuple[float, float]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def gaps(union: list[tuple[float, float]], start: float, end: float) -> list[tuple[float, float]]:
    """The parts of ``[start, end]`` that ``union`` (sorted, merged) leaves uncovered."""
    out, cursor = [], start
    for a, b in union:
        if a > cursor:
            out.append((cursor, a))
        cursor = max(cursor, b)
    if end > cursor:
        out.append((cursor, end))
    return out


# -- what the page shows (timeline_page.py turns it into markup) ----------------------------
def render_html(timeline: Timeline) -> str:
    """The whole page: header with totals, legend, and the chart."""
    return render_page(page_view(timeline), svg_view(timeline))


def page_view(timeline: Timeline) -> dict[str, Any]:
    """The header: title, start, the run's verdict, totals and the legend."""
    run = timeline.run
    return {"title": f"Vast.ai run {run['id']}", "started": tables.when(run["started_at"]),
            "outcome": timeline.totals["outcome"], "totals": totals_view(timeline.totals),
            "legend": legend_view(timeline)}


def totals_view(totals: dict) -> list[dict[str, Any]]:
    """Run totals; ``data-value`` holds the exact figure (tests compare it with journal cost)."""
    failed = totals["failed"]
    items = [
        ("jobs", "jobs", f"{totals['jobs']}" + (f" ({failed} failed)" if failed else "")),
        ("instances", "instances", str(totals["instances"])),
        ("instance_hours", "instance-hours", f"{totals['instance_hours']:.3f}"),
        ("dollars", "cost", tables.money(totals["dollars"])),
        ("boots_avoided", "boots avoided", str(totals["boots_avoided"])),
    ]
    return [{"key": key, "label": label, "text": text, "value": repr(totals[key]),
             "failed": failed if key == "jobs" else 0} for key, label, text in items]


def legend_view(timeline: Timeline) -> list[dict[str, Any]]:
    """Each state's colour and where the minutes went: its job-seconds summed over all bars."""
    seconds = state_seconds(timeline)
    states = list(STATE_COLOURS) + sorted(set(seconds) - set(STATE_COLOURS))
    return [{"state": state, "seen": state in seconds, "colour": colour(state),
             "seconds": repr(seconds.get(state, 0.0)),
             "spent": _seconds(seconds[state]) if state in seconds else ""}
            for state in states]


def state_seconds(timeline: Timeline) -> dict[str, float]:
    """Seconds spent in each state, summed over every bar (jobs in parallel add up)."""
    totals: dict[str, float] = {}
    for row in timeline.rows:
        for span in row.spans:
            totals[span.state] = totals.get(span.state, 0.0) + span.seconds
    return totals


def colour(state: str) -> str:
    return STATE_COLOURS.get(state, FALLBACK_COLOUR)


COLUMNS = [("INSTANCE", 6), ("JOBS", 86), ("GPU", 300), ("REGION", 434), ("$/H", 590),
           ("COST", 652)]  # x of each label column; the last two are right-aligned
RIGHT_ALIGNED = ("$/H", "COST")
JOBS_CHARS = 32  # what fits between JOBS and GPU at the chart's font size


def svg_view(timeline: Timeline) -> dict[str, Any]:
    """The chart: axis on top, one row per instance (or instance-less job)."""
    rows = timeline.rows
    row_h = 22 if len(rows) <= 60 else 14
    scale = time_scale(timeline)
    height = AXIS + row_h * max(1, len(rows)) + 8
    return {
        "width": GUTTER + CHART + 16, "height": height, "font_size": 11 if row_h > 14 else 9,
        "head_y": AXIS - 8,
        "columns": [{"name": name, "x": x, "end": name in RIGHT_ALIGNED} for name, x in COLUMNS],
        "breaks": [_break_view(seg, height) for seg in scale.breaks],
        "ticks": [{"x": f"{GUTTER + scale.x(t):.1f}", "y1": AXIS - 4, "y2": height,
                   "label_y": AXIS - 8, "label": tables.duration(t - timeline.start)}
                  for seg in scale.segments if not seg.is_break
                  for t in ticks(seg, timeline.start)],
        "rows": [row_view(row, i, AXIS + i * row_h, row_h, scale, timeline.start)
                 for i, row in enumerate(rows)],
    }


def _break_view(seg: Segment, height: int) -> dict[str, Any]:
    """A quiet stretch cut short: hatched, labelled with its real length."""
    x, w = GUTTER + seg.x0, seg.x1 - seg.x0
    length = tables.duration(seg.t1 - seg.t0)
    return {"x": f"{x:.1f}", "y": AXIS - 14, "w": f"{w:.1f}", "h": height - AXIS + 14,
            "title": f"{length} with no job active, drawn {w:.0f} px wide", "label": length,
            "label_x": f"{x + w / 2:.1f}", "label_y": AXIS - 20}


def ticks(seg: Segment, origin: float) -> list[float]:
    """Round elapsed times inside a to-scale segment, at least ``MIN_TICK_PX`` apart."""
    span = seg.t1 - seg.t0
    px = seg.x1 - seg.x0
    if span <= 0 or px < MIN_TICK_PX / 2:
        return []
    per_second = px / span
    step = next((s for s in TICK_STEPS if s * per_second >= MIN_TICK_PX), TICK_STEPS[-1])
    first = origin + step * -(-(seg.t0 - origin) // step)
    last = seg.t1 - (MIN_TICK_PX / 2) / per_second  # keep labels clear of the next break
    out, t = [], first
    while t <= last:
        out.append(t)
        t += step
    return out


def row_view(row: Row, index: int, y: int, row_h: int, scale: TimeScale,
             origin: float) -> dict[str, Any]:
    """A row: its label columns, the billed band, one bar per span, failure markers."""
    baseline = y + row_h - (6 if row_h > 14 else 3)
    names = {job.id: job for job in row.jobs}
    billed = None
    if row.billed is not None:
        x0, x1 = GUTTER + scale.x(row.billed[0]), GUTTER + scale.x(row.billed[1])
        billed = {"x": f"{x0:.1f}", "y": y + row_h - 3, "w": f"{max(1.0, x1 - x0):.1f}",
                  "title": f"billed {tables.duration(row.billed_seconds)}, "
                           f"{tables.money(row.billed_dollars)}"}
    marks = []
    for job in row.jobs:
        if job.failed:
            ends = [s.end for s in row.spans if s.job_id == job.id]
            x = GUTTER + scale.x(max(ends)) if ends else GUTTER
            marks.append({"job": job.id, "x": f"{x + 2:.1f}",
                          "title": f"{job.name} failed: {job.last_error or 'no error recorded'}"})
    return {
        "classes": "row" + (" failed" if row.failed else "") + (" odd" if index % 2 else ""),
        "key": row.key, "instance": "" if row.instance_id is None else str(row.instance_id),
        "y": y, "h": row_h, "baseline": baseline, "title": labels_title(row),
        "texts": labels_view(row), "billed": billed, "marks": marks,
        "bars": [bar_view(span, names, y, row_h, scale, origin) for span in row.spans],
    }


def labels_view(row: Row) -> list[dict[str, Any]]:
    """The left columns: instance id, jobs served, GPU, region, $/h and the row's cost."""
    failed = any(job.failed for job in row.jobs)
    values = [
        "no instance" if row.instance_id is None else str(row.instance_id),
        _clip(jobs_label(row.jobs), JOBS_CHARS),
        _clip(row.gpu or "-", 20),
        _clip(row.region or "-", 20),
        "-" if row.dph is None else f"${row.dph:.3f}",
        _row_cost(row),
    ]
    return [{"x": x, "text": value, "end": name in RIGHT_ALIGNED,
             "failed": name == "JOBS" and failed}
            for (name, x), value in zip(COLUMNS, values, strict=True)]


def labels_title(row: Row) -> str:
    """The row's hover text: every job on it, how it ended, and its error."""
    instance = "no instance" if row.instance_id is None else str(row.instance_id)
    details = "\n".join(
        f"{job.name} (job {job.id}, attempt {job.attempt}): {job.state}"
        + ("" if job.rented_here or row.instance_id is None else ", on an instance rented "
           "for another job")
        + (f"\n  {job.last_error}" if job.failed and job.last_error else "")
        for job in row.jobs
    )
    title = f"instance {instance} ({row.key})\n{details}"
    if row.rented_by_run:
        title += (f"\nrented by run {row.rented_by_run}: its cost (in parentheses) counts "
                  "in that run's totals")
    return title


def jobs_label(jobs: list) -> str:
    """What ran on the row, readable without the hover text.

    ``boom #3 failed`` for one job; ``3 jobs: ok (2), report`` for several (rules
    in the order they ran), ``2 jobs, 1 failed: ok, boom`` when some failed.
    """
    if not jobs:
        return "no job"
    if len(jobs) == 1:
        return jobs[0].name + (" failed" if jobs[0].failed else "")
    rules: dict[str, int] = {}
    for job in jobs:
        rules[job.rule] = rules.get(job.rule, 0) + 1
    names = ", ".join(rule if n == 1 else f"{rule} ({n})" for rule, n in rules.items())
    failed = sum(job.failed for job in jobs)
    return f"{len(jobs)} jobs" + (f", {failed} failed" if failed else "") + f": {names}"


def bar_view(span: Span, jobs: dict, y: int, row_h: int, scale: TimeScale,
             origin: float) -> dict[str, Any]:
    """One bar; its title tells the job, state, times and the transitions inside."""
    x0, x1 = GUTTER + scale.x(span.start), GUTTER + scale.x(span.end)
    job = jobs.get(span.job_id)
    who = f"{job.name} (job {job.id})" if job else "instance"
    still = ", still in it when the journal ends" if span.open else ""
    when = (f"+{tables.duration(span.start - origin)} to +{tables.duration(span.end - origin)}"
            f" ({_seconds(span.seconds)}{still})")
    pad = 3 if row_h > 14 else 2
    return {"failed": job is not None and job.failed, "state": span.state,
            "job": span.job_id or "", "start": repr(span.start), "end": repr(span.end),
            "x": f"{x0:.1f}", "y": y + pad, "w": f"{max(1.0, x1 - x0):.1f}",
            "h": row_h - 2 * pad - 2, "fill": colour(span.state),
            "title": "\n".join([f"{who}: {span.state}", when, *span.notes])}


def _row_cost(row: Row) -> str:
    if row.instance_id is None:
        return "-"
    money = tables.money(row.billed_dollars)
    return f"({money})" if row.rented_by_run else money


def _seconds(seconds: float) -> str:
    return f"{seconds:.1f}s" if seconds < 60 else tables.duration(seconds)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"
