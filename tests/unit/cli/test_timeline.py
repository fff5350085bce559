"""``journal timeline``: the run's page, checked against the journal it was drawn from.

A real run (the snakemake CLI against the simulator; three jobs, one fails)
gives the journal for the structure and totals; a journal of 500 jobs written
through the Journal API on a made-up clock (``tests/harness/timeline_journal.py``)
gives scale, warm reuse, ``leased``/``preempted``/unknown states, a two-hour
quiet stretch and hostile text. Both pages are opened in headless Chromium.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from snakemake_executor_plugin_vastai.cli import timeline_svg
from snakemake_executor_plugin_vastai.cli.journal import main
from snakemake_executor_plugin_vastai.cli.timeline_model import JobView
from snakemake_executor_plugin_vastai.journal.store import TERMINAL_STATES, Journal
from snakemake_executor_plugin_vastai.simulator.server import SimConfig, Simulator
from tests.harness import browser, png, timeline_journal
from tests.harness.e2e import alive, run_snakemake, write_workflow

SVG = "{http://www.w3.org/2000/svg}"
SNAKEFILE = """\
rule all:
    input: "a.txt", "b.txt", "c.txt"

rule ok:
    output: "{x}.txt"
    wildcard_constraints: x="a|b"
    shell: "sleep 1; echo {wildcards.x} > {output}"

rule boom:
    output: "c.txt"
    shell: "sleep 1; echo boom >&2; exit 3"
