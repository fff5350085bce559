"""From plugin settings and one job's resources to a Vast.ai offer search.

Everything here is pure: no network, no files. The result, an
:class:`OfferRequest`, holds the body fields for ``POST /api/v0/bundles/``
(sent by the SDK's ``vastai.api.offers.search_offers`` with
``no_default=True``), plus the same search as a vastai query string for
logs. That string is not just for show: ``vastai search offers -n '<text>'
-o <order> --storage <storage_gb>`` runs the same search.

How each input becomes a filter:

========================  =====================================================
``gpu`` / ``nvidia_gpu``  ``num_gpus = N``: exactly N GPUs, at least 1, default 1
``gpu_model``             ``gpu_name = ...``, overrides ``--vastai-gpu-name``
threads                   ``cpu_cores_effective >= N``
``mem_mb``                ``cpu_ram >= MiB`` (see *Units*)
``disk_mb``               ``disk_space >= GB`` and the rented allocation
``vastai_query``          parsed onto the filters after ``--vastai-search-query``
``--vastai-max-price``    ``dph_total <= X`` (dph_total includes the storage allocation)
``--vastai-reliability``  ``reliability >= X``, left out for 0
``--vastai-geolocation``  ``geolocation in [...]``, region shortcuts expanded
(default)                 ``datacenter = true`` unless ``--vastai-no-datacenter``
(default)                 the SDK's ``verified/external/rentable/rented`` defaults
exclusions                ``machine_id notin [...]``, applied last; user queries cannot undo them
========================  =====================================================

User queries are applied the way the vastai CLI applies them: a filter
replaces the same operator on the same field (``reliability>=0.9``
overrides ``--vastai-reliability``), and ``field=any`` removes a field
(``verified=any`` also admits unverified hosts).

Units:

* ``mem_mb`` is in megabytes (10**6 bytes), as in Snakemake. The API's
  ``cpu_ram`` is in MiB. The SDK labels it MiB, and Vast.ai's listed RAM is
  the host's MemTotal in MiB. So the filter is ``ceil(mem_mb * 10**6 / 2**20)``
  MiB. In query-string form the vastai CLI multiplies ``cpu_ram`` by 1000
  (its "GB"), so the text shows that number divided by 1000.
  ``mem_mb=8000`` gives ``{"cpu_ram": {"gte": 7630}}`` and ``cpu_ram>=7.63``.
* ``disk_mb`` is in MB. Vast.ai's ``disk_space`` and the disk allocation
  are in GB, so it is divided by 1000. The SDK's help calls the allocation
  GiB. If that is right, the rented disk comes out ~7% larger than asked,
  never smaller.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

from vastai.api import query as sdk_query

from ..workflow.validation import (
    REGIONS,
    ConfigError,
    expand_geolocation,
    fraction,
    gpu_count,
    gpu_model,
    is_pending,
    megabytes,
    option,
    parse_filters,
    parse_order,
    positive,
    resource,
    thread_count,
)

__all__ = [
    "REGIONS",
    "SDK_DEFAULTS",
    "ConfigError",
    "OfferRequest",
    "OfferSettings",
    "build_offer_request",
    "describe",
    "ram_mib",
    "render_filters",
]

SDK_DEFAULTS: Mapping[str, Mapping[str, bool]] = MappingProxyType({
    "verified": {"eq": True},
    "external": {"eq": False},
    "rentable": {"eq": True},
    "rented": {"eq": False},
})  # fmt: skip
"""Filters ``vastai.api.offers.search_offers`` adds unless ``no_default``; we send them."""

MIB_PER_MB = 10**6 / 2**20
_OP_TEXT = {"eq": "=", "neq": "!=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<=",
            "in": " in ", "notin": " notin "}  # fmt: skip


@dataclass(frozen=True)
class OfferSettings:
    """The executor settings that shape the offer search (validated values)."""

    gpu_name: str | None = None
    max_price: float | None = None
    geolocation: str | None = None
    disk_gb: float = 40
    reliability: float = 0.98
    allow_hobbyist: bool = False
    order: str = "dph_total"
    search_query: str | None = None

    @classmethod
    def from_executor_settings(cls, s: Any) -> OfferSettings:
        """Read the executor settings object (missing attributes count as unset).

        Raises ConfigError for a bad value, like :func:`.validate_settings`.
        """

        def get(name: str, default: Any = None) -> Any:
            return getattr(s, name, default)

        name, price, reliability = get("gpu_name"), get("max_price"), get("reliability")
        geolocation, order, extra = get("geolocation"), get("order"), get("search_query")
        expand_geolocation(geolocation)
        parse_order("dph_total" if order is None else order)
        if extra is not None:
            parse_filters(extra, option("search_query"))
        return cls(
            gpu_name=None if name is None else gpu_model(name, option("gpu_name")),
            max_price=None if price is None else positive(price, option("max_price")),
            geolocation=geolocation.strip() if geolocation and geolocation.strip() else None,
            disk_gb=positive(get("disk", 40), option("disk")),
            reliability=fraction(
                0.98 if reliability is None else reliability, option("reliability")
            ),
            allow_hobbyist=bool(get("no_datacenter", False)),
            order="dph_total" if order is None else order.strip(),
            search_query=extra.strip() if extra and extra.strip() else None,
        )


@dataclass(frozen=True)
class OfferRequest:
    """One offer search, ready for ``vastai.api.offers.search_offers(no_default=True)``."""

    query: dict  # {field: {op: value}}, the SDK's defaults included
    order: list  # [[field, "asc" | "desc"], ...]
    limit: int
    storage_gb: float  # allocated_storage: the disk to rent, in GB
    text: str  # the same search in vastai query syntax


def gpu_key(name: str) -> str:
    """A GPU name as a person reads it: case, spaces, dashes and underscores ignored."""
    return re.sub(r"[\s_\-]+", "", name).lower()


def requested_gpu_name(request: OfferRequest) -> str | None:
    """The GPU name the request asks for with ``eq`` (None: any)."""
    value = (request.query.get("gpu_name") or {}).get("eq")
    return None if value is None else str(value)


def with_gpu_name(request: OfferRequest, name: str) -> OfferRequest:
    """The same request asking for the GPU under ``name`` (the market's spelling)."""
    old = requested_gpu_name(request)
    query = {**request.query, "gpu_name": {**request.query["gpu_name"], "eq": name}}
    text = request.text if old is None else request.text.replace(
        old.replace(" ", "_"), name.replace(" ", "_")).replace(old, name)
    return replace(request, query=query, text=text)


def build_offer_request(
    settings: OfferSettings,
    resources: Mapping[str, object],
    threads: int = 1,
    *,
    rule: str = "?",
    exclude_machines: Iterable[int] = (),
    limit: int = 20,
) -> OfferRequest:
    """The search for the cheapest offer (by ``settings.order``) that can run the job.

    Raises ConfigError naming the setting or the rule and resource at fault.
    ``exclude_machines`` are machines that already failed this job; they are
    never offered again.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    _refuse_pending(resources, rule)
    storage = storage_gb(settings.disk_gb, megabytes(resources, "disk_mb", rule))
    ours = _settings_filters(settings) | _resource_filters(settings, resources, threads, rule)
    ours["disk_space"] = {"gte": storage}
    query = {field: dict(ops) for field, ops in SDK_DEFAULTS.items()} | ours
    texts = [render_filters(query)]
    for text, culprit in _user_queries(settings, resources, rule):
        query = parse_filters(text, culprit, query)
        texts.append(str(text).strip())
    excluded = _exclusion(query, exclude_machines)
    if excluded:
        query["machine_id"] = {**query.get("machine_id", {}), **excluded}
        texts.append(render_filters({"machine_id": excluded}))
    return OfferRequest(
        query=query,
        order=parse_order(settings.order),
        limit=int(limit),
        storage_gb=storage,
        text=" ".join(texts),
    )


def storage_gb(disk_gb: float, disk_mb: float | None) -> float:
    """Disk to rent: ``--vastai-disk``, or the job's ``disk_mb`` when that is larger."""
    return max(float(disk_gb), (disk_mb or 0) / 1000)


def ram_mib(mem_mb: float) -> int:
    """Snakemake's ``mem_mb`` (10**6 bytes) as Vast.ai's ``cpu_ram`` unit, MiB, rounded up."""
    return math.ceil(mem_mb * MIB_PER_MB - 1e-9)


READ_RESOURCES = ("gpu", "nvidia_gpu", "gpu_model", "mem_mb", "disk_mb", "vastai_query")


def _refuse_pending(resources: Mapping[str, object], rule: str) -> None:
    """Early validation skips "<TBD>" values, but the search must not.

    Snakemake evaluates every resource before it submits a job, so a "<TBD>"
    here is unexpected. Ignoring it could rent the wrong machine.
    """
    for name in READ_RESOURCES:
        if is_pending(resources.get(name)):
            raise ConfigError(
                f"{resource(rule, name)} is still <TBD> (not evaluated by "
                "Snakemake), so no offer can be chosen for it"
            )


def _settings_filters(settings: OfferSettings) -> dict[str, dict[str, Any]]:
    filters: dict[str, dict[str, Any]] = {}
    if not settings.allow_hobbyist:
        filters["datacenter"] = {"eq": True}
    reliability = fraction(settings.reliability, option("reliability"))
    if reliability > 0:
        filters["reliability"] = {"gte": reliability}
    if settings.max_price is not None:
        filters["dph_total"] = {"lte": positive(settings.max_price, option("max_price"))}
    countries = expand_geolocation(settings.geolocation)
    if countries:
        filters["geolocation"] = {"in": list(countries)}
    return filters


def _resource_filters(
    settings: OfferSettings, resources: Mapping[str, object], threads: int, rule: str
) -> dict[str, dict[str, Any]]:
    filters: dict[str, dict[str, Any]] = {"num_gpus": {"eq": gpu_count(resources, rule)}}
    model = resources.get("gpu_model")
    if model is not None:
        name = gpu_model(model, resource(rule, "gpu_model"))
    elif settings.gpu_name is not None:
        name = gpu_model(settings.gpu_name, option("gpu_name"))
    else:
        name = None
    if name:
        filters["gpu_name"] = {"eq": name.replace("_", " ")}  # the API spells it with spaces
    filters["cpu_cores_effective"] = {"gte": thread_count(threads, rule)}
    mem_mb = megabytes(resources, "mem_mb", rule)
    if mem_mb:
        filters["cpu_ram"] = {"gte": ram_mib(mem_mb)}
    return filters


def _user_queries(
    settings: OfferSettings, resources: Mapping[str, object], rule: str
) -> list[tuple[object, str]]:
    """(text, culprit) of the extra filters, the rule's own last so that it wins."""
    candidates = [
        (settings.search_query, option("search_query")),
        (resources.get("vastai_query"), resource(rule, "vastai_query")),
    ]
    return [
        (text, culprit)
        for text, culprit in candidates
        if text is not None and not (isinstance(text, str) and not text.strip())
    ]


def _exclusion(query: Mapping[str, Any], machines: Iterable[int]) -> dict[str, list[int]]:
    """``{"notin": [...]}`` for machine_id, merged with any notin the user wrote."""
    ids = {int(m) for m in machines}
    if not ids:
        return {}
    ids.update(query.get("machine_id", {}).get("notin") or ())
    return {"notin": sorted(ids)}


# -- rendering -------------------------------------------------------------------------
def render_filters(filters: Mapping[str, Mapping[str, Any]], *, shorten: int = 0) -> str:
    """Filters in vastai query syntax; the SDK's parser turns it back into ``filters``.

    With ``shorten``, lists longer than that are cut ("[AL,AD,... 45 in all]").
    """
    return " ".join(
        f"{field}{_OP_TEXT[op]}{_render_value(field, value, shorten)}"
        for field, ops in filters.items()
        for op, value in ops.items()
    )


def _render_value(field: str, value: Any, shorten: int) -> str:
    if isinstance(value, list):
        shown = [_render_value(field, v, 0) for v in value]
        if shorten and len(shown) > shorten:
            return f"[{','.join(shown[:shorten])},... {len(shown)} in all]"
        return f"[{','.join(shown)}]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return value.replace(" ", "_")
    number = value / sdk_query.offers_mult.get(field, 1)
    return str(int(number)) if float(number).is_integer() else repr(float(number))


def describe(request: OfferRequest) -> str:
    """A short, one-line form of the search for logs and errors.

    It leaves out the SDK defaults when unchanged and shortens long lists (a
    region expands to dozens of countries).
    """
    shown = {field: ops for field, ops in request.query.items()
             if SDK_DEFAULTS.get(field) != ops}  # fmt: skip
    order = ",".join(field + ("-" if way == "desc" else "") for field, way in request.order)
    disk = f"{request.storage_gb:g}"
    return f"{render_filters(shown, shorten=4)} (order {order}, disk {disk} GB)"
