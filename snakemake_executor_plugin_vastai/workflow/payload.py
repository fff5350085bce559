"""What a job sends to its instance and what it may bring back.

Pure functions over a Snakemake job: the files to upload (the run's source
archive and the job's declared inputs), the paths allowed to come home (its
declared outputs, logs and benchmark), the shell script that runs it remotely,
and the environment forwarded to it. (Who a job is across runs:
``fingerprint.py``.)
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Relative to the remote $HOME: /root on Vast.ai images, the sandbox in the
# simulator. Each instance serves exactly one job, so one fixed name suffices.
REMOTE_DIR = "vastai-job"
SOURCES_MEMBER = ".vastai/sources.tar.xz"

# Local credentials forwarded into jobs (values go to a 0600 env file on the
# instance, never into a command line).
FORWARDED_PREFIXES = ("AWS_", "AZURE_STORAGE_")


class PayloadError(ValueError):
    """A job cannot be shipped as declared (e.g. an input outside the workdir)."""


@dataclass(frozen=True)
class Shipment:
    """Files for one job's upload: (local path, path relative to the remote job dir)."""

    files: list[tuple[Path, str]]
    total_bytes: int


def relative_inside(path: str, workdir: Path, what: str, rule: str) -> str:
    """``path`` relative to ``workdir``; refuse paths that would escape it."""
    p = Path(path)
    absolute = p if p.is_absolute() else workdir / p
    try:
        rel = Path(os.path.normpath(absolute)).relative_to(workdir)
    except ValueError:
        raise PayloadError(
            f"rule {rule}: {what} {path!r} lies outside the workflow directory {workdir}; "
            "only files below it can be shipped to a Vast.ai instance"
        ) from None
    return rel.as_posix()


def shipment(inputs: Iterable[str], workdir: Path, rule: str,
             source_archive: Path | None) -> Shipment:
    """The upload for one job: the source archive plus every declared input."""
    files: list[tuple[Path, str]] = []
    if source_archive is not None:
        files.append((source_archive, SOURCES_MEMBER))
    seen: set[str] = set()
    for item in inputs:
        rel = relative_inside(str(item), workdir, "input", rule)
        if rel in seen:
            continue
        seen.add(rel)
        local = workdir / rel
        if not local.exists():
            raise PayloadError(f"rule {rule}: input {item!r} does not exist locally")
        files.append((local, rel))
    total = sum(_size(path) for path, _ in files)
    return Shipment(files=files, total_bytes=total)


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


@dataclass(frozen=True)
class Homecoming:
    """Paths a job may bring back: declared files and declared directories.

    ``optional`` paths may be missing on the instance without failing the download: a
    group's temp() outputs that the group itself consumed (its remote Snakemake deletes
    them, and the local one does not expect them).
    """

    files: list[str]
    directories: list[str]
    optional: tuple[str, ...] = ()

    @property
    def paths(self) -> list[str]:
        return [*self.directories, *self.files]


def job_homecoming(job: Any, workdir: Path, rule: str, *, succeeded: bool) -> Homecoming:
    """What a job (or every member of a group job) brings home.

    A group job's own ``output`` holds only what leaves the group; Snakemake still checks
    every member's outputs, logs and benchmark afterwards, so all of them come home.
    ``pipe()`` and ``service()`` outputs live only while the group runs: never fetched.
    """
    group = is_group(job)
    members = list(job) if group else [job]  # a group iterates in run order
    files: list[str] = []
    dirs: list[str] = []
    optional: list[str] = []
    for member in members:
        if group:
            rule = str(member.rule.name)
        outputs = [o for o in member.output if not _streamed(o)]
        back = homecoming(outputs, member.log, getattr(member, "benchmark", None), workdir,
                          rule, succeeded=succeeded)
        files.extend(f for f in back.files if f not in files)
        dirs.extend(d for d in back.directories if d not in dirs)
        if group:
            optional.extend(relative_inside(str(o), workdir, "output", rule)
                            for o in outputs if _flagged(o, "temp"))
    return Homecoming(files=files, directories=dirs, optional=tuple(optional))


def is_group(job: Any) -> bool:
    """Whether ``job`` is a Snakemake group job (a job-like without the method is not)."""
    check = getattr(job, "is_group", None)
    return bool(check()) if callable(check) else False


def group_members(job: Any) -> list[str]:
    """``rule (job N)`` for each member of a group job, in Snakemake's run order."""
    if not is_group(job):
        return []
    return [f"{member.rule.name} (job {member.jobid})" for member in job]  # toposorted


_ERROR_IN_RULE = re.compile(r"^\s*Error in rule (\S+?):\s*$", re.MULTILINE)


