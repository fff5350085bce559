"""Putting the watchdog (``agent.py``) on an instance: the shell lines of its start script.

Vast.ai limits ``onstart`` to 4,048 characters, so the agent travels without its
docstrings, compressed and base64-encoded, and is unpacked with the image's own Python
(``python3``, else ``python``) into ``~/.vastai-watchdog/agent.py``. Nothing secret is in
these lines: the agent finds its key in its own environment.
"""

from __future__ import annotations

import ast
import base64
import functools
import shlex
import zlib
from pathlib import Path

ONSTART_LIMIT = 4048  # characters Vast.ai accepts in ``onstart``
STATE_DIR = ".vastai-watchdog"  # below $HOME on the instance
HEARTBEAT = f"{STATE_DIR}/heartbeat"
STOPPED_AT = f"{STATE_DIR}/stopped_at"  # when the agent stopped the instance, by its clock


def stopped_age_command() -> str:
    """Print the seconds since the agent stopped this instance (its own clock: no skew),
    then forget it; nothing if it never did. The run, back, counts that time as storage
    (costs/ledger.py) although it saw the stop only when it came back."""
    return (f'f="$HOME/{STOPPED_AT}"; if [ -f "$f" ]; then '
            'awk -v now="$(date +%s.%N)" \'{print now - $1}\' "$f"; rm -f "$f"; fi')


@functools.cache
def packed_agent() -> str:
    """``agent.py`` without docstrings, zlib-compressed, base64 (ASCII, no quoting needs)."""
    tree = ast.parse(Path(__file__).with_name("agent.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    source = ast.unparse(tree).encode("utf-8")
    return base64.b64encode(zlib.compress(source, 9)).decode("ascii")


AGENT = f"$HOME/{STATE_DIR}/agent.py"
LOG = f"$HOME/{STATE_DIR}/log"


def unpack_lines() -> str:
    """Unpack the agent; ``$PY`` is the image's Python, ``$WD`` is 1 once the agent is
    in place (an image without Python runs no watchdog, and no job either)."""
    unpack = ("import base64,sys,zlib;open(sys.argv[2],'wb').write("
              "zlib.decompress(base64.b64decode(sys.argv[1])))")
    return "\n".join([
        f'mkdir -p "$HOME/{STATE_DIR}"',
        "PY=$(command -v python3 || command -v python); WD=",
        f'if [ -n "$PY" ] && "$PY" -c {shlex.quote(unpack)} {packed_agent()} "{AGENT}"; then',
        "  WD=1",
        "fi",
    ])


def start_lines(api_url: str, orphan_timeout: float) -> str:
    """SSH mode: one Python process, detached from the start script, writes the agent out
    (for a look at it on the instance) and runs it: every instance pays one interpreter
    start for its watchdog, not two."""
    run = ("import base64,sys,zlib;s=zlib.decompress(base64.b64decode(sys.argv[1]));"
           "p=sys.argv[2];open(p,'wb').write(s);sys.argv=sys.argv[2:];"
           "exec(compile(s,p,'exec'))")
    return "\n".join([
        f'mkdir -p "$HOME/{STATE_DIR}"',
        "PY=$(command -v python3 || command -v python)",
        f'if [ -n "$PY" ]; then (nohup "$PY" -c {shlex.quote(run)} {packed_agent()} '
        f'"{AGENT}" {shlex.quote(api_url)} {orphan_timeout:g} >> "{LOG}" 2>&1 '
        "< /dev/null &); fi",
    ])


def storage_job_lines(api_url: str, orphan_timeout: float, max_runtime: float,
                      job: str) -> str:
    """Storage mode: run ``job`` (a subshell) in its own process group under the agent's
    eye, print nothing of its own, leave the job's exit status in ``$rc``."""
    tick = min(30.0, max(orphan_timeout / 10.0, 1.0))
    url = shlex.quote(api_url)
    return "\n".join([
        unpack_lines(),
        "set -m",  # the job gets a process group of its own: the agent may end it whole
        f"{job} &",
        "job=$!",
        f'if [ -n "$WD" ]; then ("$PY" "{AGENT}" {url} {orphan_timeout:g} {tick:g} --job '
        f'"$job" {max_runtime:.0f} >> "{LOG}" 2>&1 < /dev/null &); fi',
        'wait "$job"',
        "rc=$?",
        "set +m",
    ])


def storage_end_line(api_url: str, pickup: float) -> str:
    """Storage mode, after the exit line: a job that succeeded waits ``pickup`` seconds for
    the run, then the instance destroys itself; a failed one stops it (agent.job_ended)."""
    return (f'if [ -n "$WD" ]; then "$PY" "{AGENT}" {shlex.quote(api_url)} --ended "$rc" '
            f'{pickup:g} >> "{LOG}" 2>&1 < /dev/null; fi')
