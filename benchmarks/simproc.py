"""The simulator in a process of its own, with a timestamped log of every API request.

Why a separate process: the simulator runs every instance's SSH server and the
REST API in Python threads. In the benchmark's own process they would compete
with the benchmark (and, for the transfer figure, with the paramiko client) for
one GIL, and the plugin would look slower than it is. A separate process gives
the simulator its own interpreter, as a real Vast.ai would be.

Why a request log: the simulator's ground truth counts requests per endpoint but
does not say when they came or which were first pages of a listing. The server
side here wraps the API's request handler to append one JSON line per request
(arrival epoch time, method, path with query, answered status) to a file that
the client reads back.

Why the job's Python runs under SCHED_IDLE: every simulated instance runs its
job (a remote ``python -m snakemake``, ~1.5 CPU-seconds) on this same 2-core
machine. With 200 of them at normal priority, the orchestrator under test, the
simulated service and the instances' own small control commands (tar, the
launch shell, the log follower) all starve for CPU that, on Vast.ai, the jobs
would never take from them: each instance is its own machine. So the server
puts a directory first on every instance's PATH whose ``python`` is
``exec chrt --idle 0 <this interpreter>``: the job's Python processes run on
whatever CPU is left, everything else as before (``python3``, which the
plugin's log follower prefers, is not wrapped). The job command's time on the
instance is measured there and is part of the floor either way.

Server side: ``python -m benchmarks.simproc --request-log PATH [--boot-delay S]
[--rate-limit S] [--offers FILE] [--state-dir DIR] [--job-priority idle|normal]`` prints
one JSON line ``{"url", "api_key", "pid"}`` and serves until SIGTERM/SIGINT. Client side:
:class:`SimProcess`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0


# --------------------------------------------------------------------------- server side


def _install_request_log(path: Path) -> None:
    """Wrap the simulator API's handler so every request is logged with its arrival time."""
    from snakemake_executor_plugin_vastai.simulator import api

    lock = threading.Lock()
    out = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 -- lives with the process
    original = api.App.handle

    def handle(self: Any, h: Any) -> None:
        arrived, answered = time.time(), []
        send_response = h.send_response

        def record(code: int, *rest: Any) -> None:
            answered.append(code)
            send_response(code, *rest)

        h.send_response = record
        try:
            original(self, h)
        finally:  # the arrival time, and the status (None: no answer, e.g. a dropped call)
            line = json.dumps({"t": arrived, "method": h.command, "path": h.path,
                               "status": answered[0] if answered else None})
            with lock:
                out.write(line + "\n")

    api.App.handle = handle  # type: ignore[method-assign]


IDLE_PYTHON = """#!/bin/sh
# benchmarks: the job's Python gets only CPU nobody else wants (see simproc.py)
exec chrt --idle 0 {python} "$@"
"""


def _install_idle_job_python(bin_dir: Path) -> None:
    """Put a SCHED_IDLE ``python`` first on PATH of every instance process."""
    from snakemake_executor_plugin_vastai.simulator import sandbox, sshd

    bin_dir.mkdir(parents=True, exist_ok=True)
    wrapper = bin_dir / "python"
    wrapper.write_text(IDLE_PYTHON.format(python=sys.executable))
    wrapper.chmod(0o755)
    original = sandbox.sandbox_env

    def sandbox_env(*args: Any, **kwargs: Any) -> dict[str, str]:
        env = original(*args, **kwargs)
        env["PATH"] = f"{bin_dir}:{env['PATH']}"
        return env

    sandbox.sandbox_env = sandbox_env  # type: ignore[assignment]
    sshd.sandbox_env = sandbox_env  # type: ignore[attr-defined]


