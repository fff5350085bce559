"""Draw a :class:`timeline_model.Timeline` as one self-contained HTML page (inline SVG and CSS).

No script, no font, no stylesheet from the network: the page is a file to mail,
attach to an issue or open from a CI artefact, and it must look the same
offline. Every text that came from the journal (rule names, errors, labels,
regions) is escaped before it lands in the markup.

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
from html import escape

from . import tables
from .timeline_model import IDLE, Row, Span, Timeline

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


# -- the page --------------------------------------------------------------------------------
def render_html(timeline: Timeline) -> str:
    """The whole page: header with totals, legend, and the chart."""
    run = timeline.run
    title = f"Vast.ai run {run['id']}"
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="when">started {escape(tables.when(run["started_at"]))}, '
        f'<span id="outcome">{escape(timeline.totals["outcome"])}</span></p>',
        totals_html(timeline.totals),
        legend_html(timeline),
        render_svg(timeline),
        "</body></html>",
    ])


def totals_html(totals: dict) -> str:
    """Run totals; ``data-value`` holds the exact figure (tests compare it with journal cost)."""
    failed = totals["failed"]
    items = [
        ("jobs", "jobs", f"{totals['jobs']}" + (f" ({failed} failed)" if failed else "")),
        ("instances", "instances", str(totals["instances"])),
        ("instance_hours", "instance-hours", f"{totals['instance_hours']:.3f}"),
        ("dollars", "cost", tables.money(totals["dollars"])),
        ("boots_avoided", "boots avoided", str(totals["boots_avoided"])),
    ]
    cells = "".join(
        f'<div><dt>{escape(label)}</dt><dd data-total="{key}" data-value="{totals[key]!r}"'
        f'{f" data-failed={failed!r} class=failed" if key == "jobs" and failed else ""}>'
        f'{escape(text)}</dd></div>'
        for key, label, text in items
    )
    return f'<dl id="totals">{cells}</dl>'


def legend_html(timeline: Timeline) -> str:
    """Each state's colour and where the minutes went: its job-seconds summed over all bars."""
    seconds = state_seconds(timeline)
    states = list(STATE_COLOURS) + sorted(set(seconds) - set(STATE_COLOURS))
    items = "".join(
        f'<span class="key{"" if state in seconds else " unseen"}" data-state="{escape(state)}"'
        f' data-seconds="{seconds.get(state, 0.0)!r}"><i style="background:{colour(state)}">'
        f'</i>{escape(state)}'
        f'{f" <b>{escape(_seconds(seconds[state]))}</b>" if state in seconds else ""}</span>'
        for state in states
    )
    failed = '<span class="key"><i class="failed-key"></i>failed job</span>'
    return f'<p id="legend">{items}{failed}</p>'


def state_seconds(timeline: Timeline) -> dict[str, float]:
    """Seconds spent in each state, summed over every bar (jobs in parallel add up)."""
    totals: dict[str, float] = {}
    for row in timeline.rows:
        for span in row.spans:
            totals[span.state] = totals.get(span.state, 0.0) + span.seconds
    return totals


def colour(state: str) -> str:
    return STATE_COLOURS.get(state, FALLBACK_COLOUR)


def render_svg(timeline: Timeline) -> str:
    """The chart: axis on top, one row per instance (or instance-less job)."""
    rows = timeline.rows
    row_h = 22 if len(rows) <= 60 else 14
    scale = time_scale(timeline)
    height = AXIS + row_h * max(1, len(rows)) + 8
    width = GUTTER + CHART + 16
    parts = [  # as wide as the window, however wide the drawing (CSS: no sideways scroll)
        f'<svg xmlns="http://www.w3.org/2000/svg" id="timeline" width="100%" '
        f'viewBox="0 0 {width} {height}" preserveAspectRatio="xMinYMin meet" '
        f'font-size="{11 if row_h > 14 else 9}">',
        header_row(row_h),
        axis_svg(scale, timeline.start, height),
    ]
    for i, row in enumerate(rows):
        parts.append(row_svg(row, i, AXIS + i * row_h, row_h, scale, timeline.start))
    parts.append("</svg>")
    return "\n".join(parts)


COLUMNS = [("INSTANCE", 6), ("JOBS", 86), ("GPU", 300), ("REGION", 434), ("$/H", 590),
           ("COST", 652)]  # x of each label column; the last two are right-aligned
JOBS_CHARS = 32  # what fits between JOBS and GPU at the chart's font size