def failed_members_note(job: Any, log_path: str) -> str:
    """``; failed in group g: rule b (log: logs/b.log)`` from the remote Snakemake's log.

    The remote Snakemake runs the whole group and prints ``Error in rule X:`` for each
    member that failed; the member's own log files are named after it.
    """
    try:
        text = Path(log_path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    failed = list(dict.fromkeys(_ERROR_IN_RULE.findall(text)))
    notes = []
    for rule in failed:
        logs = [str(f) for m in job.jobs if m.rule.name == rule for f in m.log]
        notes.append(f"rule {rule}" + (f" (log: {', '.join(logs)})" if logs else ""))
    return f"; failed in group {job.groupid}: {'; '.join(notes)}" if notes else ""


def _flagged(item: Any, flag: str) -> bool:
    flags = getattr(item, "flags", None)
    return bool(flags) and flag in flags


def _streamed(item: Any) -> bool:
    """pipe() and service() outputs: a FIFO or socket shared by a group's members."""
    return _flagged(item, "pipe") or _flagged(item, "service")


def homecoming(outputs: Iterable[Any], logs: Iterable[Any], benchmark: Any, workdir: Path,
               rule: str, *, succeeded: bool) -> Homecoming:
    """Outputs (only if the job succeeded), logs and benchmark, split into files and dirs."""
    files: list[str] = []
    dirs: list[str] = []
    declared = [*(outputs if succeeded else []), *logs]
    if benchmark and succeeded:
        declared.append(benchmark)
    for item in declared:
        rel = relative_inside(str(item), workdir, "output", rule)
        target = dirs if _is_directory(item) else files
        if rel not in target:
            target.append(rel)
    return Homecoming(files=files, directories=dirs)


def _is_directory(item: Any) -> bool:
    """Snakemake marks ``directory()`` outputs with a flag on the IOFile."""
    is_dir = getattr(item, "is_directory", False)
    return bool(is_dir() if callable(is_dir) else is_dir)


def forwarded_environment(environ: Mapping[str, str], declared: Mapping[str, str], *,
                          forward_credentials: bool) -> dict[str, str]:
    """Variables for the remote job: declared envvars plus (opt-out) cloud credentials."""
    env = {k: v for k, v in declared.items() if v is not None}
    if forward_credentials:
        for key, value in environ.items():
            if key.startswith(FORWARDED_PREFIXES):
                env.setdefault(key, value)
    return env


_SNAKEMAKE_VERSION_RE = re.compile(r"^[0-9][0-9A-Za-z.+-]*$")


EXIT_NO_CONDA = 98


def conda_check(rules: Iterable[str], image: str) -> str:
    """A shell line that stops the job with a clear message when the image has no conda.

    Without it the remote Snakemake fails with "Error running conda info", which names
    neither the rule nor the image.
    """
    names = ", ".join(sorted(set(rules)))
    message = (f"vastai: rule {names} uses conda: (--software-deployment-method conda) but "
               f"the image {image} has no conda, mamba or micromamba on PATH; choose an "
               "image with conda (the rule's vastai_image resource or --vastai-image)")
    return ("command -v conda >/dev/null 2>&1 || command -v mamba >/dev/null 2>&1 || "
            "command -v micromamba >/dev/null 2>&1 || "
            f"{{ echo {shlex.quote(message)} >&2; exit {EXIT_NO_CONDA}; }}")


def conda_rules(job: Any) -> list[str]:
    """Rules of the job (or group) that declare a conda environment."""
    members = list(job.jobs) if is_group(job) else [job]
    return [str(m.rule.name) for m in members if getattr(m, "conda_env_spec", None)]


def job_script(command: str, snakemake_version: str, checks: Iterable[str] = (),
               unpack_to: str = ".") -> str:
    """The remote shell script: bootstrap, unpack sources, run the job.

    Bootstrap installs Snakemake at the local version only when the image
    lacks it (real images usually do; the simulator never does). ``checks`` are shell
    lines run first (e.g. :func:`conda_check`). The script runs in the job's working
    directory; the sources unpack at ``unpack_to`` from there, the root they were packed
    from (``..`` under a ``workdir:`` directive; see sources.Layout).
    """
    version = snakemake_version if _SNAKEMAKE_VERSION_RE.match(snakemake_version) else ""
    pin = f"snakemake=={version}" if version else "snakemake"
    unpack = (
        "import sys, tarfile\n"
        f"with tarfile.open({SOURCES_MEMBER!r}) as t:\n"
        f"    t.extractall({unpack_to!r}, filter='data')\n"
    )
    return "\n".join([
        "set -e",
        *checks,
        'command -v python >/dev/null 2>&1 || { echo "vastai: no python on PATH in this image; '
        'choose an image with python (--vastai-image)" >&2; exit 127; }',
        "python -c 'import snakemake' 2>/dev/null || "
        f"python -m pip install --quiet {shlex.quote(pin)}",
        f"if [ -f {SOURCES_MEMBER} ]; then python - <<'VASTAI_UNPACK'\n{unpack}VASTAI_UNPACK\nfi",
        "set +e",
        command,
        "",
    ])


