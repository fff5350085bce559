"""Storage mode: jobs whose data moves through a bucket instead of over SSH.

When Snakemake runs with a default storage provider (``--default-storage-provider
s3 --default-storage-prefix s3://bucket/wf``), the laptop only orchestrates:

- Snakemake's own source archive is uploaded to the bucket once per run;
- each instance is created with runtype ``args``: its container command (built
  here) fetches the sources with ``snakemake --deploy-sources``, runs the job's
  Snakemake command, which reads inputs from and writes outputs to the bucket,
  and prints an exit line carrying the job's exit code before the container
  exits;
- the plugin never opens SSH to the instance. It learns the end from the
  instance status (``exited``) and the exit line in the instance log, or from
  the job's outputs appearing in the bucket when a host never reports the exit.

Credentials reach the container through the instance's environment (the create
request), never through a command line: see :func:`credential_environment`.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shlex
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...watchdog.install import storage_end_line, storage_job_lines

EXIT_MARKER = "snakemake-vastai-exit"
GOOGLE_CREDENTIALS_ENV = "SNAKEMAKE_VASTAI_GOOGLE_CREDENTIALS_B64"
GOOGLE_ADC = Path("~/.config/gcloud/application_default_credentials.json")
_VERSION_RE = re.compile(r"^[0-9][0-9A-Za-z.+-]*$")


@dataclass(frozen=True)
class StorageSetup:
    """A run in storage mode: the mode, how jobs fetch the sources, the output probe."""

    mode: StorageMode
    deploy_command: str
    outputs: OutputProbe
    # a job's container line fetching the checkpoint outputs it may consult (checkpoints.py)
    checkpoint_fetch: Callable[[Any], str] = lambda job: ""
    # The working directory below the sources' root (sources.Layout): Snakemake unpacks
    # the archive where it stands, so the job steps down into its working directory after.
    workdir_rel: str = ""

    def prepare_command(self, job: Any) -> str:
        """Deploy the sources, step into the working directory, then fetch checkpoint
        outputs (evaluated per job)."""
        into = shlex.quote(self.workdir_rel)
        step = f"mkdir -p -- {into} && cd -- {into}" if self.workdir_rel else ""
        return "\n".join(line for line in (self.deploy_command, step,
                                            self.checkpoint_fetch(job)) if line)


class StorageCheckFailed(Exception):
    """Storage mode cannot work with what the user configured; the message says why."""


@dataclass(frozen=True)
class StorageMode:
    """What a run in storage mode needs to know about Snakemake's storage setup."""

    provider: str  # e.g. "s3"
    prefix: str  # e.g. "s3://bucket/workflow"
    plugin_packages: tuple[tuple[str, str, str], ...]  # (module, pip name, version)


def storage_mode(workflow: Any) -> StorageMode | None:
    """Storage mode is on exactly when Snakemake has a default storage provider."""
    settings = getattr(workflow, "storage_settings", None)
    provider = getattr(settings, "default_storage_provider", None)
    if not provider:
        return None
    prefix = str(getattr(settings, "default_storage_prefix", "") or "")
    return StorageMode(provider=str(provider), prefix=prefix,
                       plugin_packages=tuple(_plugin_packages(workflow, str(provider))))


def _plugin_packages(workflow: Any, provider: str) -> list[tuple[str, str, str]]:
    """The storage plugins the remote jobs need, at the versions installed here."""
    from importlib import metadata

    names = set(getattr(workflow, "storage_provider_settings", {}) or {}) | {provider}
    packages = []
    for name in sorted(names):
        module = f"snakemake_storage_plugin_{name.replace('-', '_')}"
        dist = f"snakemake-storage-plugin-{name}"
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            version = ""
        packages.append((module, dist, version))
    return packages


# -- checks before renting --------------------------------------------------------------
def check_storage(workflow: Any, mode: StorageMode) -> None:
    """The bucket exists and our credentials reach it; raises StorageCheckFailed.

    Runs before any instance is rented: a typo in the prefix or missing keys
    would otherwise surface only inside a billed container.
    """
    if not mode.prefix:
        raise StorageCheckFailed(
            f"--default-storage-provider {mode.provider} needs --default-storage-prefix "
            "(for example s3://my-bucket/my-workflow)")
    registry = getattr(workflow, "storage_registry", None)
    provider = getattr(registry, "default_storage_provider", None)
    if provider is None:
        raise StorageCheckFailed(f"storage provider {mode.provider!r} is not available: "
                                 f"pip install snakemake-storage-plugin-{mode.provider}")
    probe_query = f"{mode.prefix.rstrip('/')}/.snakemake-vastai-probe"
    try:
        probe = provider.object(probe_query)
        exists = _container_exists(probe)
    except Exception as exc:  # every provider raises its own types
        raise StorageCheckFailed(_explain(mode, exc)) from None
    if exists is False:
        raise StorageCheckFailed(
            f"the bucket of --default-storage-prefix {mode.prefix} does not exist (or these "
            "credentials cannot see it); create it first, jobs will not create it for you")


