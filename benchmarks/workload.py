"""The workflows the benchmarks run, and the job that times itself.

Every benchmark job runs ``python stamp.py OUTPUT SECONDS``: it sleeps SECONDS
(0 for a trivial job) and writes JSON with its own start and end time, plus
the start time of the remote ``python -m snakemake`` process it runs under
(its nearest ancestor whose command line holds ``--target-jobs``). That last
one is the start of the *job command* Snakemake handed to the executor, so
the instance-side time of the command (remote Snakemake + the rule) can be
told apart from the orchestration around it. All clocks are this machine's.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

STAMP_PY = '''\
"""Benchmark job: sleep, then record when it ran and when its job command started."""
import json
import os
import sys
import time

start = time.time()


def started_at(pid):
    """Epoch start time of a process: now minus its age (uptime - start ticks).

    Not btime + start ticks: btime is rounded to whole seconds.
    """
    with open("/proc/%d/stat" % pid, "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    with open("/proc/uptime", "rb") as f:
        uptime = float(f.read().split()[0])
    now = time.time()
    return now - (uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))


def command_start():
    """Start of the nearest ancestor running a Snakemake job command (remote mode)."""
    pid = os.getppid()
    try:
        while pid > 1:
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                args = f.read().split(b"\\0")
            if b"--target-jobs" in args:
                return started_at(pid)
            with open("/proc/%d/stat" % pid, "rb") as f:
                pid = int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, StopIteration):
        pass
    return None


seconds = float(sys.argv[2])
if seconds > 0:
    time.sleep(seconds)
end = time.time()
os.makedirs(os.path.dirname(sys.argv[1]) or ".", exist_ok=True)
with open(sys.argv[1], "w") as out:
    json.dump({"start": start, "end": end, "command_start": command_start()}, out)
'''

SNAKEFILE = '''\
N = {jobs}
SECONDS = {seconds}


rule all:
    input:
        expand("out/{{i}}.json", i=range(N)),


rule one:
    output:
        "out/{{i}}.json",{resources}
    shell:
        "python stamp.py {{output}} {{SECONDS}}"
'''


def write_workflow(root: Path, jobs: int, seconds: float = 0.0, gpus: int | None = None) -> Path:
    """``jobs`` independent jobs of ``seconds`` each, in a fresh git repository; ``gpus``:
    each job asks for that many (``resources: gpu=N``), else the plugin's default of one.

    Git matters: the plugin ships the workflow's git-tracked sources (Snakefile,
    stamp.py) to each instance.
    """
    root.mkdir(parents=True, exist_ok=True)
    resources = "" if gpus is None else f"\n    resources:\n        gpu={int(gpus)},"
    (root / "Snakefile").write_text(SNAKEFILE.format(jobs=int(jobs), seconds=float(seconds),
                                                     resources=resources))
    (root / "stamp.py").write_text(STAMP_PY)
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid"]
    subprocess.run([*git, "init", "-q"], cwd=root, check=True)
    subprocess.run([*git, "add", "Snakefile", "stamp.py"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "benchmark workflow"], cwd=root, check=True)
    return root


def read_stamp(path: Path) -> dict[str, Any] | None:
    """A job's own timing record, or None if the output is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
