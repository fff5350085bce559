"""Run a command while timestamping its output lines and sampling its /proc entry.

Why timestamp lines: Snakemake prints ``Finished jobid: N`` the moment its
scheduler marks a job done, but its own time stamps have one-second
resolution. Reading its output through a pipe and stamping each line on
arrival (Python's stderr is line-buffered, and Snakemake's log handler flushes
every record) gives that moment to within milliseconds.

Why /proc: CPU seconds of the Snakemake process itself (``utime + stime``,
without its children) and its memory high-water mark (``VmHWM``) and thread
count, sampled while it runs. No psutil needed.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

FINISHED_RE = re.compile(r"Finished jobid: (\d+) ")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcSample:
    """One look at /proc/<pid>: when, CPU seconds so far, memory and threads."""

    t: float
    cpu: float  # utime + stime of the process itself, seconds
    rss_kib: int
    hwm_kib: int  # peak resident set size so far
    threads: int


@dataclass
class Watched:
    """The outcome of :func:`watch`: exit code, timestamped lines, samples."""

    argv: list[str]
    returncode: int
    started: float
    ended: float
    lines: list[tuple[float, str]] = field(default_factory=list)
    samples: list[ProcSample] = field(default_factory=list)

    @property
    def wall(self) -> float:
        return self.ended - self.started

    def finished_at(self) -> dict[int, float]:
        """Snakemake job id -> when its ``Finished jobid`` line arrived (first one)."""
        out: dict[int, float] = {}
        for t, text in self.lines:
            m = FINISHED_RE.search(text)
            if m:
                out.setdefault(int(m.group(1)), t)
        return out

    def first_line(self, needle: str) -> float | None:
        return next((t for t, text in self.lines if needle in text), None)

    def text(self) -> str:
        return "\n".join(text for _, text in self.lines)

    def tail(self, n: int = 40) -> str:
        return "\n".join(text for _, text in self.lines[-n:])

    def peak(self, name: str) -> float:
        return max((getattr(s, name) for s in self.samples), default=0)

    def cpu_seconds(self) -> float:
        return self.samples[-1].cpu if self.samples else 0.0


def read_proc(pid: int) -> ProcSample | None:
    """CPU, RSS, high-water mark and threads of ``pid``; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        status: dict[str, int] = {}
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM", "Threads"):
                    status[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if "VmHWM" not in status:  # a zombie has no memory lines
        return None
    cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return ProcSample(time.time(), cpu, status.get("VmRSS", 0), status["VmHWM"],
                      status.get("Threads", 0))


def watch(argv: Sequence[str], *, cwd: Path, env: Mapping[str, str] | None = None,
          timeout: float = 1800.0, sample_every: float | None = None,
          on_line: callable | None = None) -> Watched:
    """Run ``argv`` to completion (killed after ``timeout``); stdout and stderr merged."""
    started = time.time()
    proc = subprocess.Popen(list(argv), cwd=cwd, env=dict(env) if env is not None else None,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, errors="replace",
                            start_new_session=True)
    result = Watched(list(argv), -1, started, started)
    sampler = None
    if sample_every:
        sampler = threading.Thread(target=_sample, args=(proc, sample_every, result.samples),
                                   daemon=True)
        sampler.start()
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            now = time.time()
            result.lines.append((now, line.rstrip("\n")))
            if on_line is not None:
                on_line(proc, now, line)
        result.returncode = proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    result.ended = time.time()
    if sampler is not None:
        sampler.join(5)
    return result


def _sample(proc: subprocess.Popen[str], every: float, out: list[ProcSample]) -> None:
    while proc.poll() is None:
        sample = read_proc(proc.pid)
        if sample is not None:
            out.append(sample)
        time.sleep(every)
