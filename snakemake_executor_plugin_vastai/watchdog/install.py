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


def start_lines(api_url: str, orphan_timeout: float) -> str:
    """Shell lines that unpack the agent and start it detached from the start script."""
    unpack = ("import base64,sys,zlib;open(sys.argv[2],'wb').write("
              "zlib.decompress(base64.b64decode(sys.argv[1])))")
    agent = f"$HOME/{STATE_DIR}/agent.py"
    return "\n".join([
        f'mkdir -p "$HOME/{STATE_DIR}"',
        'PY=$(command -v python3 || command -v python)',
        f'if [ -n "$PY" ] && "$PY" -c {shlex.quote(unpack)} {packed_agent()} "{agent}"; then',
        f'  (nohup "$PY" "{agent}" {shlex.quote(api_url)} {orphan_timeout:g} '
        f'>> "$HOME/{STATE_DIR}/log" 2>&1 < /dev/null &)',
        "fi",
    ])
