"""Our own command, spelled so that what we print runs as printed.

The plugin prints follow-up commands (the demo's next steps, the cleanup of a kept
or pending instance). ``snakemake-vastai`` is the console script ``pyproject.toml``
declares, but a bare name runs only if the shell finds this environment's script
first: with the environment not activated (``uv run``, a venv called by path) it
does not. So the bare name is printed only when the shell's ``PATH`` finds this
interpreter's script; else the script's full path; else (no script installed,
e.g. a source checkout on ``PYTHONPATH``) this interpreter with ``-m``.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path

SCRIPT = "snakemake-vastai"
MODULE = "snakemake_executor_plugin_vastai"


def own_command() -> str:
    """``snakemake-vastai``, or the spelling of it that this machine runs as printed."""
    here = Path(sys.executable).parent / SCRIPT
    found = shutil.which(SCRIPT)
    if found and here.is_file() and Path(found).resolve() == here.resolve():
        return SCRIPT
    if here.is_file():
        return shlex.quote(str(here))
    return f"{shlex.quote(sys.executable)} -m {MODULE}"


def cleanup_command(journal: Path | str) -> str:
    """The command that destroys what this workflow's journal says may still bill."""
    return f"{own_command()} journal --journal {shlex.quote(str(journal))} cleanup"
