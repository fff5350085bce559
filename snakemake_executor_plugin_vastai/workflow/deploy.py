"""Scoped source shipping: which of the workflow's source files travel to the instances.

Snakemake's source archive (uploaded to every instance in SSH mode, put in the
bucket once in storage mode) holds the Snakefile and what it includes, config
files, ``script:``/``notebook:`` files with their directories, conda environment
files, and every git-tracked file under 10 MB. In a monorepo that is mostly files
no job reads, compressed and shipped to every instance.

A rule's ``deploy`` resource and ``--vastai-deploy-paths`` narrow it, with the
meaning they have in the published 0.1.4 plugin. Each is a comma-separated list
of paths or globs relative to the working directory (``train.py,scripts/**``).
The run ships the union of the option and the ``deploy`` of every job in the
DAG; when none is given, nothing is narrowed.

A pattern selects a source path (POSIX, relative to the working directory) that

- equals it;
- matches it as an ``fnmatch`` glob, where ``*`` also crosses ``/`` (so ``*.py``
  matches ``lib/a.py`` and ``scripts/**`` everything below ``scripts/``), as in 0.1.4;
- names a directory above it (``scripts`` or ``scripts/``).

Always shipped, whatever the patterns, because without them the workflow does
not load remotely or a job cannot start:

- every file Snakemake loaded (the Snakefile, ``include:`` files, local modules);
- any tracked file named ``Snakefile`` or ending in ``.smk`` (as in 0.1.4);
- config files (``configfile:`` and ``--configfile``);
- each rule's ``script:``/``notebook:`` file and each job's ``conda:`` file. 0.1.4
  dropped these unless a pattern named them; here they always go, but not the
  rest of their directory (list sibling modules a script imports).

A pattern that selects no source file is an error naming the option or rule:
a typo, or a file git does not track, would otherwise only show on the instance.

The functions above the ``Snakemake side`` line are pure; the ones below read
Snakemake's workflow object and install the scope where the archive is built.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from .validation import ConfigError, deploy_patterns, is_pending, option, resource

RESOURCE = "deploy"
OPTION = "deploy_paths"


@dataclass(frozen=True)
class Scope:
    """The union of all deploy patterns, each with who asked for it (for messages)."""

    patterns: tuple[str, ...] = ()
    origins: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def narrows(self) -> bool:
        """False when nobody gave a pattern: then everything ships, as before."""
        return bool(self.patterns)


def collect_scope(option_value: object, job_values: Iterable[tuple[str, object]]) -> Scope:
    """Union of ``--vastai-deploy-paths`` and every job's ``deploy`` resource.

    ``job_values`` holds (rule, value) for each job; None means the rule has no
    ``deploy``. A value Snakemake has not evaluated yet (it depends on input
    files that do not exist) is an error: the archive is built once, before
    those files appear.
    """
    origins: dict[str, list[str]] = {}
    named = [(option(OPTION), option_value)] if option_value is not None else []
    for rule, value in job_values:
        if value is None:
            continue
        culprit = resource(rule, RESOURCE)
        if is_pending(value):
            raise ConfigError(
                f"{culprit} depends on input files that do not exist yet; the source "
                "archive is built once, at the start of the run, so give deploy as a "
                "fixed string, e.g. deploy='train.py,scripts/**'"
            )
        named.append((culprit, value))
    for culprit, value in named:
        for pattern in deploy_patterns(value, culprit):
            who = origins.setdefault(pattern, [])
            if culprit not in who:
                who.append(culprit)
    return Scope(tuple(origins), {p: tuple(w) for p, w in origins.items()})


def matches(path: str, pattern: str) -> bool:
    """Whether ``pattern`` selects the source ``path`` (see the module docstring)."""
    directory = pattern.rstrip("/")
    return (
        path == pattern
        or fnmatchcase(path, pattern)
        or (bool(directory) and path.startswith(directory + "/"))
    )


def defines_workflow(path: str) -> bool:
    """A file named ``Snakefile`` or ending in ``.smk``: always shipped (as in 0.1.4)."""
    return posixpath.basename(path) == "Snakefile" or path.endswith(".smk")


def select(sources: Iterable[str], scope: Scope, pinned: Iterable[str] = ()) -> list[str]:
    """The sources to ship: all of them if the scope does not narrow, else the
    pinned files, the workflow definitions and what a pattern selects. Order kept."""
    sources = list(sources)
    if not scope.narrows:
        return sources
    keep = {normalise(p) for p in pinned}
    return [
        s for s in sources
        if normalise(s) in keep or defines_workflow(normalise(s))
        or any(matches(normalise(s), p) for p in scope.patterns)
    ]


def check_every_pattern_matches(scope: Scope, sources: Iterable[str]) -> None:
    """Raise ConfigError naming the first option/rule whose pattern selects nothing."""
    paths = [normalise(s) for s in sources]
    for pattern in scope.patterns:
        if any(matches(p, pattern) for p in paths):
            continue
        culprits = scope.origins.get(pattern, ())
        who = culprits[0] if culprits else option(OPTION)
        more = f" (also given by {', '.join(culprits[1:])})" if len(culprits) > 1 else ""
        raise ConfigError(
            f"{who}: {pattern!r} selects no file of the workflow's sources{more}. Only "
            "files git tracks (and the Snakefile, includes, config and script files) "
            "are shipped: check the spelling, 'git add' the file (no commit needed), "
            "or declare data a job reads as its input:"
        )


def normalise(path: str) -> str:
    """A source path as the patterns see it: POSIX separators, no ``./``."""
    return posixpath.normpath(path.replace(os.sep, "/"))


# -- Snakemake side ----------------------------------------------------------------------
def job_deploy_values(workflow: Any) -> list[tuple[str, object]]:
    """(rule, deploy resource) of every job in the DAG, as 0.1.4 read them."""
    values = []
    for job in workflow.dag.jobs:
        for single in (job.jobs if job.is_group() else [job]):
            values.append((str(single.rule.name), single.resources.get(RESOURCE)))
    return values


def pinned_sources(workflow: Any) -> set[str]:
    """Files without which the workflow does not load or a job cannot start."""
    pinned = {_relative(p) for p in map(_local_path, getattr(workflow, "included", ())) if p}
    pinned.update(_relative(str(p)) for p in getattr(workflow, "configfiles", ()) or ())
    for rule in workflow.rules:
        for attr in ("script", "notebook"):
            path = _rule_path(getattr(rule, attr, None), rule)
            if path:
                pinned.add(_relative(path))
    for job in workflow.dag.jobs:
        spec = getattr(job, "conda_env_spec", None)
        if spec is not None and getattr(spec, "is_file", False):
            path = _rule_path(_local_path(spec.file), job.rule)
            if path:
                pinned.add(_relative(path))
    return {normalise(p) for p in pinned}


def _local_path(source: Any) -> str | None:
    """A local file's path from a str or one of Snakemake's SourceFile objects."""
    if source is None:
        return None
    if isinstance(source, str | os.PathLike) and not hasattr(source, "get_path_or_uri"):
        return os.fspath(source)
    is_local = getattr(source, "is_local", False)  # a property in Snakemake 9
    if callable(is_local):
        is_local = is_local()
    if is_local and hasattr(source, "get_path_or_uri"):
        return str(source.get_path_or_uri(secret_free=True))
    return None


def _rule_path(path: Any, rule: Any) -> str | None:
    """A path a rule names, relative paths resolved against the rule's own directory."""
    local = _local_path(path)
    if not local:
        return None
    if os.path.isabs(local):
        return local
    basedir = getattr(rule, "basedir", None)
    return _local_path(basedir.join(local)) if basedir is not None else local


def _relative(path: str) -> str:
    return os.path.relpath(path)


def apply_scope(workflow: Any, option_value: object,
                report: Callable[[int, int, Scope], None] | None = None) -> Scope:
    """Check the deploy patterns and make Snakemake's source archive honour them.

    Snakemake builds the archive from ``workflow.dag.get_sources()`` in both SSH
    mode (``write_source_archive``) and storage mode (``upload_sources``), so the
    scope is installed there, on this workflow's DAG object only. Raises
    ConfigError before anything is rented when a pattern selects nothing.
    ``report(shipped, total, scope)`` is called each time the archive is built.
    """
    scope = collect_scope(option_value, job_deploy_values(workflow))
    if not scope.narrows:
        return scope
    dag = workflow.dag
    everything: Callable[[], Iterable[str]] = dag.get_sources
    check_every_pattern_matches(scope, everything())
    pinned = pinned_sources(workflow)

    def scoped_sources() -> list[str]:
        sources = list(everything())
        kept = select(sources, scope, pinned)
        if report is not None:
            report(len(kept), len(sources), scope)
        return kept

    dag.get_sources = scoped_sources
    return scope
