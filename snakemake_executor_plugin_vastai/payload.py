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
    """Paths a job may bring back: declared files and declared directories."""

    files: list[str]
    directories: list[str]

    @property
    def paths(self) -> list[str]:
        return [*self.directories, *self.files]


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


def job_script(command: str, snakemake_version: str) -> str:
    """The remote shell script: bootstrap, unpack sources, run the job.

    Bootstrap installs Snakemake at the local version only when the image
    lacks it (real images usually do; the simulator never does).
    """
    version = snakemake_version if _SNAKEMAKE_VERSION_RE.match(snakemake_version) else ""
    pin = f"snakemake=={version}" if version else "snakemake"
    unpack = (
        "import sys, tarfile\n"
        f"with tarfile.open({SOURCES_MEMBER!r}) as t:\n"
        "    t.extractall('.', filter='data')\n"
    )
    return "\n".join([
        "set -e",
        'command -v python >/dev/null 2>&1 || { echo "vastai: no python on PATH in this image; '
        'choose an image with python (--vastai-image)" >&2; exit 127; }',
        "python -c 'import snakemake' 2>/dev/null || "
        f"python -m pip install --quiet {shlex.quote(pin)}",
        f"if [ -f {SOURCES_MEMBER} ]; then python - <<'VASTAI_UNPACK'\n{unpack}VASTAI_UNPACK\nfi",
        "set +e",
        command,
        "",
    ])


