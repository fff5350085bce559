"""Run settings and where the Vast.ai API key and URL come from: one place for both
(the run's :func:`resolve_api_key` / :func:`resolve_api_url`, the ``journal`` commands'
:func:`cli_api_key` / :func:`cli_api_url`).

:class:`RunSettings` holds the executor options once they are validated and resolved
(``run/startup.py`` builds it); the resolvers below are the only code that decides which
API key and URL a run, ``plan`` or the ``journal`` commands use. This module is
imported on every ``snakemake`` start (through the package), so it imports nothing heavy.
"""

from __future__ import annotations

import os
from dataclasses import Field, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from snakemake_interface_common.exceptions import WorkflowError

if TYPE_CHECKING:
    from .vastai.bids import BidSettings
    from .vastai.offers import OfferSettings

__version__ = "0.2.0"
DEFAULT_IMAGE = "vastai/pytorch:@vastai-automatic-tag"
DEFAULT_URL = "https://console.vast.ai"
# Defaults of options whose code reads them elsewhere (the modules there import these):
# held here so ExecutorSettings can show them without importing anything heavy.
DEFAULT_BID_FACTOR = 1.0  # vastai/bids.py: the bid as a multiple of the offer's min_bid
DEFAULT_PREEMPTION_GRACE = 300.0  # vastai/bids.py: seconds an outbid instance may stay stopped
DEFAULT_IDLE_TIMEOUT = 60.0  # run/pool.py: about the shortest Vast.ai boot an idle one saves
DEFAULT_OFFER_WAIT = 1800.0  # lifecycle/renting.py: seconds a job waits for an offer
# watchdog/: seconds without the run's heartbeat before an instance ends its own billing.
# A dropped Wi-Fi or a lid closed for a coffee lasts minutes; 10 of them cost at most ten
# minutes of an idle instance, and a job that is running is never cut short by it.
DEFAULT_ORPHAN_TIMEOUT = 600.0


def option(help: str, default: Any = None, *, shown: str | None = None, env: bool = False,
           choices: list[str] | None = None) -> Any:
    """One ``ExecutorSettings`` field whose help ends with the default it really has.

    Snakemake's ``--help`` (and the plugin catalog's settings table) print a field's
    help, not its default, so the default is written into the help here, from the value
    itself: ``shown`` only where the value is None and means something (no cap, the
    disk the job rented). ``env``: Snakemake also reads ``SNAKEMAKE_VASTAI_<NAME>``
    and appends ``[env var: ...]`` to the help.
    """
    metadata: dict[str, Any] = {
        "help": f"{help} Default: {shown or default_text(default)}.",
        "env_var": env, "required": False, "default_shown": shown or default_text(default)}
    if choices is not None:
        metadata["choices"] = choices
    return field(default=default, metadata=metadata)


