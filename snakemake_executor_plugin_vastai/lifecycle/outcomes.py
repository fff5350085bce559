"""How a job step ends other than by its trigger, and the messages that say why.

Steps raise :class:`JobFailure` (the message is for the user) or
:class:`JobCancelled`; the driver's loop turns them into the ``fail`` and
``cancel`` triggers, which lead through ``destroying``. Shared by the driver
and every transport.
"""

from __future__ import annotations

import os
import re
import signal

CRASH_ENV = "SNAKEMAKE_VASTAI_CRASH_AT"
CRASH_POINTS = ("after_rent_intent", "after_create", "after_launch", "after_download",
                "after_destroy_request", "after_give_back")


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
    """The end of a job's log, indented, for the error Snakemake shows."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            handle.seek(max(handle.tell() - 8192, 0))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    tail = text.splitlines()[-lines:]
    return ("\n    " + "\n    ".join(tail)) if tail else ""
