"""Transfer progress: calm log lines, throttled journal rows, shown by ``jobs --follow``."""

from __future__ import annotations

import io
import json
import re
import subprocess
import threading
import time
from typing import Any

import pytest
from rich.console import Console

from snakemake_executor_plugin_vastai.cli.journal import jobs as journal_cli
from snakemake_executor_plugin_vastai.cli.journal import main
from snakemake_executor_plugin_vastai.costs import ledger
from snakemake_executor_plugin_vastai.journal.store import Journal
from snakemake_executor_plugin_vastai.run.logs import PluginLogger
from snakemake_executor_plugin_vastai.transports.progress import (
    TerminalBars,
    TransferProgress,
    human_bytes,
    planned_bytes,
)
from snakemake_executor_plugin_vastai.transports.ssh import scripts

MiB = 1024**2


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """A journal stand-in that only records the transfer calls (the real one is below)."""

    def __init__(self) -> None:
        self.updates: list[tuple[int, int, bool]] = []

    def start_transfer(self, **kw: Any) -> int:
        self.started = kw
        return 7

    def update_transfer(self, row: int, done: int, *, ended: bool = False) -> None:
        self.updates.append((row, done, ended))


def feed(progress: TransferProgress, clock: Clock, *, total: int, seconds: float,
         pieces: int) -> None:
    for _ in range(pieces):
        clock.now += seconds / pieces
        n = total // pieces
        progress.count(*((n, 0) if progress.direction == "upload" else (0, n)))


