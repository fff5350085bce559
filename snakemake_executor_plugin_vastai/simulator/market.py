"""The marketplace: which offers are available, search, and renting an offer.

An offer is single-use. Renting it removes it from search until its instance is destroyed,
and it takes its machine's GPUs: other offers of the same machine that need more GPUs than
are left disappear too. An offer can also be *retired* for good (its machine vanished) or
taken by *someone else* (the ``offer_taken`` fault).

Search (``POST /api/v0/bundles/``) takes the SDK's query dict: ``{field: {op: value}}``
filters on any offer field, the SDK's aliases (``dph`` -> ``dph_total``, ``cuda_vers`` ->
``cuda_max_good``, ...), the derived ``datacenter`` (from ``hosting_type``), plus the keys
``order``, ``type`` (``on-demand``/``bid``/``reserved``), ``limit`` and
``allocated_storage``. ``geolocation`` equality also accepts a bare country code
(``geolocation in [DE, PL]`` matches ``"Germany, DE"``), case-insensitively. A filter or
ordering on a field offers do not have is answered with HTTP 400: stricter than the real
service may be, so that a typo cannot silently filter nothing.
"""

from __future__ import annotations

import threading
from typing import Any

from ..vastai.query import (
    ALIASES,
    EQUALITIES,
    QueryError,
    matches,
    numeric_driver,
    offer_field,
    parse_direction,
    sort_rows,
    validate_filters,
)
from . import catalog

# Keys of a search body that are not filters.
RESERVED = frozenset({"order", "type", "limit", "allocated_storage", "disable_bundling"})
SEARCH_TYPES = {"on-demand": False, "ask": False, "reserved": False, "bid": True}
# Without a limit the service answers a bounded page (assumed; the plugin always sets one).
DEFAULT_LIMIT = 64
FOREIGN = "foreign"


class OfferGone(LookupError):
    """The offer does not exist or is not available (answered as ``no_such_ask``)."""


class Market:
    """The offers and who holds them. Thread-safe."""

    def __init__(self, offers: list[dict[str, Any]]) -> None:
        self._lock = threading.Lock()
        self._offers: dict[int, dict[str, Any]] = {int(o["id"]): dict(o) for o in offers}
        self._holders: dict[int, Any] = {}  # offer id -> instance id or FOREIGN
        self._retired: set[int] = set()
        self._machine_gpus: dict[int, int] = {}
        self._fields = {"datacenter"}.union(
            *(catalog.price(o, catalog.DEFAULT_STORAGE_GB) for o in self._offers.values())
        )
        for o in self._offers.values():
            mid = int(o["machine_id"])
            self._machine_gpus[mid] = max(self._machine_gpus.get(mid, 0), int(o["num_gpus"]))

    # ----- availability

    def _used_gpus(self, machine_id: int) -> int:
        return sum(
            int(self._offers[oid]["num_gpus"])
            for oid in self._holders
            if int(self._offers[oid]["machine_id"]) == machine_id
        )

    def _available(self, offer: dict[str, Any]) -> bool:
        oid, mid = int(offer["id"]), int(offer["machine_id"])
        if oid in self._holders or oid in self._retired or not offer.get("rentable", True):
            return False
        return self._used_gpus(mid) + int(offer["num_gpus"]) <= self._machine_gpus[mid]

    def available_ids(self) -> list[int]:
        """Ids of the offers a search could return right now (for tests and truth)."""
        with self._lock:
            return sorted(oid for oid, o in self._offers.items() if self._available(o))

    # ----- search

    def search(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """Offers matching the SDK's search body; raises QueryError on a bad query."""
        if not isinstance(body, dict):
            raise QueryError("search body must be a JSON object")
        kind = str(body.get("type") or "on-demand")
        if kind not in SEARCH_TYPES:
            raise QueryError(f"unknown offer type {kind!r}")
        storage = _number(
            body.get("allocated_storage", catalog.DEFAULT_STORAGE_GB), "allocated_storage"
        )
        limit = int(_number(body.get("limit", DEFAULT_LIMIT), "limit"))
        filters = validate_filters({k: v for k, v in body.items() if k not in RESERVED})
        filters = self._prepare_filters(filters)
        order = _parse_order(body.get("order"))
        with self._lock:
            candidates = [o for o in self._offers.values() if self._available(o)]
        priced = [catalog.price(o, storage, bid=SEARCH_TYPES[kind]) for o in candidates]
        hits = [o for o in priced if matches(o, filters, offer_field, EQUALITIES)]
        for field, _ in order:
            self._known(field)
        ranked = sort_rows(sorted(hits, key=lambda o: o["id"]), order, offer_field)
        return [dict(o) for o in ranked[: max(limit, 0)]]

    def _prepare_filters(self, filters: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Resolve aliases, reject unknown fields, make driver versions comparable."""
        prepared: dict[str, dict[str, Any]] = {}
        for field, ops in filters.items():
            name = self._known(field)
            if name == "driver_version":
                ops = {op: numeric_driver(v) for op, v in ops.items()}
            prepared.setdefault(name, {}).update(ops)
        return prepared

    def _known(self, field: str) -> str:
        """The canonical name of an offer field; QueryError for a field offers lack."""
        name = ALIASES.get(field, field)
        if name not in self._fields:
            raise QueryError(f"unknown offer field {field!r}")
        return name

    # ----- renting

    def take(self, offer_id: int, holder: Any) -> dict[str, Any]:
        """Rent the offer for ``holder``; returns the offer. Raises OfferGone."""
        with self._lock:
            offer = self._offers.get(offer_id)
            if offer is None or not self._available(offer):
                raise OfferGone(offer_id)
            self._holders[offer_id] = holder
            return dict(offer)

    def offer(self, offer_id: int) -> dict[str, Any] | None:
        """A copy of the offer (available or not), None if unknown."""
        with self._lock:
            found = self._offers.get(offer_id)
            return dict(found) if found is not None else None

    def release(self, offer_id: int) -> None:
        """The instance on this offer is gone: the offer is back on the market."""
        with self._lock:
            self._holders.pop(offer_id, None)

    def retire(self, offer_id: int) -> None:
        """The machine behind this offer vanished: never offer it again."""
        with self._lock:
            self._retired.add(offer_id)

    def snatch(self, offer_id: int) -> bool:
        """Someone else rents the offer (fault ``offer_taken``); False if it was not free."""
        with self._lock:
            offer = self._offers.get(offer_id)
            if offer is None or not self._available(offer):
                return False
            self._holders[offer_id] = FOREIGN
            return True

    def first_available(self) -> int | None:
        """The lowest available offer id (for foreign instances)."""
        ids = self.available_ids()
        return ids[0] if ids else None


def _number(value: Any, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise QueryError(f"{name} must be a number") from None


def _parse_order(order: Any) -> list[tuple[str, bool]]:
    """``[[field, "asc"|"desc"], ...]`` (a bare field name is ascending)."""
    if order is None:
        return []
    if not isinstance(order, list):
        raise QueryError("order must be a list of [field, direction]")
    parsed = []
    for item in order:
        if isinstance(item, str):
            parsed.append((ALIASES.get(item, item), False))
        elif isinstance(item, list | tuple) and item:
            direction = item[1] if len(item) > 1 else "asc"
            parsed.append((ALIASES.get(str(item[0]), str(item[0])), parse_direction(direction)))
        else:
            raise QueryError(f"bad order item {item!r}")
    return parsed
