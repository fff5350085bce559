"""Run leases: which earlier runs are provably dead, so their leftovers may be touched.

Snakemake lets two runs work in one directory at once (on disjoint targets),
so "a run that did not end" is not the same as "a run that crashed". A run's
lease is its journaled ``pid``, ``hostname`` and ``pid_started_at`` (the
process's start time, which tells a reused pid apart). Reconcile and cleanup
only take over the jobs and instances of runs that are *provably* dead:

- the run recorded its end; or
- it ran on this host and its pid is gone, or now belongs to a process that
  started at another time.

A run on another host can never be proven dead from here: its work is left
alone (and said so), and ``journal cleanup --force`` is the explicit way out.
"""

from __future__ import annotations

import os
import socket
from typing import Any

PID_START_TOLERANCE = 1.0  # seconds; create_time is rounded differently across calls


def process_start_time(pid: int | None = None) -> float | None:
    """When the process started (epoch seconds), or None if it does not exist."""
    import psutil

    try:
        return float(psutil.Process(os.getpid() if pid is None else int(pid)).create_time())
    except (psutil.Error, ValueError, TypeError):
        return None


def this_host() -> str:
    return socket.gethostname()


def is_provably_dead(run: dict[str, Any]) -> bool:
    """True if the run ended, or its process on this host is gone (see module doc)."""
    if run.get("ended_at") is not None:
        return True
    if run.get("hostname") != this_host():
        return False
    try:
        pid = int(run["pid"])
    except (KeyError, TypeError, ValueError):
        return False
    started = process_start_time(pid)
    if started is None:
        return True
    recorded = run.get("pid_started_at")
    return recorded is not None and abs(started - float(recorded)) > PID_START_TOLERANCE


def is_live(run: dict[str, Any]) -> bool:
    """True while the run has no end and its own process still runs on this host."""
    return (run.get("ended_at") is None and run.get("hostname") == this_host()
            and not is_provably_dead(run))