def header_row(row_h: int) -> str:
    texts = []
    for name, x in COLUMNS:
        anchor = ' text-anchor="end"' if name in ("$/H", "COST") else ""
        texts.append(f'<text class="colhead" x="{x}" y="{AXIS - 8}"{anchor}>{name}</text>')
    return "".join(texts)


def axis_svg(scale: TimeScale, origin: float, height: int) -> str:
    """Tick lines labelled with time since the first bar; breaks hatched and labelled."""
    parts = ['<g class="axis">']
    for seg in scale.segments:
        if seg.is_break:
            x, w = GUTTER + seg.x0, seg.x1 - seg.x0
            parts.append(
                f'<g class="break"><rect x="{x:.1f}" y="{AXIS - 14}" width="{w:.1f}" '
                f'height="{height - AXIS + 14}" fill="url(#hatch)"><title>'
                f'{escape(tables.duration(seg.t1 - seg.t0))} with no job active, drawn '
                f'{w:.0f} px wide</title></rect><text x="{x + w / 2:.1f}" y="{AXIS - 20}" '
                f'text-anchor="middle">{escape(tables.duration(seg.t1 - seg.t0))}</text></g>'
            )
            continue
        for t in ticks(seg, origin):
            x = GUTTER + scale.x(t)
            parts.append(
                f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{AXIS - 4}" y2="{height}"/>'
                f'<text x="{x:.1f}" y="{AXIS - 8}" text-anchor="middle">'
                f'{escape(tables.duration(t - origin))}</text>'
            )
    parts.append("</g>")
    defs = ('<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
            'patternTransform="rotate(45)"><rect width="6" height="6" fill="#fafafa"/>'
            '<line x1="0" y1="0" x2="0" y2="6" stroke="#bbb" stroke-width="2"/></pattern>'
            '</defs>')
    return defs + "".join(parts)


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


def row_svg(row: Row, index: int, y: int, row_h: int, scale: TimeScale, origin: float) -> str:
    """A row: its label columns, the billed band, one rect per span, failure markers."""
    classes = "row" + (" failed" if row.failed else "") + (" odd" if index % 2 else "")
    instance = "" if row.instance_id is None else str(row.instance_id)
    parts = [
        f'<g class="{classes}" data-key="{escape(row.key)}" data-instance="{instance}">',
        f'<rect class="stripe" x="0" y="{y}" width="{GUTTER + CHART + 16}" height="{row_h}"/>',
        labels_svg(row, y + row_h - (6 if row_h > 14 else 3)),
    ]
    if row.billed is not None:
        x0, x1 = GUTTER + scale.x(row.billed[0]), GUTTER + scale.x(row.billed[1])
        parts.append(
            f'<rect class="billed" x="{x0:.1f}" y="{y + row_h - 3}" '
            f'width="{max(1.0, x1 - x0):.1f}" height="2"><title>billed '
            f'{escape(tables.duration(row.billed_seconds))}, '
            f'{escape(tables.money(row.billed_dollars))}</title></rect>'
        )
    names = {job.id: job for job in row.jobs}
    for span in row.spans:
        parts.append(span_svg(span, names, y, row_h, scale, origin))
    for job in row.jobs:
        if job.failed:
            ends = [s.end for s in row.spans if s.job_id == job.id]
            x = GUTTER + scale.x(max(ends)) if ends else GUTTER
            parts.append(
                f'<text class="fail-mark" data-job="{escape(job.id)}" x="{x + 2:.1f}" '
                f'y="{y + row_h - (6 if row_h > 14 else 3)}">&#x2716;<title>'
                f'{escape(job.name)} failed: {escape(job.last_error or "no error recorded")}'
                f'</title></text>'
            )
    parts.append("</g>")
    return "".join(parts)


