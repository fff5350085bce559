"""Run leases: which earlier runs are provably dead, so their leftovers may be touched.

Snakemake lets two runs work in one directory at once (on disjoint targets),
so "a run that did not end" is not the same as "a run that crashed". A run's
lease is its journaled ``pid``, ``hostname``, ``pid_started_at`` (the process's
start time, which tells a reused pid apart) and ``heartbeat_at`` (refreshed
every :data:`HEARTBEAT_EVERY` seconds while it lives). Reconcile and cleanup
only take over the jobs and instances of runs that are *provably* dead:

- the run recorded its end; or
- its heartbeat is older than :data:`STALE_AFTER` (on any host: a container or
  CI pod that gets a new hostname at every start is covered too); or
- it ran on this host and its pid is gone, or now belongs to a process that
  started at another time (for runs journaled before heartbeats and start
  times: a process younger than the run).

A run on another host whose heartbeat is fresh is left alone (and said so);
``journal cleanup --force`` is the explicit way out.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

PID_START_TOLERANCE = 1.0  # seconds; create_time is rounded differently across calls
HEARTBEAT_EVERY = 30.0  # seconds between a live run's heartbeats
STALE_AFTER = 600.0  # a heartbeat this old proves the run dead, whatever its host


def process_start_time(pid: int | None = None) -> float | None:
    """When the process started (epoch seconds), or None if it does not exist."""
    import psutil

    try:
        return float(psutil.Process(os.getpid() if pid is None else int(pid)).create_time())
    except (psutil.Error, ValueError, TypeError):
        return None


def this_host() -> str:
    return socket.gethostname()


def is_provably_dead(run: dict[str, Any], now: float | None = None) -> bool:
    """True if the run ended, its heartbeat is stale, or its process on this host is gone
    (see the module docstring)."""
    if run.get("ended_at") is not None:
        return True
    beat = run.get("heartbeat_at")
    if beat is not None and (time.time() if now is None else now) - float(beat) > STALE_AFTER:
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
    if recorded is None:  # journaled before leases: a younger process is not the run
        return started > float(run.get("started_at") or 0.0) + PID_START_TOLERANCE
    return abs(started - float(recorded)) > PID_START_TOLERANCE


def is_live(run: dict[str, Any]) -> bool:
    """True while the run has no end and its own process still runs on this host."""
    return (run.get("ended_at") is None and run.get("hostname") == this_host()
            and not is_provably_dead(run))
