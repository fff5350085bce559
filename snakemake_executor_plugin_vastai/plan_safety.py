"""What keeps ``plan`` a plan: it must never run, touch or delete anything.

``plan`` starts the real ``snakemake`` with the user's arguments, so an argument that
turns that into something else (another executor, ``--touch``, ``--delete-all-output``,
``--unlock``, ...) would do it for real. :func:`refusal` reads the arguments with
Snakemake's own parser (abbreviations, bundled short flags and profiles included, so
nothing slips through by spelling) and names the first one that is not a plain run.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

# Snakemake's argparse dests that make it do something other than run the workflow
# with the chosen executor: changing files, metadata, locks or environments, or only
# reporting (which never creates our executor, so there would be no plan either).
NOT_A_RUN = (
    "dryrun", "touch", "delete_all_output", "delete_temp_output", "unlock",
    "cleanup_metadata", "cleanup_shadow", "conda_cleanup_envs", "conda_create_envs_only",
    "container_cleanup_images", "edit_notebook", "draft_notebook", "generate_unit_tests",
    "archive", "report", "export_cwl", "containerize", "lint", "list_rules",
    "list_target_rules", "dag", "rulegraph", "filegraph", "d3dag", "summary",
    "detailed_summary", "list_changes", "list_input_changes", "list_params_changes",
    "list_untracked", "list_conda_envs", "print_compilation", "mode",
)
EXECUTOR = "vastai"


class ArgumentsUnreadable(Exception):
    """Snakemake's parser rejected the arguments; ``str()`` is what it printed."""


def refusal(argv: list[str]) -> str | None:
    """Why these snakemake arguments cannot be planned (naming the argument), or None."""
    parser, args = parse(argv)
    executor = getattr(args, "executor", None)
    if executor not in (None, EXECUTOR):
        return (f"--executor {executor} would run the workflow with that executor instead of "
                f"planning it: plan always plans the {EXECUTOR} executor; drop '--executor "
                f"{executor}' (from the command line or the profile)")
    for action in parser._actions:  # argparse has no public list of its actions
        if action.dest in NOT_A_RUN and getattr(args, action.dest, None) != action.default:
            name = max(action.option_strings, key=len)
            what = ("plan is a dry run already" if action.dest == "dryrun"
                    else "it would make snakemake do that instead of planning a run")
            return (f"{name} cannot be combined with plan: {what}; drop {name} "
                    "(from the command line or the profile)")
    return None


def parse(argv: list[str]) -> tuple[Any, Any]:
    """Snakemake's own reading of the arguments, profiles included (quietly)."""
    from snakemake.cli import parse_args

    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said), contextlib.redirect_stdout(said):
            return parse_args(argv)
    except SystemExit:
        raise ArgumentsUnreadable(said.getvalue()) from None


def snakemake_argv(args: list[str]) -> list[str]:
    """The command ``plan`` runs: ``--executor vastai`` goes last, so argparse (which keeps
    the last value) takes it whatever the arguments say; before a ``--`` if there is one,
    which would make it a target."""
    cut = args.index("--") if "--" in args else len(args)
    return ["-m", "snakemake", *args[:cut], "--executor", EXECUTOR, *args[cut:]]
