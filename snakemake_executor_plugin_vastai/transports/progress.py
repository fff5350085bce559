"""Progress of a large upload or download: a bar on a terminal, readable lines in a log.

A multi-GB transfer should not be silent until it ends, nor flood the log. A
:class:`TransferProgress` is fed the byte counts of one transfer (from the
session's :class:`~.ledger.ByteMeter`). For transfers above :data:`THRESHOLD_BYTES`
(an upload by its planned size, a download by the size the instance reports, or
once it passes the threshold when that is unknown) it

- on a terminal (stderr is a tty), draws a live bar per transfer with its total,
  rate and time left (:class:`TerminalBars`, ``rich``), all jobs' bars in one
  display;
- in a log (not a tty), says when it starts, then at most once every ``interval``
  seconds where it is ("upload 1.2 GiB of 4 GiB (30%), 40 MiB/s, 1 minute and 10
  seconds left"), as a sentence about its job; the figures go to the run's event
  file only (``facts``), not as a ``key=value`` tail;
- in both, ends with one line: how much, how long, how fast.

Also, whatever the size:

- writes the journal's ``transfers`` row at most once every
  :data:`JOURNAL_SECONDS` whatever the line interval (each write is a synced
  commit), and only for a transfer that lasts that long, so
  ``journal jobs --follow`` shows what is moving without a write per network
  packet (or any write for the many small transfers);
- with the row, in the same transaction, journals the bytes the instance moved
  since the last write (its :class:`~.ledger.ByteMeter`'s delta), so a crash
  mid-transfer loses at most about a second of bytes from the cost ledger.

Sizes and durations are ``humanfriendly``'s words (binary units for sizes).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from humanfriendly import format_size, format_timespan

THRESHOLD_BYTES = 32 * 1024**2  # smaller transfers end before a line would help
DEFAULT_INTERVAL = 5.0  # seconds between progress lines of one transfer
MIN_INTERVAL = 0.5  # a shorter line interval floods the log (startup.py refuses it)
JOURNAL_SECONDS = 1.0  # seconds between journal writes of one transfer
BAR_SECONDS = 0.25  # seconds between updates of a terminal bar (it redraws twice a second)

LogFn = Callable[..., None]  # log(level, event, **fields)
_FAILED = object()  # a journal call that raised


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'; binary units, as transfer sizes usually are quoted."""
    value = max(float(n), 0.0)
    return format_size(int(value) if value < 1024 else value, binary=True)


def human_seconds(seconds: float) -> str:
    """8.1 -> '8.1 seconds', 65 -> '1 minute and 5 seconds'."""
    return format_timespan(max(float(seconds), 0.0))


class TerminalBars:
    """All jobs' transfer bars in one live display on stderr, while any transfer runs.

    Made on demand (the first bar starts the display, the last one to end stops it),
    shared by every job thread of the run (``rich``'s display is thread-safe).
    """

    def __init__(self, console: Any = None) -> None:
        self._console = console
        self._lock = threading.Lock()
        self._display: Any = None
        self._open = 0

    def add(self, description: str, total: int | None) -> int:
        """A new bar; its id for :meth:`update` and :meth:`close`."""
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        with self._lock:
            if self._display is None:
                self._display = Progress(
                    TextColumn("{task.description}"), BarColumn(),
                    DownloadColumn(binary_units=True), TransferSpeedColumn(),
                    TimeRemainingColumn(), console=self._console or Console(stderr=True),
                    transient=True, refresh_per_second=2)
                self._display.start()
            self._open += 1
            return int(self._display.add_task(description, total=total))

    def update(self, bar: int, done: int) -> None:
        display = self._display
        if display is not None:
            display.update(bar, completed=done)

    def close(self, bar: int) -> None:
        """The transfer ended: its bar goes (its closing log line stays)."""
        with self._lock:
            if self._display is None:
                return
            self._display.remove_task(bar)
            self._open -= 1
            if self._open <= 0:
                self._display.stop()
                self._display, self._open = None, 0


_BARS = TerminalBars()


def terminal_bars() -> TerminalBars | None:
    """The run's bars when stderr is a terminal a person watches; None in a log."""
    try:
        return _BARS if sys.stderr is not None and sys.stderr.isatty() else None
    except (AttributeError, ValueError):  # a replaced or closed stderr
        return None


