"""One job's own spec: what it needs, what it ships, what it brings home, its log.

A job step sees its :class:`JobSpec`, never the Snakemake executor or the whole
run. The run-wide part every spec shares (working directory, Snakemake's hooks,
the source archive built once) is the :class:`Workspace`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..run.redaction import add_environment
from ..vastai.offers import OfferSettings
from . import payload


@dataclass
class Workspace:
    """What all jobs of a run share: where they run from and how Snakemake runs them."""

    workdir: Path
    job_command: Callable[[Any], str]  # Snakemake's command line for a job
    declared_envvars: Callable[[], Mapping[str, str]]
    snakemake_version: str
    forward_credentials: bool = True
    credential_env: Mapping[str, str] = field(default_factory=dict)
    write_source_archive: Callable[[Path], None] | None = None
    archive_path: Path | None = None
    uses_conda: bool = False  # --software-deployment-method conda
    # The working directory below the source archive's root ("" = the root; see
    # sources.Layout): on the instance the job runs that far below its own directory.
    workdir_rel: str = ""
    _archive: Path | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def source_archive(self) -> Path | None:
        """The workflow's source archive, built once per run (Snakemake's own format)."""
        if self.write_source_archive is None or self.archive_path is None:
            return None
        with self._lock:
            if self._archive is None:
                self.archive_path.parent.mkdir(parents=True, exist_ok=True)
                self.write_source_archive(self.archive_path)
                self._archive = self.archive_path
            return self._archive

    def up(self) -> str:
        """From the job's working directory on the instance back to its own directory."""
        depth = len(self.workdir_rel.split("/")) if self.workdir_rel else 0
        return "/".join([".."] * depth) or "."

    def remote_dir(self, job_dir: str) -> str:
        """Where the job runs below ``job_dir``, its own directory on the instance."""
        return f"{job_dir}/{self.workdir_rel}" if self.workdir_rel else job_dir

    def environment(self) -> dict[str, str]:
        """Variables for a remote job (secrets registered before anything sends them)."""
        declared = self.declared_envvars()
        env = payload.forwarded_environment(os.environ, declared,
                                            forward_credentials=self.forward_credentials)
        if self.forward_credentials:
            env.update(self.credential_env)
        add_environment(env, declared=declared)
        return env


@dataclass
class JobSpec:
    """A job as its steps need it."""

    workspace: Workspace = field(repr=False)
    job: Any = field(repr=False)  # Snakemake's job (None for an earlier run's job)
    rule: str
    fingerprint: str
    log_path: str
    image: str
    max_runtime: float = 0.0  # seconds; 0 = no cap (see rule_settings.py)
    max_runtime_origin: str = "--vastai-max-runtime"
    offer_settings: OfferSettings | None = None  # the rule's overrides; None = the run's
    _log: IO[bytes] | None = field(default=None, init=False, repr=False)
    _log_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    # -- what it needs ---------------------------------------------------------------
    @property
    def resources(self) -> dict:
        return dict(self.job.resources)

    @property
    def threads(self) -> int:
        return int(self.job.threads or 1)

    def rented_disk_gb(self, run_disk_gb: float) -> float:
        """The disk the job's instance was rented with (the rule's overrides and disk_mb
        resource counted), for the download cap."""
        from ..vastai.offers import storage_gb
        from .validation import megabytes

        disk = self.offer_settings.disk_gb if self.offer_settings is not None else run_disk_gb
        try:
            return storage_gb(disk, megabytes(self.resources, "disk_mb", self.rule))
        except Exception:  # an earlier run's job (no Snakemake job): the run's disk
            return float(disk)

    # -- what travels ---------------------------------------------------------------
    def shipment(self) -> payload.Shipment:
        return payload.shipment(self.job.input, self.workspace.workdir, self.rule,
                                self.workspace.source_archive())

    def homecoming(self, *, succeeded: bool) -> payload.Homecoming:
        """Outputs, logs and benchmarks; of every member for a group job."""
        return payload.job_homecoming(self.job, self.workspace.workdir, self.rule,
                                      succeeded=succeeded)

    def failure_note(self) -> str:
        """For a failed group job: which member(s) failed, and their logs."""
        if self.job is None or not payload.is_group(self.job):
            return ""
        return payload.failed_members_note(self.job, self.log_path)

    def runtime_cap_text(self) -> str:
        """``--vastai-max-runtime 3s`` or ``the rule's runtime resource (120s)``."""
        if self.max_runtime_origin.startswith("--"):
            return f"{self.max_runtime_origin} {self.max_runtime:g}s"
        return f"{self.max_runtime_origin} ({self.max_runtime:g}s)"

    def snakemake_command(self) -> str:
        """Snakemake's own command line for this job."""
        return self.workspace.job_command(self.job)

    def command(self) -> str:
        """SSH mode: the remote script (bootstrap, unpack, run); a conda check first when
        conda environments are to be built on an image that may lack conda."""
        conda = payload.conda_rules(self.job) if self.workspace.uses_conda else []
        checks = [payload.conda_check(conda, self.image)] if conda else []
        return payload.job_script(self.snakemake_command(), self.workspace.snakemake_version,
                                  checks, unpack_to=self.workspace.up())

    def environment(self) -> dict[str, str]:
        return self.workspace.environment()

    # -- its log ----------------------------------------------------------------------
    def append_log(self, chunk: bytes) -> None:
        """Stream the remote job's output into its local log as it arrives."""
        with self._log_lock:
            if self._log is None:
                fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                self._log = os.fdopen(fd, "ab", buffering=0)
            self._log.write(chunk)

    def write_log(self, text: str) -> None:
        """Storage mode: the instance log, fetched whole at the end, is the job's log."""
        self.close_log()
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text if text.endswith("\n") or not text else text + "\n")

    def close_log(self) -> None:
        with self._log_lock:
            handle, self._log = self._log, None
        if handle is not None:
            handle.close()
