"""The v1 instance listing (``GET /api/v1/instances/``) as the description documents it.

Keyset pagination (at most 25 a page; ``limit`` <= 0 means 5), ordering with ``id`` as the
tie-breaker, ``select_cols``, and ``select_filters`` on stored columns. Where the
description is silent we chose: the token is base64 JSON of the last row's sort key;
filters on the computed columns in :data:`COMPUTED_COLUMNS` (the description names
``dph_total`` and ``num_gpus``; we add the other price- and clock-derived ones) answer
400 ``invalid_request``; a bad token answers 400 ``invalid_token``.
"""

from __future__ import annotations

import base64
import functools
import json
from collections import Counter
from typing import Any

from ..vastai.query import QueryError, compare_keys, matches, parse_direction, validate_filters
from .api import HttpError

V1_PAGE_MAX = 25


def encode_token(values: list[Any]) -> str:
    raw = json.dumps({"values": values}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str) -> list[Any]:
    try:
        padded = token + "=" * (-len(token) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded))["values"]
    except (ValueError, KeyError, TypeError):
        raise _v1_error("bad after_token", "invalid_token") from None
    if not isinstance(values, list):
        raise _v1_error("bad after_token", "invalid_token")
    return values


def _json_arg(query: dict[str, str], name: str, default: Any) -> Any:
    if name not in query:
        return default
    try:
        return json.loads(query[name])
    except ValueError:
        raise HttpError(400, "invalid_args", f"{name} must be JSON") from None


# Columns the v1 listing computes per answer rather than stores on the contract: the
# description names dph_total and num_gpus; the rest are our choice (prices, the clock).
COMPUTED_COLUMNS = frozenset({
    "dph_total", "num_gpus", "dph_base", "duration", "uptime_mins", "storage_total_cost",
    "dlperf_per_dphtotal", "flops_per_dphtotal", "time_remaining", "time_remaining_isbid",
    "search", "instance", "credit_balance", "credit_discount", "credit_discount_max",
})
V1_NONPOSITIVE_LIMIT = 5  # the description: "Values <= 0 are treated as 5"


def _v1_error(msg: str, error: str = "invalid_request") -> HttpError:
    """A 400 of the v1 listing, as documented (no ``success`` field)."""
    err = HttpError(400, error, msg)
    err.body.pop("success", None)
    return err


def _v1_limit(query: dict[str, str]) -> int:
    try:
        limit = int(query.get("limit", V1_PAGE_MAX))
    except ValueError:
        raise _v1_error("limit must be an integer") from None
    return V1_NONPOSITIVE_LIMIT if limit <= 0 else min(limit, V1_PAGE_MAX)


def page_instances(rows: list[dict[str, Any]], query: dict[str, str]) -> dict[str, Any]:
    """One page of the v1 listing: filter, order (id last), keyset pagination."""
    try:
        filters = validate_filters(_json_arg(query, "select_filters", {}))
    except (QueryError, HttpError) as exc:
        raise _v1_error(f"Error in query parameters: {exc}") from None
    computed = sorted(set(filters) & COMPUTED_COLUMNS)
    if computed:
        raise _v1_error(f"Error in query parameters: {computed[0]} is not a valid search key")
    order_by = _json_arg(query, "order_by", [{"col": "id", "dir": "asc"}]) or []
    if not isinstance(order_by, list) or not all(isinstance(o, dict) for o in order_by):
        raise _v1_error("order_by must be a list of {col, dir}")
    order = [(str(o.get("col")), parse_direction(o.get("dir", "asc"))) for o in order_by]
    if "id" not in [c for c, _ in order]:
        order.append(("id", False))
    limit = _v1_limit(query)

    def resolve(row: dict[str, Any], name: str) -> Any:
        return row.get(name)

    hits = [r for r in rows if matches(r, filters, resolve)]
    cols, desc = [c for c, _ in order], [d for _, d in order]

    def key(row: dict[str, Any]) -> list[Any]:
        return [row.get(c) for c in cols]

    hits.sort(key=functools.cmp_to_key(lambda a, b: compare_keys(key(a), key(b), desc)))
    start = query.get("after_token")
    remaining = hits
    if start:
        after = decode_token(start)
        remaining = [r for r in hits if compare_keys(key(r), after, desc) > 0]
    page, rest = remaining[:limit], remaining[limit:]
    labels = Counter(str(r.get("label") or "") for r in hits)
    return {
        "success": True,
        "instances_found": len(page),
        "instances": [_select(r, _json_arg(query, "select_cols", None)) for r in page],
        "next_token": encode_token(key(page[-1])) if rest and page else None,
        "total_instances": len(hits),
        "label_counts": dict(labels),
    }


def _select(row: dict[str, Any], cols: Any) -> dict[str, Any]:
    if not cols or cols == ["*"] or not isinstance(cols, list):
        return row
    return {c: row.get(c) for c in ["id", *cols] if c in row or c != "id"}
