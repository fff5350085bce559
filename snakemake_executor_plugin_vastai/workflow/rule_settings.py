"""Settings a rule overrides through its resources, and the image its container chooses.

``--vastai-image``, ``--vastai-max-price``, ``--vastai-disk``, ``--vastai-max-runtime``,
``--vastai-geolocation`` and ``--vastai-reliability`` apply to every job; a rule sets its
own through the resources ``vastai_image``, ``vastai_max_price``, ``vastai_disk``,
``vastai_max_runtime``, ``vastai_geolocation`` and ``vastai_reliability`` (so
``--set-resources`` and ``--default-resources`` work too). A rule's
``container: "docker://..."`` chooses its instance image when no ``vastai_image`` is set,
and Snakemake's standard ``runtime`` resource (minutes) caps a job's running time when
neither ``vastai_max_runtime`` nor ``--vastai-max-runtime`` does.

Pure functions: the values are checked with the same rules as the global options (so a
mistake fails before renting, naming the rule and resource) and merged onto them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from ..vastai.offers import OfferSettings
from .validation import (
    ConfigError,
    expand_geolocation,
    fraction,
    is_pending,
    parse_image_reference,
    positive,
    resource,
    to_number,
)

RULE_SETTINGS = ("vastai_image", "vastai_max_price", "vastai_disk", "vastai_max_runtime",
                 "vastai_geolocation", "vastai_reliability")
DOCKER_SCHEME = "docker://"


@dataclass(frozen=True)
class JobSettings:
    """One job's effective settings: the global ones with the rule's overrides."""

    image: str
    max_runtime: float  # seconds; 0 = no cap
    offer: OfferSettings


def _given(resources: Mapping[str, object], name: str) -> Any:
    value = resources.get(name)
    return None if value is None or is_pending(value) else value


def container_image(url: object, rule: str) -> str | None:
    """The Docker image of a rule's ``container:`` directive (None if it has none)."""
    if url is None or is_pending(url) or not str(url).strip():
        return None
    text = str(url).strip()
    if text.startswith(DOCKER_SCHEME):
        text = text[len(DOCKER_SCHEME):]
    elif "://" in text or text.endswith(".sif"):
        raise ConfigError(
            f"rule {rule}: container {url!r} is not a Docker image; Vast.ai instances run "
            "Docker images only: use docker://repo:tag or set the vastai_image resource")
    return parse_image_reference(text, f"rule {rule}: container")


def job_settings(*, image: str, max_runtime: float, offer: OfferSettings,
                 resources: Mapping[str, object], rule: str,
                 container_url: object = None) -> JobSettings:
    """Merge the rule's overrides onto the global settings (raises ConfigError)."""
    chosen = _given(resources, "vastai_image")
    if chosen is not None:
        image = parse_image_reference(chosen, resource(rule, "vastai_image"))
    else:
        image = container_image(container_url, rule) or image
    return JobSettings(image=image, max_runtime=runtime_cap(max_runtime, resources, rule),
                       offer=offer_overrides(offer, resources, rule))


def runtime_cap(global_cap: float, resources: Mapping[str, object], rule: str) -> float:
    """Seconds: ``vastai_max_runtime``, else ``--vastai-max-runtime``, else ``runtime``."""
    own = _given(resources, "vastai_max_runtime")
    if own is not None:
        value = to_number(own, resource(rule, "vastai_max_runtime"), "seconds, 0 = no cap")
        if value < 0:
            raise ConfigError(f"{resource(rule, 'vastai_max_runtime')}={own!r} cannot be "
                              "negative (seconds; 0 = no cap)")
        return value
    if global_cap:
        return global_cap
    minutes = _given(resources, "runtime")
    if minutes is None:
        return 0.0
    return positive(minutes, resource(rule, "runtime"), "minutes, as Snakemake counts them") * 60


def runtime_cap_origin(global_cap: float, resources: Mapping[str, object]) -> str:
    """Which setting the cap of :func:`runtime_cap` comes from, for messages."""
    if _given(resources, "vastai_max_runtime") is not None:
        return "the rule's vastai_max_runtime resource"
    if global_cap:
        return "--vastai-max-runtime"
    return "the rule's runtime resource"


def offer_overrides(offer: OfferSettings, resources: Mapping[str, object],
                    rule: str) -> OfferSettings:
    """The offer settings with the rule's price, disk, region and reliability."""
    changes: dict[str, Any] = {}
    price = _given(resources, "vastai_max_price")
    if price is not None:
        changes["max_price"] = positive(price, resource(rule, "vastai_max_price"),
                                        "the highest $/h per instance, e.g. 1.0")
    disk = _given(resources, "vastai_disk")
    if disk is not None:
        changes["disk_gb"] = positive(disk, resource(rule, "vastai_disk"), "GB, e.g. 40")
    geo = _given(resources, "vastai_geolocation")
    if geo is not None:
        expand_geolocation(geo, resource(rule, "vastai_geolocation"))
        changes["geolocation"] = geo.strip() or None
    reliability = _given(resources, "vastai_reliability")
    if reliability is not None:
        changes["reliability"] = fraction(reliability, resource(rule, "vastai_reliability"),
                                          "0 turns the filter off")
    return replace(offer, **changes) if changes else offer


def validate_rule_settings(rule: str, resources: Mapping[str, object],
                           container_url: object = None) -> None:
    """Check a job's overrides before anything is rented (raises ConfigError)."""
    from ..vastai.bids import interruptible_resource

    interruptible_resource(resources, rule)  # vastai_interruptible: true or false
    job_settings(image="unused", max_runtime=0.0, offer=OfferSettings(),
                 resources=resources, rule=rule, container_url=container_url)


def container_of(job: Any) -> object:
    """A job's container URL; a group's members must agree (Snakemake runs them together)."""
    members = list(job.jobs) if job.is_group() else [job]
    urls = {getattr(m, "container_img_url", None) for m in members}
    urls.discard(None)
    if len(urls) > 1:
        names = ", ".join(sorted(map(str, urls)))
        raise ConfigError(
            f"group {job.groupid}: its rules name different containers ({names}); one "
            "instance runs one image: give them the same container or split the group")
    return next(iter(urls), None)