def labels_svg(row: Row, baseline: int) -> str:
    """The left columns: instance id, jobs served, GPU, region, $/h and the row's cost."""
    instance = "no instance" if row.instance_id is None else str(row.instance_id)
    failed = [job for job in row.jobs if job.failed]
    values = [
        instance,
        _clip(jobs_label(row.jobs), JOBS_CHARS),
        _clip(row.gpu or "-", 20),
        _clip(row.region or "-", 20),
        "-" if row.dph is None else f"${row.dph:.3f}",
        _row_cost(row),
    ]
    details = "\n".join(
        f"{job.name} (job {job.id}, attempt {job.attempt}): {job.state}"
        + ("" if job.rented_here or row.instance_id is None else ", on an instance rented "
           "for another job")
        + (f"\n  {job.last_error}" if job.failed and job.last_error else "")
        for job in row.jobs
    )
    texts = []
    for (name, x), value in zip(COLUMNS, values, strict=True):
        anchor = ' text-anchor="end"' if name in ("$/H", "COST") else ""
        cls = ' class="failed"' if name == "JOBS" and failed else ""
        texts.append(f'<text x="{x}" y="{baseline}"{anchor}{cls}>{escape(value)}</text>')
    title = f"instance {instance} ({row.key})\n{details}"
    if row.rented_by_run:
        title += (f"\nrented by run {row.rented_by_run}: its cost (in parentheses) counts "
                  "in that run's totals")
    return f'<g class="labels"><title>{escape(title)}</title>{"".join(texts)}</g>'


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


def span_svg(span: Span, jobs: dict, y: int, row_h: int, scale: TimeScale,
             origin: float) -> str:
    """One bar; its <title> tells the job, state, times and the transitions inside."""
    x0, x1 = GUTTER + scale.x(span.start), GUTTER + scale.x(span.end)
    job = jobs.get(span.job_id)
    who = f"{job.name} (job {job.id})" if job else "instance"
    still = ", still in it when the journal ends" if span.open else ""
    when = (f"+{tables.duration(span.start - origin)} to +{tables.duration(span.end - origin)}"
            f" ({_seconds(span.seconds)}{still})")
    title = "\n".join([f"{who}: {span.state}", when, *span.notes])
    failed = " failed" if job is not None and job.failed else ""
    pad = 3 if row_h > 14 else 2
    return (
        f'<rect class="bar{failed}" data-state="{escape(span.state)}" '
        f'data-job="{escape(span.job_id or "")}" data-start="{span.start!r}" '
        f'data-end="{span.end!r}" x="{x0:.1f}" y="{y + pad}" width="{max(1.0, x1 - x0):.1f}" '
        f'height="{row_h - 2 * pad - 2}" fill="{colour(span.state)}">'
        f"<title>{escape(title)}</title></rect>"
    )


def _row_cost(row: Row) -> str:
    if row.instance_id is None:
        return "-"
    money = tables.money(row.billed_dollars)
    return f"({money})" if row.rented_by_run else money


def _seconds(seconds: float) -> str:
    return f"{seconds:.1f}s" if seconds < 60 else tables.duration(seconds)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


CSS = """
body { font-family: system-ui, sans-serif; margin: 16px; color: #222; background: #fff; }
svg#timeline { display: block; width: 100%; height: auto; }
#totals, #legend { flex-wrap: wrap; }
h1 { font-size: 18px; margin: 0 0 4px; }
.when { margin: 0 0 10px; color: #555; font-size: 13px; }
#totals { display: flex; gap: 28px; margin: 0 0 10px; }
#totals div { display: flex; flex-direction: column-reverse; }
#totals dt { font-size: 12px; color: #555; }
#totals dd { margin: 0; font-size: 20px; font-weight: 600; }
#totals dd.failed { color: #c62828; }
#legend { font-size: 12px; margin: 0 0 8px; }
.key { margin-right: 12px; white-space: nowrap; }
.key.unseen { opacity: 0.45; }
.key b { font-weight: 600; color: #444; }
.key i { display: inline-block; width: 12px; height: 12px; margin-right: 4px;
         vertical-align: -2px; border: 1px solid #888; }
.key i.failed-key { border: 2px solid #c62828; background: #fff; }
svg text { fill: #222; font-family: ui-monospace, monospace; }
svg .colhead { font-weight: bold; fill: #555; }
svg .axis line { stroke: #ddd; stroke-width: 1; }
svg .axis text { fill: #666; }
svg .stripe { fill: #fff; }
svg .row.odd .stripe { fill: #f7f7f7; }
svg .row.failed .stripe { fill: #fdecea; }
svg .billed { fill: #455a64; }
svg .bar { stroke: #fff; stroke-width: 0.5; }
svg .bar[data-state="idle"] { stroke: #90a4ae; stroke-dasharray: 2 2; }
svg .bar.failed { stroke: #c62828; stroke-width: 1.5; }
svg text.failed, svg .fail-mark { fill: #c62828; font-weight: bold; }
svg .break text { fill: #666; font-style: italic; }
"""
