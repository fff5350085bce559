"""``snakemake-vastai offers``: which GPUs the market has for a query, how many, at what price.

Before writing a rule's ``vastai_gpu`` or ``vastai_query`` a person wants to know
what the names are and what they cost; this asks Vast.ai once (the same search a
job makes, through ``vastai/api.py`` and the official SDK) and folds the offers into
one line per GPU model::

    snakemake-vastai offers
    snakemake-vastai offers "gpu_ram>=24 num_gpus=1"
    snakemake-vastai offers "gpu_name=RTX_4090" --json

The query is Vast.ai's syntax, read by the parser rule queries use
(``workflow/validation.py``); the SDK's defaults (verified, rentable, not rented)
apply unless the query overrides them. Prices are Vast.ai's $/h for the offer with
``--disk`` GB of storage (10 by default), as a job would pay. The key comes from
``SNAKEMAKE_VASTAI_API_KEY`` / ``VAST_API_KEY`` or ``--api-key-file``; the URL from
``--api-url``, ``VAST_URL`` or the real service. Nothing is rented.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import tables

PROG = "snakemake-vastai offers"
DEFAULT_LIMIT = 1000  # the market's first page is enough to name every common model
DISK_GB = 10.0  # a small disk: the question is which GPUs exist, not which fit a big job


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                     allow_abbrev=False)
    parser.add_argument("query", nargs="*", help="filters in Vast.ai query syntax, e.g. "
                        "'gpu_ram>=24 num_gpus=1' (default: every offer)")
    parser.add_argument("--disk", type=float, default=DISK_GB, metavar="GB",
                        help=f"disk to price in, as Vast.ai does (default: {DISK_GB:g})")
    parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT,
                        help=f"offers to fetch (default: {DEFAULT_LIMIT})")
    parser.add_argument("--api-url", metavar="URL",
                        help="the API (default: $VAST_URL, else the real service)")
    parser.add_argument("--api-key-file", type=Path, metavar="PATH",
                        help="a file holding the API key (default: $SNAKEMAKE_VASTAI_API_KEY "
                             "or $VAST_API_KEY)")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Search once, print one line per GPU model; exit 2 on a bad query or no key."""
    from ..settings import SettingsError, cli_api_key, cli_api_url
    from ..vastai.api import VastAPI, VastError
    from ..workflow.validation import ConfigError

    try:
        args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        query = search_query(" ".join(args.query))
        key, _ = cli_api_key(args.api_key_file)
        url, _ = cli_api_url(args.api_url, None, "")
    except (ConfigError, SettingsError) as exc:
        print(f"offers: {exc}", file=sys.stderr)
        return 2
    try:
        found = VastAPI(key, url, retry_budget=30.0).search_offers_unshared(
            query, [["dph_total", "asc"]], args.limit, args.disk)
    except VastError as exc:
        print(f"offers: {exc}", file=sys.stderr)
        return 2
    models = by_gpu(found)
    if args.json:
        print(json.dumps(models, indent=2))
    elif models:
        print(offers_table(models))
    else:
        print(f"no offer matches {' '.join(args.query) or 'the defaults'}")
    return 0


def search_query(text: str) -> dict:
    """The SDK's default filters with the user's query applied over them."""
    from ..vastai.offers import SDK_DEFAULTS
    from ..workflow.validation import parse_filters

    base = {field: dict(ops) for field, ops in SDK_DEFAULTS.items()}
    return parse_filters(text, "the query", base) if text.strip() else base


def by_gpu(offers: list[dict]) -> list[dict[str, Any]]:
    """One entry per GPU model, cheapest first: offers, GPUs per offer, $/h range and
    median, the largest GPU memory (GB) and the regions offering it."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for offer in offers:
        groups[str(offer.get("gpu_name") or "?")].append(offer)
    models = []
    for name, members in groups.items():
        prices = sorted(float(o.get("dph_total") or 0.0) for o in members)
        counts = sorted({int(o.get("num_gpus") or 1) for o in members})
        models.append({
            "gpu_name": name,
            "offers": len(members),
            "num_gpus": counts,
            "dph_min": prices[0],
            "dph_median": statistics.median(prices),
            "dph_max": prices[-1],
            "gpu_ram_gb": max(float(o.get("gpu_ram") or 0.0) for o in members) / 1024.0,
        })
    return sorted(models, key=lambda m: (m["dph_min"], m["gpu_name"]))


def offers_table(models: list[dict]) -> str:
    rows = [[m["gpu_name"], m["offers"], _counts(m["num_gpus"]), f"{m['gpu_ram_gb']:.0f}",
             f"${m['dph_min']:.3f}", f"${m['dph_median']:.3f}", f"${m['dph_max']:.3f}"]
            for m in models]
    return tables.render(["GPU", "OFFERS", "GPUS/OFFER", "GPU GB", "$/H FROM", "MEDIAN", "TO"],
                         rows, right={1, 3, 4, 5, 6})


def _counts(counts: list[int]) -> str:
    """``1``, ``1-8`` or ``1,2,4``: the GPU counts the model's offers come with."""
    if len(counts) > 1 and counts == list(range(counts[0], counts[-1] + 1)):
        return f"{counts[0]}-{counts[-1]}"
    return ",".join(str(c) for c in counts)
