"""The run's source archive: the files a job needs besides its declared inputs.

The same set of files Snakemake's own ``write_source_archive`` packs (the Snakefile and
its includes, config files, ``script:``/``notebook:`` files and their directories, local
conda environment files, and every git-tracked file under 10 MB), with one difference
that matters: git is asked for NUL-separated names (``git ls-files -z``). Snakemake reads
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
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

MAX_SOURCE_BYTES = 10_000_000  # Snakemake's own limit for files in its source archive


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
    """Every source file, relative to ``workdir``, sorted; submodules included."""
    files = registered_sources(workflow)
    files.update(os.path.relpath(f) for f in git_files(workdir, "--recurse-submodules"))
    return sorted(files)


def write_archive(workflow: Any, target: Path, workdir: Path | None = None,
                  warn: Any = None) -> None:
    """Pack the sources into ``target`` (tar.xz), skipping what Snakemake skips."""
    workdir = workdir or Path(os.getcwd())
    with tarfile.open(target, "w:xz") as archive:
        for rel in packable(source_files(workflow, workdir), workdir, warn):
            archive.add(workdir / rel, arcname=rel, recursive=False)


def packable(files: Iterable[str], workdir: Path, warn: Any = None) -> list[str]:
    """Files inside the workflow directory, existing, and under the size limit."""
    kept = []
    for rel in files:
        if rel.startswith(".."):
            _say(warn, f"source file {rel!r} lies outside the workflow directory; not shipped")
            continue
        path = workdir / rel
        if not path.is_file() and not path.is_symlink():
            continue  # deleted but still in git's index, or a directory (submodule root)
        if path.stat().st_size > MAX_SOURCE_BYTES:
            _say(warn, f"source file {rel!r} is larger than 10 MB and is not shipped with the "
                       "sources; declare it as an input if a job needs it")
            continue
        kept.append(rel)
    return kept


def _say(warn: Any, message: str) -> None:
    if warn is not None:
        warn(message)


def newline_paths(paths: Iterable[str]) -> list[str]:
    """The paths holding a newline (or carriage return): they cannot travel safely."""
    return [p for p in paths if "\n" in p or "\r" in p]