def test_a_long_upload_logs_one_line_per_interval_with_rate_and_time_left():
    clock, lines, journal = Clock(), [], Recorder()
    progress = TransferProgress("upload", 600 * MiB, log=lambda lvl, ev, **kw: lines.append(
        (lvl, ev, kw)), journal=journal, job_id="j", instance_id=3, interval=5.0,
        clock=clock)
    feed(progress, clock, total=600 * MiB, seconds=60.0, pieces=6000)  # 10 MiB/s for 60 s
    progress.end()
    first, middle, last = lines[0], lines[1:-1], lines[-1]
    assert first[1] == "upload of 600 MiB started"  # at once: the next line is 5 s away
    assert 11 <= len(middle) <= 12  # one line every 5 s of 60 s, not one per packet
    level, text, fields = middle[0]
    assert level == "info" and text == "upload 50 MiB of 600 MiB (8%), 10 MiB/s, 55 seconds left"
    assert fields["plain"] is True  # a sentence about the job, not a key=value tail
    assert fields["facts"]["seconds_left"] == pytest.approx(55.0, abs=0.1)  # the file's
    assert last[1] == "upload done: 600 MiB in 1 minute (10 MiB/s)"
    # journal rows: at most one write a second, then the closing one
    assert 55 <= len(journal.updates) <= 62
    assert journal.updates[-1] == (7, 6000 * (600 * MiB // 6000), True)
    started_at = journal.started.pop("started_at")
    assert journal.started == {"job_id": "j", "instance_id": 3, "direction": "upload",
                               "total": 600 * MiB}
    assert abs(started_at - time.time()) < 60  # when the transfer began, on the wall clock


def test_a_small_transfer_says_nothing_and_other_directions_do_not_count():
    clock, lines = Clock(), []
    progress = TransferProgress("upload", 5 * MiB, log=lambda *a, **k: lines.append(a),
                                interval=1.0, clock=clock)
    feed(progress, clock, total=5 * MiB, seconds=30.0, pieces=100)
    progress.count(0, 500 * MiB)  # a download on the same session is not this upload
    progress.end()
    assert lines == [] and progress.done == 100 * (5 * MiB // 100)


def test_a_download_of_unknown_size_reports_once_past_the_threshold():
    clock, lines = Clock(), []
    progress = TransferProgress("download", None, log=lambda lvl, ev, **kw: lines.append(ev),
                                interval=2.0, clock=clock)
    feed(progress, clock, total=100 * MiB, seconds=20.0, pieces=200)  # 5 MiB/s
    assert lines and all("left" not in ln and " of " not in ln for ln in lines)
    assert lines[0] == "download 32 MiB, 5 MiB/s"  # first at the bar


def test_interval_zero_turns_lines_off():
    clock, lines = Clock(), []
    progress = TransferProgress("upload", 900 * MiB, log=lambda *a, **k: lines.append(a),
                                interval=0, clock=clock)
    feed(progress, clock, total=900 * MiB, seconds=100.0, pieces=100)
    progress.end()
    assert lines == []


def test_planned_bytes_counts_files_and_directories(tmp_path):
    (tmp_path / "d/e").mkdir(parents=True)
    (tmp_path / "d/e/x").write_bytes(b"1" * 300)
    (tmp_path / "f").write_bytes(b"1" * 50)
    (tmp_path / "link").symlink_to(tmp_path / "f")
    files = [(tmp_path / "d", "d"), (tmp_path / "f", "f"), (tmp_path / "link", "link"),
             (tmp_path / "gone", "gone")]
    assert planned_bytes(files) == 400  # the link counts: the upload follows it
    assert human_bytes(1536) == "1.5 KiB" and human_bytes(12) == "12 bytes"


def test_follow_shows_transfers_in_flight(capsys, tmp_path, monkeypatch):
    path = tmp_path / "journal.sqlite"
    with Journal(path) as journal:
        run = journal.start_run(snakemake_version="t", plugin_version="t", settings={})
        job = journal.add_job(run_id=run, rule="big", snakemake_jobid=1, fingerprint="f",
                              attempt=1, state="uploading")
        row = journal.start_transfer(job_id=job, instance_id=5, direction="upload",
                                     total=400 * MiB)
        journal.update_transfer(row, 100 * MiB)
        done = journal.start_transfer(job_id=job, instance_id=5, direction="download",
                                      total=None)
        journal.update_transfer(done, 3 * MiB, ended=True)
    shown = threading.Semaphore(0)
    print_jobs = journal_cli.print_jobs

    def counting(*args: Any, **kwargs: Any) -> None:
        print_jobs(*args, **kwargs)
        shown.release()

    def end_after_one_table() -> None:
        shown.acquire(timeout=60)
        with Journal(path) as journal:
            journal.end_run(run, "finished")

    monkeypatch.setattr(journal_cli, "print_jobs", counting)
    ender = threading.Thread(target=end_after_one_table)
    ender.start()
    try:
        code = main(["--journal", str(path), "jobs", "--follow", "--interval", "0.2"])
    finally:
        ender.join()
    out = capsys.readouterr().out
    assert code == 0
    moving = [ln for ln in out.splitlines() if ln.startswith(job) and " upload " in ln]
    assert moving and "100 MiB" in moving[0] and "400 MiB" in moving[0]
    assert "25%" in moving[0] and "TRANSFER OF JOB" in out
    assert len(moving) == 1  # the table after the run ended shows none
    assert not any("download" in ln for ln in out.splitlines())  # ended: not in flight


def test_a_failing_journal_never_breaks_the_transfer():
    class Busy(Recorder):
        def update_transfer(self, row: int, done: int, *, ended: bool = False) -> None:
            raise RuntimeError("database is locked")

    clock, lines = Clock(), []
    journal = Busy()
    progress = TransferProgress("upload", 100 * MiB, log=lambda lvl, ev, **kw: lines.append(
        (lvl, ev)), journal=journal, interval=5.0, clock=clock)
    feed(progress, clock, total=100 * MiB, seconds=10.0, pieces=100)
    progress.end()
    warnings = [ev for lvl, ev in lines if lvl == "warning"]
    assert warnings == ["upload progress is not journaled"]  # once, then it stops trying
    assert progress.done == 100 * MiB and lines[-1][1].startswith("upload done")


def test_a_transfer_shorter_than_a_second_writes_no_journal_row():
    clock, journal = Clock(), Recorder()
    progress = TransferProgress("upload", 900 * MiB, log=lambda *a, **k: None,
                                journal=journal, clock=clock)
    feed(progress, clock, total=900 * MiB, seconds=0.9, pieces=90)
    progress.end()
    assert journal.updates == [] and not hasattr(journal, "started")


# -- a failed write, a tiny interval, the bytes that go with each write ----------------------
def real_journal(tmp_path, clock=None) -> tuple[Journal, str]:
    """A journal with a run and instance 42 (offer with bandwidth prices)."""
    journal = Journal(tmp_path / "j.sqlite", **({"clock": clock} if clock else {}))
    run = journal.start_run(snakemake_version="9", plugin_version="0", settings={})
    job = journal.add_job(run_id=run, rule="r", snakemake_jobid=1, fingerprint="f",
                          attempt=1, state="searching")
    label = journal.label_prefix + "-x"
    journal.record_rent_intent(job_id=job, run_id=run, label=label,
                               offer={"offer_id": 7, "dph_total": 1.0, "inet_down_cost": 4.0})
    journal.record_instance_created(label, 42)
    return journal, run


def test_one_failed_progress_write_still_lets_end_close_the_row(tmp_path):
    journal, _run = real_journal(tmp_path)
    clock, lines = Clock(), []
    progress = TransferProgress("upload", 100 * MiB, log=lambda lvl, ev, **kw: lines.append(
        (lvl, ev)), journal=journal, instance_id=42, interval=5.0, clock=clock)
    clock.now += 1.5
    progress.count(10 * MiB, 0)  # the row is created
    real, calls = journal.update_transfer, []

    def flaky(*a: Any, **kw: Any) -> None:
        calls.append(a)
        if len(calls) == 1:
            raise RuntimeError("database is locked")
        real(*a, **kw)

    journal.update_transfer = flaky  # type: ignore[method-assign]
    clock.now += 1.5
    progress.count(10 * MiB, 0)  # this write fails: periodic updates stop
    clock.now += 1.5
    progress.count(80 * MiB, 0)
    assert len(calls) == 1
    progress.end(True)
    assert journal.transfers(in_flight=True) == []
    (row,) = journal.transfers()
    assert row["bytes_done"] == 100 * MiB and row["ended_at"] is not None
    assert [ev for lvl, ev in lines if lvl == "warning"] == ["upload progress is not journaled"]
    journal.close()


def test_a_tiny_line_interval_neither_floods_the_log_nor_commits_per_chunk(tmp_path):
    journal, _run = real_journal(tmp_path)
    clock, lines = Clock(), []
    progress = TransferProgress("upload", 1000 * MiB, log=lambda *a, **k: lines.append(a),
                                journal=journal, instance_id=42, interval=0.001, clock=clock)
    writes = []
    real = journal.update_transfer

    def counting(*a: Any, **kw: Any) -> None:
        writes.append(a)
        real(*a, **kw)

    journal.update_transfer = counting  # type: ignore[method-assign]
    feed(progress, clock, total=1000 * MiB, seconds=2.0, pieces=1000)  # 1 MiB per 2 ms
    assert 1 <= len(writes) <= 2  # one per second, whatever the line interval
    assert 3 <= len(lines) <= 4  # a line per 0.5 s (the floor of the interval), not per chunk
    journal.close()


def metered_upload(journal: Any) -> tuple[Clock, ledger.ByteMeter]:
    """A 300 MiB upload whose byte meter reports to its progress (as the SSH transport
    wires them), journaling to instance 42, lines every 5 s."""
    clock, meter = Clock(), ledger.ByteMeter()
    progress = TransferProgress("upload", 300 * MiB, log=lambda *a, **k: None,
                                journal=journal, instance_id=42, interval=5.0, clock=clock,
                                meter=meter)
    meter.listener = progress.count  # the meter holds the progress from here on
    return clock, meter


def test_each_progress_write_journals_the_meters_bytes_with_it(tmp_path):
    """A crash mid-transfer loses at most the bytes since the last write (about 1 s)."""
    journal, run = real_journal(tmp_path)
    clock, meter = metered_upload(journal)
    for _ in range(20):  # 2.5 s at 32 MiB/s; no end(): the process dies here
        clock.now += 0.125
        meter.sent(4 * MiB)
    (row,) = journal.transfers(in_flight=True)
    (instance,) = journal.instances()
    assert row["bytes_done"] == 64 * MiB  # the write at 2.0 s
    assert (instance["bytes_uploaded"], instance["bytes_downloaded"]) == (64 * MiB, 0)
    assert journal.run_bytes(run) == {42: (64 * MiB, 0)}
    assert meter.take() == (16 * MiB, 0)  # only the last half second is not journaled yet
    journal.close()


def test_a_failed_progress_write_hands_its_bytes_back_to_the_meter(tmp_path):
    journal, _run = real_journal(tmp_path)
    clock, meter = metered_upload(journal)

    def busy(*a: Any, **kw: Any) -> None:
        raise RuntimeError("database is locked")

    journal.update_transfer = busy  # type: ignore[method-assign]
    for _ in range(12):  # 1.5 s: the write at 1 s fails
        clock.now += 0.125
        meter.sent(MiB)
    assert journal.instances()[0]["bytes_uploaded"] == 0
    assert meter.take() == (12 * MiB, 0)  # the flush at the end journals them
    journal.close()


@pytest.mark.parametrize("value", [0.001, 0.49, -1, "soon", float("inf")])
def test_progress_intervals_below_half_a_second_are_refused_naming_the_option(value):
    from types import SimpleNamespace

    from snakemake_interface_common.exceptions import WorkflowError

    from snakemake_executor_plugin_vastai.run.startup import progress_interval

    with pytest.raises(WorkflowError, match="--vastai-progress-interval"):
        progress_interval(SimpleNamespace(progress_interval=value))


@pytest.mark.parametrize(("value", "seconds"), [(0, 0.0), (0.5, 0.5), (None, 5.0), (12, 12.0)])
def test_progress_intervals_off_or_from_half_a_second_are_taken(value, seconds):
    from types import SimpleNamespace

    from snakemake_executor_plugin_vastai.run.startup import progress_interval

    assert progress_interval(SimpleNamespace(progress_interval=value)) == seconds


# -- what a person reads: the log, the terminal, the download's total ------------------------
class Lines:
    """Snakemake's executor logger as the plugin sees it: it receives finished lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, line: str) -> None:
        self.lines.append(line)

    warning = error = debug = info


def test_in_a_log_progress_reads_as_sentences_about_the_job_and_the_file_keeps_figures(
        tmp_path):
    sink = Lines()
    log = PluginLogger(sink).bind(rule="train", job="1c2d3e4f5a6b", instance=7,
                                  state="uploading")
    log.open_events(tmp_path / "events.jsonl")
    clock = Clock()
    progress = TransferProgress("upload", 200 * MiB, log=lambda lvl, ev, **kw: getattr(
        log, lvl)(ev, **kw), interval=5.0, clock=clock)
    feed(progress, clock, total=200 * MiB, seconds=20.0, pieces=200)
    progress.end()
    log.close()
    assert sink.lines[0] == "vastai: rule train, job 1c2d3e4f5a6b: upload of 200 MiB started"
    assert re.fullmatch(r"vastai: rule train, job 1c2d3e4f5a6b: upload 5\d MiB of 200 MiB "
                        r"\(2\d%\), 10 MiB/s, 1\d seconds left", sink.lines[1]), sink.lines[1]
    assert sink.lines[-1].endswith("upload done: 200 MiB in 20 seconds (10 MiB/s)")
    assert not any("=" in line for line in sink.lines)  # no key=value tail
    events = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert 50 * MiB <= events[1]["bytes"] <= 52 * MiB and 14 < events[1]["seconds_left"] < 16


def test_on_a_terminal_each_large_transfer_is_a_live_bar_with_total_and_time_left():
    screen = io.StringIO()
    bars = TerminalBars(Console(file=screen, force_terminal=True, width=120))
    clock, lines = Clock(), []
    progress = TransferProgress("download", 300 * MiB, log=lambda lvl, ev, **kw: lines.append(
        ev), interval=5.0, clock=clock, bars=bars, label="train 1c2d3e4f5a6b")
    feed(progress, clock, total=120 * MiB, seconds=12.0, pieces=120)
    bars._display.refresh()  # what the display shows now (it redraws twice a second)
    drawn = screen.getvalue()
    assert "train 1c2d3e4f5a6b download" in drawn and "/300.0 MiB" in drawn
    assert re.search(r"\d+:\d\d:\d\d", drawn)  # the time left
    progress.end()
    assert bars._display is None  # the last bar gone, the display stops
    assert lines == ["download done: 120 MiB in 12 seconds (10 MiB/s)"]  # no lines meanwhile


def test_the_download_total_is_the_size_of_the_tar_that_will_arrive(tmp_path):
    work = tmp_path / "job"
    (work / "out" / "deep").mkdir(parents=True)
    (work / "out" / "deep" / "a.bin").write_bytes(b"x" * 70_000)
    (work / "out" / "b.txt").write_text("hello\n")
    (work / "log.txt").write_bytes(b"")
    (work / "out" / "link").symlink_to("b.txt")
    paths = ["out", "log.txt", "missing.txt"]
    listing = subprocess.run(["sh", "-c", scripts.size_command(str(work), paths)],
                             capture_output=True, text=True, check=True).stdout
    tar = subprocess.run(["sh", "-c", scripts.download_command(str(work), paths)],
                         capture_output=True, check=True).stdout
    assert scripts.tar_bytes(listing) == len(tar)