"""


@dataclass
class Page:
    """A written page, its parsed chart and the journal it came from."""

    path: Path
    html: str
    svg: ET.Element
    journal: Path
    run: str
    json: dict
    truth: dict | None = None  # the simulator's ground truth, for a real run


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    """A real run on the simulator and its timeline, written by the CLI in a subprocess."""
    sim = Simulator(SimConfig())
    sim.start()
    try:
        workdir = write_workflow(tmp_path_factory.mktemp("tl") / "wf", {"Snakefile": SNAKEFILE})
        result = run_snakemake(workdir, sim.url, sim.api_key, "--keep-going")
        assert "3 jobs (1 failed, 2 succeeded)" in result.stderr, result.stderr[-3000:]
        truth = sim.truth()
        assert alive(truth) == []
        out = workdir / "timeline.html"
        cli = subprocess.run(
            [sys.executable, "-m", "snakemake_executor_plugin_vastai", "journal", "timeline",
             "-o", str(out), "--json"], cwd=workdir, capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0, cli.stderr
        data = json.loads(cli.stdout)
        shown = page(out, workdir / ".snakemake/vastai/journal.sqlite", data["run"], data)
        shown.truth = truth
        yield shown
    finally:
        sim.stop()


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> Page:
    root = tmp_path_factory.mktemp("tl500")
    journal = root / "journal.sqlite"
    run = timeline_journal.write(journal, jobs=500)
    out = root / "t.html"
    assert main(["--journal", str(journal), "timeline", run, "-o", str(out)]) == 0
    return page(out, journal, run, {})


def page(path: Path, journal: Path, run: str, data: dict) -> Page:
    html = path.read_text()
    start, end = html.index("<svg"), html.index("</svg>") + len("</svg>")
    return Page(path, html, ET.fromstring(html[start:end]), journal, run, data)


def bars(svg: ET.Element, **attrs: str) -> list[ET.Element]:
    found = [e for e in svg.iter(f"{SVG}rect") if "bar" in e.get("class", "").split()]
    return [e for e in found if all(e.get(f"data-{k}") == v for k, v in attrs.items())]


def expected_spans(journal: Path, run: str) -> dict[str, list[tuple[str, float, float]]]:
    """Each job's state spans, read straight from the transitions table: maximal runs of
    one state, ended by the next transition that changes it; terminal states draw nothing."""
    db = sqlite3.connect(journal)
    jobs = [r[0] for r in db.execute("SELECT id FROM jobs WHERE run_id = ?", [run])]
    spans: dict[str, list[tuple[str, float, float]]] = {}
    for job in jobs:
        rows = db.execute("SELECT to_state, at FROM transitions WHERE job_id = ? ORDER BY id",
                          [job]).fetchall()
        out: list[list] = []
        for state, at in rows:
            if out and out[-1][0] == state:
                continue
            if out:
                out[-1][2] = at
            if state in TERMINAL_STATES:
                break
            out.append([state, at, None])
        spans[job] = [tuple(s) for s in out]
    db.close()
    return spans


def drawn_spans(svg: ET.Element, job: str) -> list[tuple[str, float, float]]:
    return sorted((e.get("data-state"), float(e.get("data-start")), float(e.get("data-end")))
                  for e in bars(svg, job=job))


def totals(svg_page: Page) -> dict[str, float]:
    found = {key: float(value) for key, value in
             re.findall(r'data-total="(\w+)" data-value="([^"]+)"', svg_page.html)}
    failed = re.search(r"data-failed=(\d+)", svg_page.html)
    return {**found, "failed": float(failed.group(1)) if failed else 0.0}


def journal_cost(capsys: pytest.CaptureFixture[str], journal: Path, run: str) -> dict:
    assert main(["--journal", str(journal), "cost", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    return next(r for r in report["runs"] if r["run"] == run)


# -- a real run ----------------------------------------------------------------------------
@pytest.mark.e2e
def test_one_bar_per_state_span_of_every_job_of_a_real_run(real):
    expected = expected_spans(real.journal, real.run)
    assert len(expected) == 3
    for job, spans in expected.items():
        assert [s[0] for s in spans][:1] == ["searching"], spans
        assert "running" in [s[0] for s in spans] and spans[-1][0] == "destroying"
        assert drawn_spans(real.svg, job) == sorted(spans), job
    assert len(bars(real.svg)) == sum(map(len, expected.values())) + len(
        bars(real.svg, state="idle"))
    # the legend says where the minutes went: per state, the sum of its spans
    legend = {k: float(v) for k, v in re.findall(
        r'class="key[^"]*" data-state="(\w+)" data-seconds="([^"]+)"', real.html)}
    for state in ("searching", "booting", "running", "destroying"):
        spent = sum(end - start for spans in expected.values() for s, start, end in spans
                    if s == state)
        assert legend[state] == pytest.approx(spent, rel=1e-9) and spent > 0, state
    assert legend["leased"] == 0.0


@pytest.mark.e2e
def test_totals_of_a_real_run_equal_journal_cost(real, capsys):
    cost = journal_cost(capsys, real.journal, real.run)
    shown = totals(real)
    assert shown["dollars"] == cost["dollars"] > 0
    assert shown["instance_hours"] == cost["instance_hours"]
    assert shown["instances"] == cost["instances"] == 3
    assert shown["jobs"] == 3 and shown["failed"] == 1 and shown["boots_avoided"] == 0
    assert '<span id="outcome">failed (1 of 3 jobs)</span>' in real.html  # not "finished"
    rows = real.json["rows"]
    assert sum(r["billed_dollars"] for r in rows) == pytest.approx(cost["dollars"], rel=1e-12)


@pytest.mark.e2e
def test_each_row_names_its_instance_gpu_region_price_and_cost(real):
    db = sqlite3.connect(real.journal)
    db.row_factory = sqlite3.Row
    instances = {r["instance_id"]: dict(r) for r in db.execute("SELECT * FROM instances")}
    rows = [g for g in real.svg.iter(f"{SVG}g") if "row" in g.get("class", "").split()]
    assert {int(g.get("data-instance")) for g in rows} == {
        i["id"] for i in real.truth["instances"]}
    assert len(rows) == 3
    for g in rows:
        facts = instances[int(g.get("data-instance"))]
        texts = [t.text for t in g.find(f"{SVG}g").iter(f"{SVG}text")]
        assert texts[0] == str(facts["instance_id"])
        assert texts[2] == f"{facts['num_gpus']}x {facts['gpu_name']}"
        assert texts[3] == (facts["geolocation"] or "-")[:20]
        assert texts[4] == f"${facts['dph_total']:.3f}"
        assert texts[5].startswith("$")


@pytest.mark.e2e
def test_the_failed_job_stands_out(real):
    db = sqlite3.connect(real.journal)
    (failed,), = db.execute("SELECT id FROM jobs WHERE state = 'failed'").fetchall()
    failed_rows = [g for g in real.svg.iter(f"{SVG}g") if "failed" in g.get("class", "")]
    assert len(failed_rows) == 1
    assert {e.get("data-job") for e in failed_rows[0].iter(f"{SVG}rect")
            if "failed" in e.get("class", "")} == {failed}
    marks = [t for t in real.svg.iter(f"{SVG}text") if t.get("class") == "fail-mark"]
    assert [m.get("data-job") for m in marks] == [failed]
    assert "exit" in marks[0].find(f"{SVG}title").text.lower()
    ok_bars = [e for e in bars(real.svg) if e.get("data-job") != failed]
    assert ok_bars and not any("failed" in e.get("class") for e in ok_bars)


@pytest.mark.e2e
def test_the_page_needs_no_network_and_no_script(real):
    html = real.html.lower()
    for needle in ("<script", "<link", "src=", "@import", "url(http", "https://"):
        assert needle not in html, needle
    assert html.count("http://") == 1  # the SVG namespace, which is a name, not a fetch


@pytest.mark.e2e
def test_a_real_runs_page_renders_in_headless_chromium(real, tmp_path):
    shot = browser.screenshot(real.path, tmp_path / "real.png", height=500)
    _, _, rows = png.read_rgb(shot)
    counts = png.colour_counts(rows)
    assert len(counts) > 20, "a blank or one-colour screenshot"
    assert counts.get(png.hex_rgb(timeline_svg.STATE_COLOURS["running"]), 0) > 500
    assert counts.get(png.hex_rgb(timeline_svg.FAILED_COLOUR), 0) > 20


# -- 500 jobs --------------------------------------------------------------------------------
def test_500_jobs_one_bar_per_state_span_rows_sorted_by_start(large):
    expected = expected_spans(large.journal, large.run)
    assert len(expected) == 500
    for job, spans in expected.items():
        assert drawn_spans(large.svg, job) == sorted(spans), job
    rows = [g for g in large.svg.iter(f"{SVG}g") if "row" in g.get("class", "").split()]
    starts = [min(float(b.get("data-start")) for b in bars(g)) for g in rows]
    assert starts == sorted(starts)
    db = sqlite3.connect(large.journal)
    (instances,), = db.execute("SELECT count(*) FROM instances").fetchall()
    assert len(rows) == instances


def test_500_jobs_totals_equal_journal_cost_and_count_reuse(large, capsys):
    cost = journal_cost(capsys, large.journal, large.run)
    shown = totals(large)
    assert (shown["dollars"], shown["instance_hours"], shown["instances"]) == (
        cost["dollars"], cost["instance_hours"], cost["instances"])
    db = sqlite3.connect(large.journal)
    (reused,), = db.execute(
        "SELECT count(*) FROM jobs j JOIN instances i ON i.label = j.label "
        "WHERE i.job_id != j.id").fetchall()
    assert shown["boots_avoided"] == reused > 100
    assert shown["failed"] == 20 and shown["jobs"] == 500


def test_500_jobs_warm_gaps_are_idle_and_every_state_is_drawn(large):
    states = {e.get("data-state") for e in bars(large.svg)}
    assert {"leased", "preempted", "idle", "checking"} <= states
    idle = bars(large.svg, state="idle")
    assert len(idle) >= 100 and all(e.get("data-job") == "" for e in idle)
    fills = {e.get("data-state"): e.get("fill") for e in bars(large.svg)}
    assert fills["checking"] == timeline_svg.FALLBACK_COLOUR
    assert fills["leased"] == timeline_svg.STATE_COLOURS["leased"]


def test_500_jobs_the_quiet_two_hours_are_one_labelled_break(large):
    breaks = [g for g in large.svg.iter(f"{SVG}g") if g.get("class") == "break"]
    assert len(breaks) == 1
    label = breaks[0].find(f"{SVG}text").text
    assert label.startswith("1h5") or label.startswith("2h0"), label
    width = float(large.svg.get("viewBox").split()[2])
    xs = [float(e.get("x")) + float(e.get("width")) for e in bars(large.svg)]
    assert max(xs) <= width
    # to scale outside the break: the busy half-hour fills most of the chart
    spread = max(xs) - min(float(e.get("x")) for e in bars(large.svg))
    assert spread > 0.8 * timeline_svg.CHART


def test_500_jobs_hostile_rule_names_and_errors_are_escaped(large):
    for raw in (timeline_journal.EVIL_RULE, timeline_journal.EVIL_ERROR, "<img", "<script"):
        assert raw not in large.html, raw
    assert "train&lt;img src=x onerror=&#34;alert(1)&#34;&gt;&amp;" in large.html
    titles = [t.text or "" for t in large.svg.iter(f"{SVG}title")]
    assert any(timeline_journal.EVIL_ERROR in t for t in titles)  # shown, as text


def test_500_jobs_page_renders_in_headless_chromium(large, tmp_path):
    shot = browser.screenshot(large.path, tmp_path / "large.png", height=900)
    width, height, rows = png.read_rgb(shot)
    counts = png.colour_counts(rows)
    assert (width, height) == (1560, 900)
    assert len(counts) > 20
    for state in ("running", "leased", "booting"):
        assert counts.get(png.hex_rgb(timeline_svg.STATE_COLOURS[state]), 0) > 100, state


@pytest.mark.parametrize("window", [1280, 1920])
def test_the_page_fits_the_window_without_sideways_scrolling(large, window):
    scroll, inner = browser.scroll_width(large.path, window)
    assert inner == window and scroll <= inner, (scroll, inner)


def test_row_labels_say_what_ran_and_what_failed():
    def job(rule: str, n: int, failed: bool = False) -> JobView:
        return JobView(f"j{n}", rule, n, "failed" if failed else "succeeded", 1,
                       "exit 3" if failed else None, True)

    assert timeline_svg.jobs_label([job("boom", 3, failed=True)]) == "boom #3 failed"
    assert timeline_svg.jobs_label([job("ok", 1)]) == "ok #1"
    assert timeline_svg.jobs_label([job("ok", 1), job("ok", 2), job("report", 4)]) == (
        "3 jobs: ok (2), report")
    assert timeline_svg.jobs_label([job("ok", 1), job("boom", 2, failed=True)]) == (
        "2 jobs, 1 failed: ok, boom")


# -- the command line ------------------------------------------------------------------------
def test_timeline_refuses_a_missing_directory_and_an_unknown_run(large, capsys, tmp_path):
    code = main(["--journal", str(large.journal), "timeline", "-o",
                 str(tmp_path / "nope" / "t.html")])
    assert code == 2 and "does not exist" in capsys.readouterr().err
    code = main(["--journal", str(large.journal), "timeline", "zzz"])
    assert code == 2 and "no run 'zzz'" in capsys.readouterr().err


def test_timeline_default_path_is_beside_the_journal(large, capsys):
    assert main(["--journal", str(large.journal), "timeline", large.run[:10]]) == 0
    out = capsys.readouterr().out
    path = large.journal.parent / f"timeline-{large.run}.html"
    assert out.startswith(f"wrote {path}:") and path.is_file()


# -- the demo --------------------------------------------------------------------------------
@pytest.mark.e2e
def test_the_demo_ends_by_writing_its_timeline(tmp_path, capsys):
    demo = subprocess.run([sys.executable, "-m", "snakemake_executor_plugin_vastai", "demo",
                           str(tmp_path / "demo")], capture_output=True, text=True, timeout=240)
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert "0 still alive" in demo.stdout
    line = next(x for x in demo.stdout.splitlines() if x.startswith("Timeline:"))
    path = Path(line.split()[1])
    assert path.is_file() and path.parent == tmp_path / "demo/.snakemake/vastai"
    journal = path.parent / "journal.sqlite"
    shown = page(path, journal, path.stem.removeprefix("timeline-"), {})
    cost = journal_cost(capsys, journal, shown.run)
    assert totals(shown)["dollars"] == cost["dollars"] and totals(shown)["jobs"] == 6
    expected = expected_spans(journal, shown.run)
    for job, spans in expected.items():
        assert drawn_spans(shown.svg, job) == sorted(spans), job
    # its declared input (data/raw.csv, not in git) is uploaded, so nothing warns of it
    assert "not tracked by git" not in demo.stdout + demo.stderr
    # what it offers to try next runs as printed, from another directory
    offered = demo.stdout.split("Try next", 1)[1].splitlines()[1:]
    assert len(offered) == 3
    for command in offered:
        ran = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, text=True,
                             timeout=60)
        assert ran.returncode == 0 and ran.stdout, (command, ran.stderr)


# -- a job re-attached to an earlier run's instance ------------------------------------------
def test_a_resumed_job_shows_on_the_earlier_runs_instance_and_avoids_a_boot(tmp_path, capsys):
    clock = timeline_journal.Clock()
    path = tmp_path / "journal.sqlite"
    with Journal(path, clock=clock) as journal:
        first = journal.start_run(snakemake_version="9", plugin_version="t", settings={})
        old = journal.add_job(run_id=first, rule="train", snakemake_jobid=1, fingerprint="f",
                              attempt=1, state="searching")
        label = journal.label_prefix + old
        journal.record_rent_intent(job_id=old, run_id=first, label=label,
                                   offer={"id": 1, "gpu_name": "RTX 4090", "num_gpus": 1,
                                          "dph_total": 0.5, "geolocation": "Texas, US"})
        journal.transition(old, source="searching", dest="renting", trigger="offers_found")
        clock.t += 1
        journal.record_instance_created(label, 77, created_at=clock.t)
        journal.transition(old, source="renting", dest="booting", trigger="rented")
        clock.t += 600  # the first run dies here; the instance bills on
        second = journal.start_run(snakemake_version="9", plugin_version="t", settings={})
        new = journal.add_job(run_id=second, rule="train", snakemake_jobid=1, fingerprint="f",
                              attempt=1, state="searching")
        clock.t += 1
        journal.transition(new, source="searching", dest="running", trigger="resume",
                           label=label, instance_id=77, resumed_from=old)
        for source, dest in (("running", "downloading"), ("downloading", "destroying")):
            clock.t += 5
            journal.transition(new, source=source, dest=dest, trigger="t")
        journal.record_destroy_accepted(77)
        journal.record_instance_destroyed(label=label)
        journal.transition(new, source="destroying", dest="succeeded", trigger="destroyed")
        journal.end_run(second, "finished")
    out = tmp_path / "t.html"
    assert main(["--journal", str(path), "timeline", second, "-o", str(out), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["totals"]["boots_avoided"] == 1 and data["totals"]["instances"] == 0
    assert data["totals"]["dollars"] == 0.0  # journal cost counts the instance for run one
    (row,) = data["rows"]
    assert row["instance_id"] == 77 and row["jobs"] == [new]
    shown = page(out, path, second, data)
    costs = [t.text for t in shown.svg.iter(f"{SVG}text") if (t.text or "").startswith("($")]
    assert costs == [f"(${row['billed_dollars']:.4f})"]
    # the view starts with the second run: the first run's ten minutes are not idle here
    assert [s["state"] for s in row["spans"]] == ["searching", "running", "downloading",
                                                  "destroying"]
    # the first run, dead in booting: its job's bar runs on, open, to the journal's last word
    assert main(["--journal", str(path), "timeline", first, "-o", str(out), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    last = row["spans"][-1]
    assert (last["state"], last["open"], last["end"]) == ("booting", True, clock.t)


def test_a_run_without_jobs_draws_an_empty_chart_and_no_run_is_a_usage_error(tmp_path, capsys):
    clock = timeline_journal.Clock()
    with Journal(tmp_path / "empty.sqlite", clock=clock) as journal:
        run = journal.start_run(snakemake_version="9", plugin_version="t", settings={})
        clock.t += 500
        journal.end_run(run, "finished")
    out = tmp_path / "empty.html"
    assert main(["--journal", str(tmp_path / "empty.sqlite"), "timeline", "-o", str(out)]) == 0
    assert "0 jobs on 0 instances" in capsys.readouterr().out
    shown = page(out, tmp_path / "empty.sqlite", run, {})
    assert bars(shown.svg) == [] and totals(shown)["dollars"] == 0.0
    Journal(tmp_path / "none.sqlite").close()
    assert main(["--journal", str(tmp_path / "none.sqlite"), "timeline"]) == 2
    assert "no run" in capsys.readouterr().err


def test_a_hostile_state_name_and_detail_stay_text(tmp_path, capsys):
    evil = '"><script>alert(1)</script>'
    clock = timeline_journal.Clock()
    with Journal(tmp_path / "j.sqlite", clock=clock) as journal:
        run = journal.start_run(snakemake_version="9", plugin_version="t", settings={})
        job = journal.add_job(run_id=run, rule="r", snakemake_jobid=1, fingerprint="f",
                              attempt=1, state="searching")
        clock.t += 2
        journal.transition(job, source="searching", dest=evil, trigger="t", detail=evil)
        clock.t += 2
        journal.transition(job, source=evil, dest="cancelled", trigger="t")
        journal.end_run(run, "finished")
    out = tmp_path / "t.html"
    assert main(["--journal", str(tmp_path / "j.sqlite"), "timeline", "-o", str(out)]) == 0
    capsys.readouterr()
    shown = page(out, tmp_path / "j.sqlite", run, {})
    assert "<script" not in shown.html
    (bar,) = bars(shown.svg, state=evil)  # the attribute reads back as the raw name
    assert bar.get("fill") == timeline_svg.FALLBACK_COLOUR
    assert evil in bar.find(f"{SVG}title").text
