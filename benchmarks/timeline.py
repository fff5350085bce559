"""One job's life as measured from four independent witnesses, and what it is made of.

The witnesses, all on this machine's clock:

- the plugin's journal (``.snakemake/vastai/journal.sqlite``): every state
  transition with its time (submit, rented, booted, uploaded, completed,
  downloaded, and the terminal state);
- the simulator's ground truth: when the instance was created and destroyed,
  its billed seconds, and its status history (created -> running is the boot);
- the instance's sandbox, which outlives the instance until the simulator
  stops: the wrapper writes ``.vastai/pid`` as its first act and ``.vastai/rc``
  as its last, so their mtimes bracket everything that ran on the instance;
- the job itself (``stamp.py``): its own start and end, and the start of the
  remote ``python -m snakemake`` job command it ran under;

plus Snakemake's ``Finished jobid`` line (see ``procwatch``).

The *floor* of a job is what the orchestration cannot shorten: the boot delay,
everything that ran on the instance under the job wrapper (the plugin's small
bootstrap, then the job command: a remote ``python -m snakemake`` running the
rule), and moving the job's bytes at the measured transfer rate. *Overhead*
is everything else: API calls, polling, SSH set-up, launching, noticing the
end, destroying, and Snakemake noticing the executor's verdict.

Why the whole wrapper time is in the floor: the simulator runs every instance
on this machine's 2 cores, so with many concurrent jobs the instance-side
processes queue for CPU that real, separate hosts would each have to
themselves. What that instance-side work costs beyond the rule is measured on
an otherwise idle machine (one job) and reported as a figure of its own.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .workload import read_stamp

JOB_DIR = "vastai-job"
DEFAULT_RATE = 100e6  # bytes/s used when no transfer figure was measured in this run


@dataclass
class JobTimes:
    """Times (epoch seconds) and sizes of one job; None where a witness is silent."""

    job_id: str
    snakemake_jobid: int
    state: str
    instance_id: int | None
    submit: float
    rented: float | None = None
    booted: float | None = None
    uploaded: float | None = None
    completed: float | None = None
    downloaded: float | None = None
    terminal: float | None = None
    finished: float | None = None  # Snakemake's "Finished jobid" line
    created: float | None = None  # simulator: instance created
    boot: float | None = None  # simulator: created -> running
    destroyed: float | None = None  # simulator: the destroy request arrived
    billed: float | None = None  # simulator: billed seconds
    wrapper_start: float | None = None  # sandbox: .vastai/pid mtime
    wrapper_end: float | None = None  # sandbox: .vastai/rc mtime
    command_start: float | None = None  # the remote job command's process start
    rule_start: float | None = None  # stamp.py
    rule_end: float | None = None
    bytes_up: int = 0
    bytes_down: int = 0
    error: str | None = None  # the journal's last_error

    # -- derived -----------------------------------------------------------------------
    @property
    def rule_seconds(self) -> float | None:
        return _diff(self.rule_end, self.rule_start)

    @property
    def command_seconds(self) -> float | None:
        """The job command on the instance: remote Snakemake start until the rc file."""
        start = self.command_start if self.command_start is not None else self.wrapper_start
        return _diff(self.wrapper_end, start)

    @property
    def instance_seconds(self) -> float | None:
        """Everything under the job wrapper on the instance: bootstrap + job command."""
        return _diff(self.wrapper_end, self.wrapper_start)

    def transfer_seconds(self, rate: float) -> float:
        return (self.bytes_up + self.bytes_down) / rate

    def floor(self, rate: float) -> float | None:
        """Boot + instance-side run (bootstrap + job command) + bytes at the measured rate."""
        if self.boot is None or self.instance_seconds is None:
            return None
        return self.boot + self.instance_seconds + self.transfer_seconds(rate)

    @property
    def total(self) -> float | None:
        """Snakemake handed the job over (journal submit) until Snakemake marked it done."""
        return _diff(self.finished, self.submit)

    def overhead(self, rate: float) -> float | None:
        floor = self.floor(rate)
        return None if floor is None or self.total is None else self.total - floor

    def strict_overhead(self, rate: float) -> float | None:
        """Like ``overhead`` but only the rule's own time is subtracted (the bootstrap and
        the remote Snakemake count as overhead, as contended as they are here)."""
        if self.total is None or self.boot is None or self.rule_seconds is None:
            return None
        return self.total - self.boot - self.rule_seconds - self.transfer_seconds(rate)

    def billed_overhead(self, rate: float) -> float | None:
        floor = self.floor(rate)
        return None if floor is None or self.billed is None else self.billed - floor

    @property
    def destroy_delay(self) -> float | None:
        """Last output byte home (journal ``downloaded``) until the destroy request arrived."""
        return _diff(self.destroyed, self.downloaded)

    def phases(self) -> dict[str, float | None]:
        """Where the time went, in order; the pieces add up to ``total``."""
        running_at = None if self.created is None or self.boot is None \
            else self.created + self.boot
        return {
            "search_and_rent": _diff(self.rented, self.submit),
            "boot_delay": self.boot,
            "boot_noticed_and_ssh": _diff(self.booted, running_at),
            "upload": _diff(self.uploaded, self.booted),
            "launch": _diff(self.wrapper_start, self.uploaded),
            "remote_bootstrap": _diff(self.command_start, self.wrapper_start),
            "remote_snakemake_before_rule": _diff(self.rule_start, self.command_start),
            "rule": self.rule_seconds,
            "remote_snakemake_after_rule": _diff(self.wrapper_end, self.rule_end),
            "end_noticed": _diff(self.completed, self.wrapper_end),
            "download": _diff(self.downloaded, self.completed),
            "destroy": _diff(self.terminal, self.downloaded),
            "snakemake_noticed": _diff(self.finished, self.terminal),
        }

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


# --------------------------------------------------------------------------- gathering


def journal_jobs(workdir: Path, run_id: str | None = None) -> list[dict[str, Any]]:
    """Job rows with their transitions, read-only (``run_id`` None: the latest run)."""
    path = workdir / ".snakemake" / "vastai" / "journal.sqlite"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        if run_id is None:
            row = db.execute("SELECT id FROM runs ORDER BY started_at DESC LIMIT 1").fetchone()
            run_id = row["id"] if row else ""
        jobs = [dict(r) for r in db.execute("SELECT * FROM jobs WHERE run_id = ?", [run_id])]
        for job in jobs:
            job["transitions"] = [dict(r) for r in db.execute(
                "SELECT * FROM transitions WHERE job_id = ? ORDER BY id", [job["id"]])]
    finally:
        db.close()
    return jobs


def runs(workdir: Path) -> list[dict[str, Any]]:
    path = workdir / ".snakemake" / "vastai" / "journal.sqlite"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM runs ORDER BY started_at")]
    finally:
        db.close()


TRIGGER_FIELDS = {"rented": "rented", "resume": "rented", "booted": "booted",
                  "uploaded": "uploaded", "completed": "completed", "downloaded": "downloaded"}
TERMINAL = ("succeeded", "failed", "cancelled")


def job_times(job: dict[str, Any], truth_by_id: dict[int, dict[str, Any]], workdir: Path,
              finished: dict[int, float]) -> JobTimes:
    """Combine the witnesses for one journal job."""
    times = JobTimes(job_id=job["id"], snakemake_jobid=int(job["snakemake_jobid"] or -1),
                     state=job["state"], instance_id=job["instance_id"], submit=0.0,
                     error=job.get("last_error"))
    for tr in job["transitions"]:
        if tr["trigger"] == "submit":
            times.submit = tr["at"]
        elif tr["trigger"] in TRIGGER_FIELDS and getattr(times, TRIGGER_FIELDS[tr["trigger"]]) \
                is None:
            setattr(times, TRIGGER_FIELDS[tr["trigger"]], tr["at"])
            if tr["trigger"] == "uploaded":
                times.bytes_up = _detail(tr).get("bytes", 0)
        if tr["to_state"] in TERMINAL:
            times.terminal = tr["at"]
    times.finished = finished.get(times.snakemake_jobid)
    inst = truth_by_id.get(int(job["instance_id"] or 0))
    if inst is not None:
        _add_instance(times, inst)
    return times


def _detail(tr: dict[str, Any]) -> dict[str, Any]:
    try:
        value = json.loads(tr["detail"] or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _add_instance(times: JobTimes, inst: dict[str, Any]) -> None:
    """Simulator facts plus the sandbox files and the job's own stamp."""
    times.created = inst["created_at"]
    times.destroyed = inst["destroyed_at"]
    times.billed = inst["billed_seconds"]
    running = [t for t, status in inst["history"] if status == "running"]
    times.boot = running[0] if running else None
    control = Path(inst["sandbox"]) / JOB_DIR / ".vastai"
    times.wrapper_start = _mtime(control / "pid")
    times.wrapper_end = _mtime(control / "rc")
    outputs = list((Path(inst["sandbox"]) / JOB_DIR / "out").glob("*.json"))
    if outputs:
        stamp = read_stamp(outputs[0]) or {}
        times.rule_start, times.rule_end = stamp.get("start"), stamp.get("end")
        times.command_start = stamp.get("command_start")
        times.bytes_down = sum(p.stat().st_size for p in outputs)


def _mtime(path: Path) -> float | None:
    with contextlib.suppress(OSError):
        return path.stat().st_mtime
    return None


def gather(workdir: Path, truth: dict[str, Any], finished: dict[int, float],
           rule: str = "one", run_id: str | None = None) -> list[JobTimes]:
    """Every job of ``rule`` in the (latest) run, with all witnesses combined."""
    if not (workdir / ".snakemake" / "vastai" / "journal.sqlite").exists():
        return []  # the run never got as far as starting the executor
    by_id = {int(i["id"]): i for i in truth["instances"]}
    return [job_times(j, by_id, workdir, finished) for j in journal_jobs(workdir, run_id)
            if j["rule"] == rule]