def default_text(value: Any) -> str:
    """A default as a person types it: ``off`` for a flag, ``5`` for 5.0, ``1800``."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def shown_default(setting: Field) -> str:
    """The default ``--help`` shows for one ExecutorSettings field (docs tests read it)."""
    return str(setting.metadata.get("default_shown", default_text(setting.default)))


@dataclass(frozen=True)
class RunSettings:
    """Resolved executor settings (the API key is held by VastAPI, not here)."""

    api_url: str
    image: str
    disk: float
    boot_timeout: float
    keep_instances: bool
    forward_credentials: bool
    status_interval: float
    offline_grace: float
    offer_settings: OfferSettings
    ssh_timeout: float = 20.0
    max_download_bytes: int | None = None  # --vastai-max-download: None = the rented disk
    on_restart: str = "resume"
    max_spend: float | None = None
    max_runtime: float = 0.0  # seconds a storage-mode job may run; 0 = no cap
    progress_interval: float = 5.0  # seconds between transfer progress lines (progress.py)
    bids: BidSettings = field(default_factory=lambda: _no_bids())  # interruptible instances
    reuse: bool = True  # warm instances (pool.py): a succeeded job's instance serves the next
    idle_timeout: float = 60.0  # seconds an idle warm instance waits (pool.DEFAULT_IDLE_TIMEOUT)
    offer_wait: float = 1800.0  # seconds a job waits for an offer (lifecycle/renting.py)
    orphan_timeout: float = DEFAULT_ORPHAN_TIMEOUT  # watchdog/: 0 = no watchdog
    keep_warm: float = 0.0  # seconds idle instances outlive the run (run/pool.py hand-over)


DOWNLOAD_SLACK = 64 * 1024 * 1024  # archive headers, logs, rounding of the disk size


def download_cap(option: int | None, disk_gb: float) -> int | None:
    """Bytes a job may bring home (None: no cap). ``--vastai-max-download`` when set (0: no
    cap); else the disk the job rented (Vast.ai's GB are 10**9 bytes) plus a little: a host
    that sends more than its disk could hold is lying."""
    if option == 0:
        return None
    if option is not None:
        return int(option)
    return int(disk_gb * 1e9) + DOWNLOAD_SLACK


def _no_bids() -> BidSettings:
    """No rule bids (imported here, not at the top: the package must stay light)."""
    from .vastai.bids import BidSettings

    return BidSettings()


API_KEY_ENV = ("SNAKEMAKE_VASTAI_API_KEY", "VAST_API_KEY")


def resolve_api_key(settings: Any) -> str:
    """The key from --vastai-api-key, SNAKEMAKE_VASTAI_API_KEY, VAST_API_KEY, or the file
    ``vastai set api-key`` saved (where the official CLI and SDK look for it).

    The key is registered as a secret before anything else looks at it, and a key
    that could never travel in an HTTP header is refused here: ``requests`` would
    otherwise quote it whole in an exception message.
    """
    from .run.logs import SECRETS  # here: structlog is not for every snakemake start

    key, source = getattr(settings, "api_key", None), "--vastai-api-key"
    for name in API_KEY_ENV:
        if not key:
            key, source = os.environ.get(name), name
    if not key:
        key, source = key_from_file(), "the key file 'vastai set api-key' saved"
    SECRETS.add([key])
    if not key or not key.strip():
        raise WorkflowError(
            "No Vast.ai API key: set VAST_API_KEY (or SNAKEMAKE_VASTAI_API_KEY, or "
            "--vastai-api-key), or save one with 'vastai set api-key'. Keys are at "
            "https://console.vast.ai/manage-keys/")
    key = key.strip()
    if not key.isprintable() or any(c.isspace() for c in key) or not key.isascii():
        raise WorkflowError(
            f"the Vast.ai API key from {source} contains whitespace, control or non-ASCII "
            "characters (a stray newline or quote?); copy it again from "
            "https://console.vast.ai/manage-keys/ (the key itself is not shown here)")
    return key


def api_key_files() -> list[Path]:
    """The key files of the official vastai CLI/SDK, in their order of preference."""
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return [Path(config) / "vastai" / "vast_api_key", Path(os.path.expanduser("~/.vast_api_key"))]


def key_from_file() -> str | None:
    """The first existing key file's content; an unreadable one is an error naming it."""
    for path in api_key_files():
        if not os.path.lexists(path):
            continue
        try:
            return path.read_text(encoding="utf-8").strip() or None
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise WorkflowError(f"cannot read the Vast.ai API key file {path}: {reason} "
                                "(fix or remove it, or set VAST_API_KEY)") from None
    return None


def resolve_api_url(settings: Any) -> str:
    url = getattr(settings, "api_url", None) or os.environ.get("VAST_URL") or DEFAULT_URL
    return url.rstrip("/")


class SettingsError(ValueError):
    """A key or URL the ``journal`` commands cannot use; the message says where it came from
    and what to do (never the key itself)."""


def cli_api_key(key_file: Path | None) -> tuple[str, str]:
    """The ``journal`` commands' key: --api-key-file, else the environment as the plugin
    reads it (never a plain option: argv is visible to every user). (key, where from)."""
    if key_file is not None:
        try:
            lines = key_file.read_text().split()
        except OSError as exc:
            raise SettingsError(f"cannot read --api-key-file {key_file}: {exc.strerror}"
                                ) from None
        if not lines:
            raise SettingsError(f"--api-key-file {key_file} is empty; it must hold the API key")
        return lines[0], f"--api-key-file {key_file}"
    for name in API_KEY_ENV:
        value = os.environ.get(name, "").strip()
        if value:
            return value, f"${name}"
    raise SettingsError(
        f"no Vast.ai API key: set {' or '.join(API_KEY_ENV)}, or pass --api-key-file PATH "
        "(a file holding the key). Keys are at https://console.vast.ai/manage-keys/"
    )


def cli_api_url(option: str | None, recorded: str | None, recorded_by: str) -> tuple[str, str]:
    """The ``journal`` commands' URL: --api-url, $VAST_URL, the URL the latest run recorded
    (only if it is the real service or this machine: the key goes wherever the URL points,
    and a journal file is not enough say-so), else the real service. (URL, where from)."""
    if option:
        return option.rstrip("/"), "--api-url"
    if os.environ.get("VAST_URL"):
        return os.environ["VAST_URL"].rstrip("/"), "$VAST_URL"
    if recorded:
        recorded = recorded.rstrip("/")
        if not trusted_recorded_url(recorded):
            raise SettingsError(
                f"the journal's latest run used the API at {recorded}; the key is sent "
                "only to the real service or this machine unless you name the URL: pass "
                f"--api-url {recorded} (or set VAST_URL) if you trust it"
            )
        return recorded, recorded_by
    return DEFAULT_URL, "default"


def trusted_recorded_url(url: str) -> bool:
    """The real service, or a server on this machine (the bundled simulator)."""
    from urllib.parse import urlsplit

    if url == DEFAULT_URL.rstrip("/"):
        return True
    host = urlsplit(url).hostname or ""
    return host in ("127.0.0.1", "localhost", "::1")
