"""Vast.ai, as the ``journal`` commands that ask it (``instances --alive``, ``cleanup``) use it.

Where the API key comes from (``--api-key-file`` or the environment, never a plain
option) and the URL (``--api-url``, ``$VAST_URL``, the latest run's settings if
they point at the real service or this machine, else the real service); one
listing of this workflow's instances; API failures turned into messages and
exit codes; and the journal rows matched to what the listing shows.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ...journal.store import Journal
from ...run import listing
from ...settings import DEFAULT_URL, SettingsError, cli_api_key, cli_api_url
from ...vastai.api import VastAPI, VastAuthError, VastError
from .common import CliError, _latest_run, _parse_json

API_RETRY_BUDGET = 20.0  # seconds of retries before a CLI call gives up (the plugin's: 300)


def _api_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api-url",
        metavar="URL",
        help="Vast.ai API (default: $VAST_URL, else the latest run's, else the real service)",
    )
    parser.add_argument(
        "--api-key-file",
        type=Path,
        metavar="PATH",
        help="read the API key from this file (default: $SNAKEMAKE_VASTAI_API_KEY, $VAST_API_KEY)",
    )


def open_api(journal: Journal | None, args: argparse.Namespace) -> tuple[VastAPI, str]:
    """The API client and where its key came from (named in errors; the key never is)."""
    key, source = api_key(args.api_key_file)
    url, url_source = api_url(journal, args.api_url)
    if url_source != "default":
        print(f"asking Vast.ai at {url} ({url_source})", file=sys.stderr)
    return VastAPI(key, url, retry_budget=API_RETRY_BUDGET, request_timeout=15.0), source


def api_key(key_file: Path | None) -> tuple[str, str]:
    """The key from --api-key-file, else the environment (``settings.cli_api_key``)."""
    try:
        return cli_api_key(key_file)
    except SettingsError as exc:
        raise CliError(str(exc)) from None


def api_url(journal: Journal | None, option: str | None) -> tuple[str, str]:
    """(URL, where from): ``settings.cli_api_url`` given the latest run's recorded URL
    (no journal, as for ``cleanup --orphans`` after ``rm -rf .snakemake``: none)."""
    latest = _latest_run(journal) if journal is not None else None
    settings = _parse_json(latest["settings"]) if latest is not None else None
    recorded = settings.get("api_url") if isinstance(settings, dict) else None
    try:
        return cli_api_url(option, recorded and str(recorded),
                           f"recorded by run {latest['id']}" if latest else "")
    except SettingsError as exc:
        raise CliError(str(exc)) from None


def list_ours(journal: Journal, args: argparse.Namespace) -> list[dict]:
    api, source = open_api(journal, args)
    with api_errors(api, source):
        return api.list_instances(journal.label_prefix)


@contextmanager
def api_errors(api: VastAPI, source: str) -> Iterator[None]:
    """API failures as messages: a refused key is a usage error, no answer may hide a bill."""
    import requests

    try:
        yield
    except VastAuthError:
        raise CliError(
            f"Vast.ai at {api.url} refused the API key from {source}; check it "
            "(keys are at https://console.vast.ai/manage-keys/)"
        ) from None
    except VastError as exc:
        raise CliError(
            f"could not ask Vast.ai at {api.url}: {exc}. What still bills is unknown; "
            "check --api-url / $VAST_URL",
            code=1,
        ) from None
    except requests.RequestException as exc:
        raise CliError(
            f"cannot use the API URL {api.url} ({type(exc).__name__}); check --api-url or "
            f"$VAST_URL: it must look like {DEFAULT_URL}"
        ) from None


def match_listing(rows: list[dict], found: list[dict]) -> tuple[dict[str, dict], list[dict]]:
    """Journal rows -> listed instances (the one matcher, ``listing.py``); also the listed
    instances no row owns (strays: duplicates, unknown labels)."""
    matched = listing.match(rows, found, prefix="")
    return ({label: listed for label, (_row, listed) in matched.alive.items()},
            [stray.listed for stray in matched.strays])


def _status(listed: dict) -> str:
    return str(listed.get("actual_status") or "starting")