def _container_exists(probe: Any) -> bool | None:
    """Ask the provider's object whether its bucket/container exists, if it can say."""
    for name in ("bucket_exists", "container_exists"):
        method = getattr(probe, name, None)
        if callable(method):
            return bool(method())
    probe.exists()  # at least prove that the credentials work
    return None


def _explain(mode: StorageMode, exc: Exception) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if "credential" in text.lower() or "accessdenied" in text.lower().replace(" ", ""):
        hint = ("set the provider's credentials, e.g. AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or --storage-s3-access-key/--storage-s3-secret-key")
    else:
        hint = "check --default-storage-prefix and the storage plugin's settings"
    return (f"cannot reach the storage of --default-storage-prefix {mode.prefix} "
            f"({mode.provider}): {text}; {hint}")


# -- what the container runs ------------------------------------------------------------
def exit_token(label: str) -> str:
    """Per-instance token on the exit line, so no line a job prints by chance is taken
    for it. Derived from the label, so a later run re-attaching to the instance knows it."""
    return hashlib.sha256(f"exit:{label}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Watchdog:
    """The instance-side watchdog in storage mode (watchdog/install.py)."""

    api_url: str
    orphan_timeout: float
    max_runtime: float = 0.0
    pickup: float = 0.0  # seconds a succeeded job waits for the run; 0: stop at once


def container_args(*, job_command: str, deploy_command: str, mode: StorageMode,
                   snakemake_version: str, job_dir: str, token: str,
                   watchdog: Watchdog | None = None) -> list[str]:
    """The container command (runtype ``args``): a POSIX shell script, no secrets in it."""
    return ["sh", "-c", container_script(job_command=job_command,
                                         deploy_command=deploy_command, mode=mode,
                                         snakemake_version=snakemake_version,
                                         job_dir=job_dir, token=token, watchdog=watchdog)]


def container_script(*, job_command: str, deploy_command: str, mode: StorageMode,
                     snakemake_version: str, job_dir: str, token: str,
                     watchdog: Watchdog | None = None) -> str:
    """Prepare, deploy the sources from the bucket, run the job, report its exit code.

    The exit line is printed whatever happens inside, so a failed install is
    reported as a failed job rather than as a host that never finished.
    """
    installs = [_ensure("snakemake", "snakemake", snakemake_version)]
    installs += [_ensure(module, dist, version) for module, dist, version in
                 mode.plugin_packages]
    inner = "\n".join([
        "set -e",
        'command -v python >/dev/null 2>&1 || { echo "vastai: no python on PATH in this image; '
        'choose an image with python (--vastai-image)" >&2; exit 127; }',
        *installs,
        deploy_command,
        "set +e",
        job_command,
    ])
    if watchdog is None:
        run, stop = f"( {inner}\n)\nrc=$?", ""
    else:  # the job under the watchdog's eye; its end stops or destroys it (watchdog/)
        run = storage_job_lines(watchdog.api_url, watchdog.orphan_timeout,
                                watchdog.max_runtime, f"( {inner}\n)")
        stop = storage_end_line(watchdog.api_url, watchdog.pickup)
    return "\n".join([
        f'job_dir="$HOME/{job_dir}"',
        'mkdir -p "$job_dir" && cd "$job_dir" || exit 111',
        _google_credentials_lines(),
        run,
        f'echo "{EXIT_MARKER} {token} $rc"',
        *([stop] if stop else []),
        'exit "$rc"',
        "",
    ])


def _ensure(module: str, dist: str, version: str) -> str:
    pin = f"{dist}=={version}" if _VERSION_RE.match(version or "") else dist
    return (f"python -c {shlex.quote('import ' + module)} 2>/dev/null || "
            f"python -m pip install --quiet {shlex.quote(pin)}")


def _google_credentials_lines() -> str:
    """Materialise a forwarded Google credentials file (mode 0600) and point at it."""
    return "\n".join([
        f'if [ -n "${{{GOOGLE_CREDENTIALS_ENV}:-}}" ]; then',
        "  mkdir -p .vastai && chmod 700 .vastai",
        f'  (umask 077 && printf %s "${GOOGLE_CREDENTIALS_ENV}" | python -c '
        '"import base64,sys; sys.stdout.buffer.write(base64.b64decode(sys.stdin.read()))" '
        "> .vastai/google-credentials.json)",
        '  export GOOGLE_APPLICATION_CREDENTIALS="$job_dir/.vastai/google-credentials.json"',
        f"  unset {GOOGLE_CREDENTIALS_ENV}",
        "fi",
    ])


def deploy_command(workflow: Any) -> str:
    """Snakemake's own command that fetches and unpacks the run's source archive."""
    archive = workflow.source_archive
    return (f"python -m snakemake --deploy-sources {shlex.quote(archive.query)} "
            f"{shlex.quote(archive.checksum)} {storage_cli_args(workflow)}").rstrip()


def storage_cli_args(workflow: Any) -> str:
    """The storage options Snakemake gives its remote jobs, as one shell fragment."""
    factory = workflow.spawned_job_args_factory
    storage_args = " ".join(a for a in factory.get_storage_provider_args() if a)
    return f"{factory.get_default_storage_provider_args()} {storage_args}".strip()


# -- credentials ------------------------------------------------------------------------------
def google_credentials_file(environ: Mapping[str, str]) -> Path | None:
    """GOOGLE_APPLICATION_CREDENTIALS, else gcloud's application default credentials."""
    named = environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if named:
        return Path(named).expanduser()
    home = environ.get("HOME")
    adc = Path(home) / GOOGLE_ADC.relative_to("~") if home else GOOGLE_ADC.expanduser()
    return adc if adc.is_file() else None


def credential_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The Google credentials file as an environment value the container materialises.

    The local path means nothing on the host, so GOOGLE_APPLICATION_CREDENTIALS
    itself is not forwarded; the container sets it to its own copy.
    """
    path = google_credentials_file(environ)
    if path is None:
        return {}
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StorageCheckFailed(
            f"cannot read the Google credentials file {path} (GOOGLE_APPLICATION_CREDENTIALS "
            f"or gcloud application default credentials): {exc.strerror}") from None
    return {GOOGLE_CREDENTIALS_ENV: base64.b64encode(data).decode("ascii")}


# -- the end of a job -----------------------------------------------------------------------
def exit_code_from_log(text: str, token: str) -> int | None:
    """The exit code on the last exit line with our token, or None if there is none."""
    pattern = re.compile(rf"^{EXIT_MARKER} {re.escape(token)} (\d+)\s*$", re.MULTILINE)
    found = pattern.findall(text)
    return int(found[-1]) if found else None


class OutputProbe:
    """Do a job's declared outputs exist in storage? One question at a time.

    Storage plugins share one client per provider (boto3 resources are not
    thread-safe), and every job thread asks, so the questions are serialised.
    Each question goes to a fresh storage object (see :func:`fresh_object`): asking
    the job's own objects while the job runs would plant "not there" memos in them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def all_present(self, outputs: Iterable[Any], since: float | None = None) -> bool | None:
        """True if every storage output exists (and, with ``since``, was written at or
        after it: the storage's own clock against the journal's), False if one is missing
        or older, None if the job has no storage outputs (nothing to learn from the bucket)."""
        objects = [o.storage_object for o in outputs if getattr(o, "is_storage", False)]
        if not objects:
            return None
        with self._lock:
            for obj in objects:
                fresh = fresh_object(obj)
                if not fresh.exists():
                    return False
                if since is not None and fresh.mtime() < since:
                    return False
        return True


# -- what the local Snakemake believes about a remote job's outputs ------------------------
def fresh_object(obj: Any) -> Any:
    """A new storage object for the same query, with nothing memoised.

    Storage objects may remember what they learned (the S3 plugin remembers
    "not a directory" the first time it finds no key under a prefix, and never
    asks again). Built exactly as Snakemake builds one when it applies wildcards.
    """
    return type(obj)(query=obj.query, provider=obj.provider, keep_local=obj.keep_local,
                     retrieve=obj.retrieve)


def storage_products(job: Any) -> list[Any]:
    """Every storage-backed output, benchmark and log file of a job or of each job of a
    group (a group's inner files too: each member job's postprocessing checks its own)."""
    members = getattr(job, "jobs", None) or [job]
    products = []
    for member in members:
        products.extend(member.products(include_logfiles=True))
    return [f for f in products if getattr(f, "is_storage", False)]


def forget_stale_answers(job: Any) -> int:
    """Give each storage product of a finished remote job a fresh storage object.

    The local Snakemake asked about these files before the job ran (building
    the DAG) and memos from then say "absent" or "not a directory". Under the
    local executor the job's own upload corrects them (the storing object learns
    what it stored); in storage mode the upload happened in another process on
    another machine, so the memos must be dropped before Snakemake checks the
    outputs, or a ``directory()`` output is reported missing although it is in
    the bucket. Returns how many objects were renewed.
    """
    renewed = 0
    for iofile in storage_products(job):
        try:
            fresh = fresh_object(iofile.storage_object)
        except Exception:  # a plugin built differently: keep its object, as before
            continue
        iofile.flags["storage_object"] = fresh
        fresh._iofile = iofile  # the back-reference Snakemake itself keeps
        renewed += 1
    return renewed


