"""How a job step ends: the outcomes transports return, the exceptions, the messages.

A transport (``transports/``) moves the job's data and runs it; it returns what it
found as a small value (:class:`Booted`, :class:`Reattached`, :class:`Uploaded`,
:class:`RunEnded`, :class:`Downloaded`), and only the driver (``driver.py``) writes
the job model and fires the trigger. Steps that cannot go on raise
:class:`JobFailure` (the message is for the user) or :class:`JobCancelled`; the
driver's loop turns them into the ``fail`` and ``cancel`` triggers, which lead
through ``destroying``. Shared by the driver and every transport.
"""

from __future__ import annotations

import os
import re
import signal
from dataclasses import dataclass, field
from typing import Any

from ..run.terminal import sanitise

CRASH_ENV = "SNAKEMAKE_VASTAI_CRASH_AT"
CRASH_POINTS = ("after_rent_intent", "after_create", "after_launch", "after_download",
                "after_destroy_request", "after_give_back")
# The keep-warm hand-over and adoption (run/runtime.py); only runs with --vastai-keep-warm
# reach them, so the chaos trials, which draw from CRASH_POINTS, leave them out.
KEEP_WARM_CRASH_POINTS = ("after_keep_warm_write", "adopting", "after_adopted")


@dataclass(frozen=True)
class Booted:
    """The instance is up and answers (SSH mode: SSH too): journaled with ``booted``."""

    detail: dict  # for the transition's detail
    fields: dict = field(default_factory=dict)  # job columns (SSH: host and port)
    endpoint: Any = None  # SSH mode: where the instance answers (channels.Endpoint)


@dataclass(frozen=True)
class Reattached:
    """What a re-attach found of an earlier run's job on its live instance."""

    status: Any  # what the instance said (for the ``resume`` detail)
    started: bool  # its process was launched there
    exit_code: int | None = None  # it ended with this code
    endpoint: Any = None  # SSH mode: where the instance answers
    stopped_for: float | None = None  # seconds since its watchdog stopped it (if it did)


@dataclass(frozen=True)
class Uploaded:
    """Sources and inputs are on the instance."""

    files: int
    bytes: int
    already_on_instance: int = 0  # hard-linked from earlier jobs' directories


@dataclass(frozen=True)
class RunEnded:
    """The job's process ended with ``exit_code``."""

    exit_code: int
    note: str | None = None  # how its end was seen, when not by its own exit line
    failure: str | None = None  # the message for the user when it failed (storage mode)
    outputs_home: bool = False  # storage mode: it exited 0 and its outputs are in the bucket
    over_runtime: bool = False  # its runtime cap passed while its end was being read


@dataclass(frozen=True)
class Downloaded:
    """What could come home came home."""

    ok: bool  # it exited 0 and every declared output is home
    paths: int  # paths asked for


class JobFailure(Exception):
    """The job cannot succeed on this instance; the message is for the user."""


class JobCancelled(Exception):
    """Snakemake asked us to stop."""


def crash_point(name: str) -> None:
    """Fault injection for the crash tests: SIGKILL ourselves at a named point.

    Inert unless ``SNAKEMAKE_VASTAI_CRASH_AT`` names this point. The points sit
    where a crash is hardest to survive, e.g. between the create request and
    the journal write of its answer.
    """
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


DISK_FULL = re.compile(r"No space left on device|Wrote only \d+ of \d+ bytes|"
                       r"Disk quota exceeded", re.IGNORECASE)


def disk_hint(message: str) -> str:
    """What to do when the host's error says its disk is full."""
    if not DISK_FULL.search(message):
        return ""
    return ("; the instance's disk is full: rent more with --vastai-disk or the rule's "
            "disk_mb resource")


def log_tail(path: str, lines: int = 20) -> str:
    """The end of the job's own output in its log, indented, for the error Snakemake shows.

    The remote Snakemake ends a failed job's log with its own report (``Error in rule``,
    the shell command, "Shutting down", the same report again), which alone fills twenty
    lines: the tail shown is the output before that report, where the job said why it
    failed. The log file itself stays as the host wrote it (raw bytes; shown sanitised).
    """
    text = _log_end(path)
    if text is None:
        return ""
    all_lines = text.splitlines()
    report = next((i for i, line in enumerate(all_lines) if REMOTE_REPORT.match(line)), None)
    if report is not None and report > 0:
        if TIMESTAMP.match(all_lines[report - 1]):
            report -= 1
        all_lines = all_lines[:report]
    tail = [sanitise(line) for line in all_lines[-lines:]]  # it reaches journal views too
    return ("\n    " + "\n    ".join(tail)) if tail else ""


def _log_end(path: str, size: int = 65536) -> str | None:
    """The last ``size`` bytes of a job's log as text (None: no log to read)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            handle.seek(max(handle.tell() - size, 0))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return None


def command_exit_code(path: str, fallback: int | None) -> int | None:
    """The exit code of the job's own command, as the remote Snakemake logged it.

    The process the plugin waits for is the remote Snakemake, which exits 1 whatever
    the rule's command exited with; a person debugging ``exit 3`` needs the 3. The
    remote Snakemake logs it in its ``CalledProcessError`` line ("returned non-zero
    exit status 3"); the last such line of the log wins. ``fallback`` (the process's
    own code) when the log has none (a ``run:`` block, a missing output).
    """
    text = _log_end(path)
    if text is None:
        return fallback
    found = COMMAND_STATUS.findall(text)
    return int(found[-1]) if found else fallback


COMMAND_STATUS = re.compile(r"returned non-zero exit status (\d+)\.?\s*$", re.MULTILINE)
REMOTE_REPORT = re.compile(r"^(Error in rule |Error in group |RuleException)")
TIMESTAMP = re.compile(r"^\[\w{3} \w{3} +\d+ [\d:]+ \d{4}\]$")
