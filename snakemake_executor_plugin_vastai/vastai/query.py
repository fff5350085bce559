"""Vast.ai's filter semantics, in one place: the simulator's search and listings use it,
and so does the plugin when it decides whether a warm instance meets a job's request
(``run/pool.py``), so the two cannot drift apart.

Evaluation of Vast.ai filter dicts and orderings, shared by offer search and listings.

The SDK sends filters as ``{field: {op: value}}`` with the operators ``eq``, ``neq``,
``gt``, ``gte``, ``lt``, ``lte``, ``in`` and ``notin``. Its query-string parser leaves
most values as *strings* (``num_gpus=2`` arrives as ``{"num_gpus": {"eq": "2"}}``), so a
value is coerced to the type of the field it is compared with, as the real service does:
numbers to float, ``"true"``/``"false"`` to bool. Rows missing a value (``None``) never
satisfy a comparison, only ``eq None`` / ``neq None``.

Orderings are lists of ``(field, descending)``; missing values sort last in either
direction, and ties keep the caller's order (Python's sort is stable).
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

OPERATORS = frozenset({"eq", "neq", "gt", "gte", "lt", "lte", "in", "notin"})

# Field-specific equality (e.g. geolocation matching a bare country code).
Equality = Callable[[Any, Any], bool]
# Returns a field's value for a row, or raises KeyError for a field rows do not have.
Resolver = Callable[[Mapping[str, Any], str], Any]


class QueryError(ValueError):
    """A filter or ordering the service would reject (answered as HTTP 400)."""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def coerce(wanted: Any, actual: Any) -> Any:
    """Convert a filter value to the type of the row value it is compared with."""
    if isinstance(wanted, str):
        text = wanted.strip()
        if isinstance(actual, bool):
            lowered = text.lower()
            if lowered in ("true", "1"):
                return True
            if lowered in ("false", "0"):
                return False
            return text
        if _is_number(actual):
            try:
                return float(text)
            except ValueError:
                return text
    if isinstance(actual, bool) and _is_number(wanted):
        return bool(wanted)
    return wanted


def _ordered(actual: Any, wanted: Any) -> tuple[Any, Any] | None:
    """Both sides as mutually comparable values, or None when they cannot be ordered."""
    if actual is None or wanted is None:
        return None
    if _is_number(actual) and _is_number(wanted):
        return float(actual), float(wanted)
    if isinstance(actual, str) and isinstance(wanted, str):
        return actual, wanted
    return None


def _equal(actual: Any, wanted: Any, equality: Equality | None) -> bool:
    if equality is not None:
        return equality(actual, wanted)
    if _is_number(actual) and _is_number(wanted):
        return float(actual) == float(wanted)
    return bool(actual == wanted)


def holds(op: str, actual: Any, wanted: Any, equality: Equality | None = None) -> bool:
    """Whether ``actual <op> wanted`` holds (``wanted`` as sent by the client)."""
    if op in ("in", "notin"):
        values = wanted if isinstance(wanted, list | tuple) else [wanted]
        hit = any(_equal(actual, coerce(v, actual), equality) for v in values)
        return hit if op == "in" else not hit
    wanted = coerce(wanted, actual)
    if op == "eq":
        return _equal(actual, wanted, equality)
    if op == "neq":
        return not _equal(actual, wanted, equality)
    pair = _ordered(actual, wanted)
    if pair is None:
        return False
    a, w = pair
    return {"gt": a > w, "gte": a >= w, "lt": a < w, "lte": a <= w}[op]


def validate_filters(filters: Any) -> dict[str, dict[str, Any]]:
    """Check the shape ``{field: {op: value}}``; raise QueryError otherwise."""
    if not isinstance(filters, dict):
        raise QueryError("filters must be an object of {field: {op: value}}")
    for field, ops in filters.items():
        if not isinstance(ops, dict):
            raise QueryError(f"filter for {field!r} must be an object of {{op: value}}")
        unknown = set(ops) - OPERATORS
        if unknown:
            raise QueryError(f"unknown operator(s) {sorted(unknown)} for field {field!r}")
    return filters


def matches(
    row: Mapping[str, Any],
    filters: Mapping[str, Mapping[str, Any]],
    resolve: Resolver,
    equalities: Mapping[str, Equality] | None = None,
) -> bool:
    """Whether ``row`` satisfies every ``{field: {op: value}}`` filter."""
    equalities = equalities or {}
    for field, ops in filters.items():
        actual = resolve(row, field)
        for op, wanted in ops.items():
            if not holds(op, actual, wanted, equalities.get(field)):
                return False
    return True


def _compare_values(a: Any, b: Any) -> int:
    """Total order over mixed values: None last, numbers before strings."""
    if a is None or b is None:
        return (a is None) - (b is None)
    rank_a, rank_b = _rank(a), _rank(b)
    if rank_a != rank_b:
        return -1 if rank_a < rank_b else 1
    if rank_a == 2:
        a, b = str(a), str(b)
    return (a > b) - (a < b)


def _rank(value: Any) -> int:
    if _is_number(value) or isinstance(value, bool):
        return 0
    if isinstance(value, str):
        return 1
    return 2


def compare_keys(a: Sequence[Any], b: Sequence[Any], descending: Sequence[bool]) -> int:
    """Compare two sort keys column by column; None sorts last in both directions."""
    for x, y, desc in zip(a, b, descending, strict=False):
        c = _compare_values(x, y)
        if desc and x is not None and y is not None:
            c = -c
        if c:
            return c
    return 0


def sort_rows(
    rows: Iterable[Mapping[str, Any]],
    order: Sequence[tuple[str, bool]],
    resolve: Resolver,
) -> list[Mapping[str, Any]]:
    """Rows sorted by ``order`` (list of ``(field, descending)``)."""
    fields = [f for f, _ in order]
    desc = [d for _, d in order]

    def cmp(x: Mapping[str, Any], y: Mapping[str, Any]) -> int:
        return compare_keys([resolve(x, f) for f in fields], [resolve(y, f) for f in fields], desc)

    return sorted(rows, key=functools.cmp_to_key(cmp))


def parse_direction(direction: Any) -> bool:
    """True for descending; the service accepts 'desc'/'asc' (anything else is asc)."""
    return str(direction).strip().lower() == "desc"


def glob_match(pattern: str | None, value: str | None) -> bool:
    """fnmatch with None meaning 'match anything' (used by fault targeting)."""
    if pattern is None:
        return True
    return value is not None and fnmatch.fnmatchcase(value, pattern)


# The SDK's client-side aliases (vastai.api.query.offers_alias), honoured when they arrive.
ALIASES = {
    "cuda_vers": "cuda_max_good",
    "display_active": "gpu_display_active",
    "dlperf_usd": "dlperf_per_dphtotal",
    "dph": "dph_total",
    "flops_usd": "flops_per_dphtotal",
}


def offer_field(row: Mapping[str, Any], field: str) -> Any:
    """An offer's value for a query field: aliases, the derived ``datacenter``, driver
    versions as the SDK encodes them."""
    name = ALIASES.get(field, field)
    if name == "datacenter":
        return row.get("hosting_type") == 1
    if name == "driver_version":
        return numeric_driver(row.get(name))
    return row.get(name)


def _country(value: Any) -> str:
    text = str(value or "")
    return text.rsplit(",", 1)[-1].strip().upper()


def _geo_equal(actual: Any, wanted: Any) -> bool:
    """A location equals its full text or its trailing country code."""
    if actual is None or wanted is None:
        return actual is wanted
    want = str(wanted).strip().upper()
    return str(actual).strip().upper() == want or _country(actual) == want


def numeric_driver(value: Any) -> Any:
    """The SDK sends driver versions as numbers (535.86.05 -> 535086005)."""
    if isinstance(value, str) and value.count(".") == 2:
        try:
            major, minor, patch = (int(p) for p in value.split("."))
        except ValueError:
            return value
        return major * 1_000_000 + minor * 1_000 + patch
    return value


EQUALITIES: dict[str, Equality] = {"geolocation": _geo_equal}


DERIVED_FIELDS = frozenset({"datacenter"})  # computed by the service, not stored on offers


def offer_misfit(offer: Mapping[str, Any], filters: Mapping[str, Mapping[str, Any]], *,
                 unknown_fits: bool = False) -> str | None:
    """The first filter of ``filters`` the offer fails, as text (None: all hold). A field
    the offer lacks fails (a warm instance is only reused when it provably fits), unless
    ``unknown_fits``: then only what is known can rule the offer out."""
    for field, ops in filters.items():
        name = ALIASES.get(field, field)
        if unknown_fits and name not in offer and (
                name not in DERIVED_FIELDS or "hosting_type" not in offer):
            continue
        if name not in offer and name not in DERIVED_FIELDS:
            return f"the offer has no {field}"
        actual = offer_field(offer, field)
        for op, wanted in ops.items():
            if not holds(op, actual, wanted, EQUALITIES.get(name)):
                return f"{field}={actual!r} fails {op} {wanted!r}"
    return None


def offer_fits(offer: Mapping[str, Any], filters: Mapping[str, Mapping[str, Any]]) -> bool:
    """Every filter holds for the offer (see :func:`offer_misfit`)."""
    return offer_misfit(offer, filters) is None