class TransferProgress:
    """One transfer's progress; ``count(up, down)`` is a ByteMeter listener."""

    def __init__(self, direction: str, total: int | None, *, log: LogFn,
                 journal: Any = None, job_id: str | None = None,
                 instance_id: int | None = None, interval: float = DEFAULT_INTERVAL,
                 threshold: int = THRESHOLD_BYTES, meter: Any = None,
                 clock: Callable[[], float] = time.monotonic,
                 bars: TerminalBars | None = None, label: str = "") -> None:
        if direction not in ("upload", "download"):
            raise ValueError(f"direction must be upload or download, not {direction!r}")
        self.direction = direction
        self.total = total
        self.done = 0
        self.lines = 0
        self._log = log
        self._journal = journal
        self._interval = max(interval, MIN_INTERVAL) if interval > 0 else 0.0
        self._meter = meter  # the instance's ByteMeter: its deltas go with the row
        self._threshold = threshold
        self._clock = clock
        self._lock = threading.Lock()
        self._start = clock()
        self._last_line = self._start
        self._last_write = self._start
        # The row is written only once the transfer has run for JOURNAL_SECONDS: most
        # transfers are small, and each journal write is a synced commit. After a failed
        # write the periodic updates stop, but the row id is kept so end() can close it.
        self._row: int | None = None
        self._writing = journal is not None
        self._warned = False
        self._row_facts = {"job_id": job_id, "instance_id": instance_id,
                           "direction": direction, "total": total, "started_at": time.time()}
        # A terminal gets a bar instead of the periodic lines (interval 0 turns both off).
        self._bars = bars if self._interval > 0 else None
        self._bar: int | None = None
        self._label = label or direction
        if total is not None and total >= threshold and self._interval > 0:
            self._show_start(total)

    def _show_start(self, total: int) -> None:
        """A large transfer says at once that it runs (the first line is an interval away)."""
        if self._bars is not None:
            self._bar = self._bars.add(f"{self._label} {self.direction}", total)
        else:
            self._log("info", f"{self.direction} of {human_bytes(total)} started", plain=True,
                      facts={"total": total})

    def count(self, uploaded: int, downloaded: int) -> None:
        """Bytes moved on the session; only this transfer's direction counts."""
        n = uploaded if self.direction == "upload" else downloaded
        if n <= 0:
            return
        with self._lock:
            self.done += n
            now = self._clock()
            line = self._due_line(now)
            write = self._writing and now - self._last_write >= JOURNAL_SECONDS
            if write:
                self._last_write = now
            done = self.done
        if line and self._bars is not None:
            if self._bar is None:  # a download of unknown size passed the threshold
                self._bar = self._bars.add(f"{self._label} {self.direction}", self.total)
            self._bars.update(self._bar, done)
        elif line:
            self._say(now, done)
        if write:
            self._write_row(done)

    def _write_row(self, done: int, ended: bool = False) -> None:
        if self._row is None:
            row = self._journal_call(self._journal.start_transfer, **self._row_facts)
            if row is _FAILED:
                return
            self._row = row
        moved = self._meter.take() if self._meter is not None else (0, 0)
        extra = {"uploaded": moved[0], "downloaded": moved[1]} if any(moved) else {}
        result = self._journal_call(self._journal.update_transfer, self._row, done,
                                    ended=ended, **extra)
        if result is _FAILED and any(moved):
            self._meter.untake(*moved)  # the next write or the final flush journals them

    def _due_line(self, now: float) -> bool:
        every = BAR_SECONDS if self._bars is not None else self._interval
        if self._interval <= 0 or now - self._last_line < every:
            return False
        size = self.total if self.total is not None else self.done
        if size < self._threshold:
            return False
        self._last_line = now
        return True

    def _say(self, now: float, done: int) -> None:
        """One line a person reads: where the transfer is, how fast, how long to go."""
        elapsed = max(now - self._start, 1e-9)
        rate = done / elapsed
        facts: dict[str, Any] = {"bytes": done, "rate_bytes_per_s": round(rate)}
        text = f"{self.direction} {human_bytes(done)}"
        if self.total:
            percent = min(100.0 * done / self.total, 100.0)
            text += f" of {human_bytes(self.total)} ({percent:.0f}%)"
            facts["total"] = self.total
        text += f", {human_bytes(rate)}/s"
        if self.total and rate > 0:
            left = max(self.total - done, 0) / rate
            facts["seconds_left"] = round(left, 1)
            text += f", {human_seconds(round(left))} left"
        self.lines += 1
        self._log("info", text, plain=True, facts=facts)

    def end(self, ok: bool = True) -> None:
        """Close the bar and the journal row; a large transfer also gets a closing line."""
        now = self._clock()
        with self._lock:
            done, lines = self.done, self.lines
        if self._bar is not None and self._bars is not None:
            self._bars.close(self._bar)
            self._bar = None
        if ok and self._interval > 0 and done >= self._threshold:
            elapsed = max(now - self._start, 1e-9)
            self._log("info", f"{self.direction} done: {human_bytes(done)} in "
                      f"{human_seconds(round(elapsed, 1))} ({human_bytes(done / elapsed)}/s)",
                      plain=True, facts={"bytes": done, "seconds": round(elapsed, 2),
                                         "progress_lines": lines})
        if self._row is not None:  # a short transfer never had a row; a started one is
            self._write_row(done, ended=True)  # closed even after a failed update

    def _journal_call(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """A progress row is a courtesy: a busy or failing journal must never break the
        transfer. After one failure this transfer stops its periodic updates (warned
        once); ``_FAILED`` tells the caller."""
        try:
            return fn(*args, **kw)
        except Exception as exc:
            self._writing = False
            if not self._warned:
                self._warned = True
                self._log("warning", f"{self.direction} progress is not journaled",
                          error=str(exc))
            return _FAILED


def planned_bytes(files: Any) -> int:
    """Bytes of the regular files in ``(local path, remote name)`` pairs; directories
    count what is under them. Symlinks are followed, as the upload follows them
    (``transports/ssh/upload._walk``: a link's target is what travels), and a directory link back to
    an ancestor is skipped as the upload skips it. A file that vanished counts 0 (the
    upload says why)."""
    total = 0
    for item in files:
        total += _tree_bytes(item[0] if isinstance(item, tuple) else item, frozenset())
    return total


def _tree_bytes(path: Any, chain: frozenset[tuple[int, int]]) -> int:
    """Bytes under ``path``, links followed; ``chain`` holds the directories above it."""
    import os
    import stat

    try:
        st = os.stat(path)
    except OSError:  # vanished, dangling link, or a link loop
        return 0
    if stat.S_ISREG(st.st_mode):
        return st.st_size
    if not stat.S_ISDIR(st.st_mode) or (st.st_dev, st.st_ino) in chain:
        return 0
    inner = chain | {(st.st_dev, st.st_ino)}
    try:
        names = os.listdir(path)
    except OSError:
        return 0
    return sum(_tree_bytes(os.path.join(path, n), inner) for n in names)
