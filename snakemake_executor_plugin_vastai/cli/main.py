"""``snakemake-vastai``: demo, simulate, offers, plan, journal, statechart.

The console script (``pyproject.toml``, ``[project.scripts]``) and
``python -m snakemake_executor_plugin_vastai`` both land here. Each subcommand is
a short function that hands its remaining arguments to the module that owns the
concern, so ``--help`` of each is that module's own.

Examples::

    snakemake-vastai demo
    snakemake-vastai simulate --port 0
    snakemake-vastai offers "gpu_ram>=24"
    snakemake-vastai journal jobs
    snakemake-vastai plan --jobs 4
    snakemake-vastai statechart
"""

from __future__ import annotations

import sys
from collections.abc import Callable

USAGE = """usage: snakemake-vastai COMMAND [ARGS...]
   (or: python -m snakemake_executor_plugin_vastai COMMAND [ARGS...])

commands:
  demo       run an example workflow through the plugin on the bundled simulator
  simulate   start the local Vast.ai simulator (REST API + SSH instances)
  offers     which GPU models the market has for a query: counts and $/h ranges
  journal    inspect this workflow's journal (runs, jobs, instances, cost, cleanup, timeline)
  plan       what a run would rent and cost, and what would stop it (rents nothing)
  statechart regenerate statecharts/ from the job state machine (source checkout)

'COMMAND --help' shows each command's options.
"""


def _demo(argv: list[str]) -> int:
    from .demo import main

    return main(argv)


def _simulate(argv: list[str]) -> int:
    from ..simulator.cli import main

    return main(argv)


def _offers(argv: list[str]) -> int:
    from .offers import main

    return main(argv)


def _journal(argv: list[str]) -> int:
    from .journal import main

    return main(argv)


def _plan(argv: list[str]) -> int:
    from .plan import main

    return main(argv)


def _statechart(argv: list[str]) -> int:
    try:
        from .statechart import main
    except ModuleNotFoundError as exc:  # repository tooling: not in the installed wheel
        if exc.name != f"{__package__}.statechart":
            raise
        print("statechart rewrites statecharts/ of a source checkout; run it from one",
              file=sys.stderr)
        return 2
    return main(argv)


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "demo": _demo,
    "simulate": _simulate,
    "offers": _offers,
    "journal": _journal,
    "plan": _plan,
    "statechart": _statechart,
}


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a subcommand; exit code 2 on usage errors."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if args else 2
    command = COMMANDS.get(args[0])
    if command is None:
        print(f"unknown command {args[0]!r}\n\n{USAGE}", end="", file=sys.stderr)
        return 2
    return command(args[1:])
