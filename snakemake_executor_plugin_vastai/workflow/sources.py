"""The workflow's source files: what the run's source archive is built from.

The same set of files Snakemake's own ``DAG.get_sources`` lists (the Snakefile and its
includes, config files, ``script:``/``notebook:`` files and their directories, local
conda environment files, and every git-tracked file; Snakemake then leaves out files
over 10 MB), with one difference that matters: git is asked for NUL-separated names
(``git ls-files -z``). Snakemake reads
git's default output, which quotes any name holding a space-adjacent oddity such as
non-ASCII characters, quotes or backslashes (``"h\\303\\251llo.txt"``), and then fails to
find the quoted name on disk. Here any name POSIX and git allow is packed as it is.

Names with a newline are refused before anything is rented (:func:`newline_paths`): the
remote Snakemake would receive them on a command line and in shell commands, where a
newline ends the word.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any


class SourcesError(RuntimeError):
    """The workflow's sources cannot be listed (git missing or failing)."""


def git_files(workdir: Path, *extra: str) -> list[str]:
    """``git ls-files -z`` below ``workdir`` (``extra`` adds options), names as git stores
    them, relative to ``workdir``."""
    try:
        done = subprocess.run(["git", "ls-files", "-z", *extra, "--", "."], cwd=workdir,
                              capture_output=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        raise SourcesError(f"git is needed to list the workflow's sources ({exc})") from None
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", "replace").strip()
        raise SourcesError(f"'git ls-files' failed in {workdir}: {message}")
    return [os.fsdecode(name) for name in done.stdout.split(b"\0") if name]


def in_git(workdir: Path) -> bool:
    """Is ``workdir`` inside a git work tree (and git installed)?"""
    try:
        done = subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], cwd=workdir,
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0 and done.stdout.strip() == "true"


def registered_sources(workflow: Any) -> set[str]:
    """What Snakemake itself records as sources (see ``DAG.get_sources``), minus git."""
    from snakemake.common import is_local_file
    from snakemake.sourcecache import LocalSourceFile, SourceFile

    def local_path(f: Any) -> str | None:
        if isinstance(f, LocalSourceFile):
            return f.get_path_or_uri(secret_free=True)
        if not isinstance(f, SourceFile) and is_local_file(f):
            return str(f)
        return None

    def rule_relative(f: str, rule: Any) -> str:
        return os.path.relpath(f if os.path.isabs(f) else rule.basedir.join(f))

    files: set[str] = set()
    for f in workflow.included:
        path = local_path(f)
        if path:
            files.add(os.path.relpath(path))
    for rule in workflow.rules:
        script = rule.script or rule.notebook
        if script:
            script = rule_relative(script, rule)
            files.add(script)
            for dirpath, _dirs, names in os.walk(os.path.dirname(script)):
                files.update(os.path.join(dirpath, n) for n in names)
    for job in workflow.dag.jobs:
        spec = getattr(job, "conda_env_spec", None)
        if spec is not None and spec.is_file:
            path = local_path(spec.file)
            if path:
                files.add(rule_relative(path, job.rule))
    for f in workflow.configfiles:
        files.add(os.path.relpath(f))
    return files


def source_files(workflow: Any, workdir: Path) -> list[str]:
    """Every source file, relative to ``workdir``, sorted; submodules included. Outside
    git: what Snakemake knows to be sources, as its own remote execution ships."""
    files = registered_sources(workflow)
    if in_git(workdir):
        files.update(os.path.relpath(f) for f in git_files(workdir, "--recurse-submodules"))
    return sorted(files)


def install(workflow: Any, workdir: Path) -> None:
    """Make Snakemake's own archive builders list sources the NUL-separated way.

    Both ``write_source_archive`` (SSH mode) and ``upload_sources`` (storage mode) pack
    what ``workflow.dag.get_sources()`` returns, so the replacement goes there, on this
    workflow's DAG object only, before ``deploy.apply_scope`` narrows it.
    """
    workflow.dag.get_sources = lambda: set(source_files(workflow, workdir))


def newline_paths(paths: Iterable[str]) -> list[str]:
    """The paths holding a newline (or carriage return): they cannot travel safely."""
    return [p for p in paths if "\n" in p or "\r" in p]
