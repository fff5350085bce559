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

**Where the sources lie against the working directory** (:class:`Layout`). Snakemake's
working directory (the process's, ``--directory``, the ``workdir:`` directive, the API's
``workdir``) need not hold the sources: with ``workdir: "work"`` the Snakefile is
``../Snakefile`` and a script ``../scripts/x.py`` from there. Snakemake's own archive
writer drops every ``..`` path with a warning, so the job fails remotely. Here the
archive is rooted at the closest directory holding the working directory and every
source (the *root*); on the instance the job runs in the same place below that root
(``Layout.workdir_rel``), so every relative path the remote Snakemake is given
(``--snakefile ../Snakefile``, ``--configfiles``, scripts) means what it meant here.
Git-tracked files are listed below the directory holding both the working directory and
the main Snakefile (the workflow's tree), never higher: an absolute config path must not
make git list a whole home directory. A source that shares nothing with the working
directory but ``/`` is left out, with a warning, as Snakemake leaves out ``..`` paths.
"""

from __future__ import annotations

import os
import subprocess
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_SOURCE_BYTES = 10_000_000  # Snakemake's own limit for a shipped source file


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


@dataclass(frozen=True)
class Layout:
    """The working directory and the archive's root (see the module docstring)."""

    workdir: Path  # absolute
    root: Path  # holds the working directory and every shipped source
    tree: Path  # holds the working directory and the main Snakefile: git lists below it

    @property
    def workdir_rel(self) -> str:
        """The working directory below the root, POSIX ("" when they are the same)."""
        rel = os.path.relpath(self.workdir, self.root)
        return "" if rel == "." else rel.replace(os.sep, "/")

    def member(self, source: str) -> str | None:
        """A source (relative to the working directory, or absolute) as the archive names
        it, relative to the root; None when it lies outside the root."""
        path = os.path.normpath(os.path.join(self.workdir, source))
        if not _below(path, self.root):
            return None
        return os.path.relpath(path, self.root).replace(os.sep, "/")


def _below(path: str, directory: Path) -> bool:
    return os.path.commonpath([path, str(directory)]) == str(directory)


def layout(workflow: Any, workdir: Path) -> Layout:
    """Where the sources lie against ``workdir`` (absolute): the root is the closest
    directory holding it, the main Snakefile and every source Snakemake registered."""
    workdir = Path(os.path.abspath(workdir))
    snakefile = getattr(workflow, "main_snakefile", None)
    tree = workdir
    if snakefile:
        tree = Path(os.path.commonpath([workdir, os.path.dirname(os.path.abspath(
            os.path.join(workdir, str(snakefile))))]))
    paths = [os.path.normpath(os.path.join(workdir, f)) for f in registered_sources(workflow)]
    near = [p for p in paths if os.path.commonpath([p, str(workdir)]) != os.sep]
    root = Path(os.path.commonpath([str(tree), *near])) if near else tree
    return Layout(workdir=workdir, root=root, tree=tree)


def source_files(workflow: Any, workdir: Path) -> list[str]:
    """Every source file, relative to ``workdir``, sorted; submodules included. Outside
    git: what Snakemake knows to be sources, as its own remote execution ships."""
    files = registered_sources(workflow)
    tree = layout(workflow, workdir).tree
    if in_git(tree):
        files.update(os.path.relpath(tree / f, workdir)
                     for f in git_files(tree, "--recurse-submodules"))
    return sorted(files)


def install(workflow: Any, workdir: Path, warn: Callable[[str], None]) -> Layout:
    """Make Snakemake's archive builders list sources the NUL-separated way and pack them
    below the layout's root.

    Both SSH mode (the workspace calls ``write_source_archive``) and storage mode
    (``upload_sources`` calls it) pack what ``workflow.dag.get_sources()`` returns, so the
    listing is replaced there, on this workflow's DAG object only, before
    ``deploy.apply_scope`` narrows it; the writer is replaced on this workflow object.
    """
    where = layout(workflow, workdir)
    workflow.dag.get_sources = lambda: set(source_files(workflow, workdir))
    workflow.write_source_archive = lambda path: write_archive(
        Path(path), workflow.dag.get_sources(), where, warn)
    return where


def write_archive(path: Path, sources: Iterable[str], where: Layout,
                  warn: Callable[[str], None]) -> None:
    """The source archive (``.tar.xz``, as Snakemake writes it), members relative to the
    root. Files over 10 MB and files outside the root are left out, each with a warning
    saying what to do instead, as Snakemake's own writer does."""
    with tarfile.open(path, "w:xz") as archive:
        for source in sorted(sources):
            name = where.member(source)
            if name is None:
                warn(f"the source file {source} lies outside the workflow's directories "
                     f"({where.root}) and is not shipped; declare it as an input of the "
                     "rules that read it")
                continue
            full = where.root / name
            if not full.exists() and not full.is_symlink():
                continue  # tracked by git, deleted here: nothing a job can need
            if full.is_file() and full.stat().st_size > MAX_SOURCE_BYTES:
                warn(f"the source file {source} is over 10 MB and is not shipped; declare "
                     "it as an input of the rules that read it")
                continue
            archive.add(str(full), arcname=name)


UNSHIPPED_LOOKED_AT = 10_000  # files: a data folder must not stall the start


def unshipped_files(tree: Path, registered: Iterable[str], workdir: Path) -> list[str]:
    """Outside git: the files below ``tree`` that git would have shipped and Snakemake's
    own sources do not hold (Snakemake's and hidden folders skipped), relative to
    ``workdir``, sorted; the walk stops after a bounded number of files."""
    known = {os.path.normpath(os.path.join(workdir, f)) for f in registered}
    left: list[str] = []
    looked = 0
    for dirpath, dirs, names in os.walk(tree):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            looked += 1
            if looked > UNSHIPPED_LOOKED_AT:
                return left
            path = os.path.join(dirpath, name)
            if not name.startswith(".") and path not in known:
                left.append(os.path.relpath(path, workdir))
    return left


def newline_paths(paths: Iterable[str]) -> list[str]:
    """The paths holding a newline (or carriage return): they cannot travel safely."""
    return [p for p in paths if "\n" in p or "\r" in p]