def serve(argv: list[str] | None = None) -> int:
    """Run a simulator until SIGTERM/SIGINT; print its URL and key as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--request-log", type=Path, required=True)
    parser.add_argument("--boot-delay", type=float, default=0.3)
    parser.add_argument("--rate-limit", type=float, default=0.0,
                        help="min seconds between calls per endpoint and key (0: none)")
    parser.add_argument("--documented-intervals", action="store_true",
                        help="the per-endpoint intervals of Vast.ai's description (4.5 s "
                             "create, ...); --rate-limit for the other endpoints")
    parser.add_argument("--offers", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--state-dir", type=Path, help="instance sandboxes (default: a temp dir)")
    parser.add_argument("--job-priority", choices=("idle", "normal"), default="idle")
    parser.add_argument("--boot-range", type=float, nargs=2, metavar=("LO", "HI"),
                        help="boots drawn per instance (seeded) from LO..HI seconds")
    args = parser.parse_args(argv)
    _install_request_log(args.request_log)
    if args.job_priority == "idle" and shutil.which("chrt"):
        _install_idle_job_python(args.request_log.parent / "idle-bin")
    from snakemake_executor_plugin_vastai.simulator.api import DOCUMENTED_INTERVALS
    from snakemake_executor_plugin_vastai.simulator.server import SimConfig, Simulator

    intervals = dict(DOCUMENTED_INTERVALS) if args.documented_intervals else {}
    sim = Simulator(SimConfig(seed=args.seed, boot_delay=args.boot_delay, offers=args.offers,
                              state_dir=args.state_dir, rate_limit_interval=args.rate_limit,
                              rate_limit_intervals=intervals,
                              boot_delay_range=tuple(args.boot_range) if args.boot_range
                              else None))
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    parent = os.getppid()
    sim.start()
    print(json.dumps({"url": sim.url, "api_key": sim.api_key, "pid": os.getpid()}), flush=True)
    try:
        # Also stop when the benchmark that started us is gone (killed by a timeout, say):
        # a simulator in its own session would otherwise outlive it with all its instances.
        while not done.wait(0.5) and os.getppid() == parent:
            pass
    finally:
        sim.stop()
    return 0


# --------------------------------------------------------------------------- client side


class SimProcess:
    """A simulator running in a child process; ``truth()`` and ``requests()`` read it."""

    def __init__(self, workdir: Path, *, boot_delay: float = 0.3,
                 offers: Path | None = None, job_priority: str = "idle",
                 state_dir: Path | None = None, rate_limit: float = 0.0,
                 boot_range: tuple[float, float] | None = None,
                 documented: bool = False) -> None:
        self.workdir = workdir
        self.documented = documented  # the description's per-endpoint intervals
        self.state_dir = state_dir
        self.boot_delay = boot_delay
        self.rate_limit = rate_limit
        self.offers = offers
        self.job_priority = job_priority
        self.boot_range = boot_range
        self.log_path = workdir / "sim-requests.jsonl"
        self.url = ""
        self.api_key = ""
        self.pid = 0
        self._proc: subprocess.Popen[str] | None = None

    def start(self) -> SimProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "benchmarks.simproc", "--request-log", str(self.log_path),
                "--boot-delay", str(self.boot_delay), "--rate-limit", str(self.rate_limit),
                "--job-priority", self.job_priority]
        if self.offers is not None:
            argv += ["--offers", str(self.offers)]
        if self.state_dir is not None:
            argv += ["--state-dir", str(self.state_dir)]
        if self.boot_range is not None:
            argv += ["--boot-range", *(str(x) for x in self.boot_range)]
        if self.documented:
            argv.append("--documented-intervals")
        stderr = open(self.workdir / "sim-stderr.log", "w")  # noqa: SIM115 -- child owns it
        self._proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=stderr,
                                      text=True, start_new_session=True)
        stderr.close()
        line = _read_line(self._proc, START_TIMEOUT)
        info = json.loads(line)
        self.url, self.api_key, self.pid = info["url"], info["api_key"], int(info["pid"])
        return self

    def stop(self) -> None:
        """SIGTERM (the simulator stops every instance and process), SIGKILL as last resort."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> SimProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def get(self, path: str, timeout: float = 30.0) -> Any:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=timeout) as answer:
            return json.loads(answer.read())

    def call(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
        """An authenticated API call (for the transfer figure, which rents by hand)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.url}{path}", data=data, method=method,
            headers={"Authorization": f"Bearer {self.api_key}",
                     "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return json.loads(answer.read() or b"null")

    def truth(self) -> dict[str, Any]:
        return self.get("/_sim/truth")

    def requests(self) -> list[dict[str, Any]]:
        """Logged API requests (``/_sim/`` control calls left out), oldest first."""
        rows = []
        with open(self.log_path, encoding="utf-8") as handle:
            for line in handle:
                row = json.loads(line)
                path = urlsplit(row["path"]).path
                if path.startswith("/_sim/") and not path.startswith("/_sim/logs/"):
                    continue
                row["route"], row["query"] = path, urlsplit(row["path"]).query
                rows.append(row)
        return sorted(rows, key=lambda r: r["t"])  # logged when answered, listed by arrival

    def thread_count(self) -> int:
        """Threads of the simulator process (to tell its load from the plugin's)."""
        return _status_field(self.pid, "Threads")


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The child's first stdout line, or an error with its stderr if it never comes."""
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not box or not box[0].strip():
        proc.kill()
        raise RuntimeError(f"the simulator did not start within {timeout:.0f} s")
    return box[0]


def _status_field(pid: int, name: str) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(serve())
