"""What keeps ``plan`` a plan: it must never run, touch, delete or overwrite anything.

``plan`` starts the real ``snakemake`` with the user's arguments, so an argument that
turns that into something else (another executor, ``--touch``, ``--delete-all-output``,
``--unlock``, ...) would do it for real. :func:`refusal` reads the arguments with
Snakemake's own parser (abbreviations, bundled short flags and profiles included, so
nothing slips through by spelling) and names the first one that is not a plain run.

The executor learns it is planning from :data:`PLAN_ENV`. A variable left in a shell
must not turn a real run into a plan, nor make it write over the file it names, so
:func:`plan_directory` makes a fresh private directory holding a marker with a random
nonce (passed in :data:`NONCE_ENV`), and :func:`plan_target` accepts only that: the
marker matches, the directory is ours and private, and the plan file is created new
(``O_EXCL``, see :func:`write_new`). Anything else fails the run naming the variable,
before anything is rented.
"""

from __future__ import annotations

import contextlib
import hmac
import io
import os
import secrets
import stat
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

PLAN_ENV = "SNAKEMAKE_VASTAI_PLAN"  # the private directory the plan goes to
NONCE_ENV = "SNAKEMAKE_VASTAI_PLAN_NONCE"
MARKER = "marker"
PLAN_FILE = "plan.json"

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


class NotAPlan(Exception):
    """PLAN_ENV is set, but not by a ``plan`` that is waiting for this run."""


@contextlib.contextmanager
def plan_directory() -> Iterator[tuple[Path, dict[str, str]]]:
    """A fresh 0700 directory with the marker; yields the plan file's path and the
    environment that tells the executor to write it there."""
    with tempfile.TemporaryDirectory(prefix="vastai-plan-") as tmp:  # mkdtemp: 0700
        nonce = secrets.token_hex(16)
        write_new(Path(tmp) / MARKER, nonce)
        yield Path(tmp) / PLAN_FILE, {PLAN_ENV: tmp, NONCE_ENV: nonce}


def plan_target(environ: Mapping[str, str]) -> Path:
    """Where this run writes its plan; raises NotAPlan (naming the variable) unless
    a waiting ``plan`` set the variables."""
    directory = Path(environ[PLAN_ENV])
    if not _is_plan_directory(directory, environ.get(NONCE_ENV, "")):
        raise NotAPlan(
            f"{PLAN_ENV} is set (to {str(directory)!r}), but no 'python -m "
            "snakemake_executor_plugin_vastai plan' is waiting for this run (a variable left "
            f"in the environment?): unset {PLAN_ENV} to run the workflow. Nothing was "
            "rented and no file was written.")
    return directory / PLAN_FILE


def _is_plan_directory(directory: Path, nonce: str) -> bool:
    try:
        st = os.lstat(directory)
        marker = (directory / MARKER).read_text()
    except (OSError, UnicodeDecodeError):
        return False
    private = stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() \
        and not stat.S_IMODE(st.st_mode) & 0o077
    return private and bool(nonce) and hmac.compare_digest(marker, nonce)


def write_new(path: Path, text: str) -> None:
    """Create ``path`` with ``text``; never overwrite (or follow a link to) a file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise NotAPlan(f"{path} exists already; a plan never overwrites a file (unset "
                       f"{PLAN_ENV} to run the workflow)") from None
    with os.fdopen(fd, "w") as out:
        out.write(text)
