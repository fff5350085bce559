"""Interruptible (bid) instances: which jobs bid, at what price, and what outbid looks like.

Vast.ai rents a machine two ways from one create endpoint (``PUT /api/v0/asks/{id}/``):
on demand (no ``price`` in the body) or interruptible (a ``price`` in $/h, the bid, at
least the offer's ``min_bid``). The official SDK sends that field from
``build_create_instance_payload(price=... | bid_price=...)`` (vastai 1.9,
``vastai/api/instances.py``), searches bid offers with ``type: "bid"``
(``vastai/api/offers.py``, where ``interruptible`` is an alias for ``bid``), and changes a
bid with ``PUT /api/v0/instances/bid_price/{id}/`` and ``{"client_id": "me", "price": P}``
(``change_bid`` in the same module). dstack's Vast.ai backend bids the same way
(dstackai/dstack#4025, #4026).

An outbid instance is *stopped*, not destroyed: its processes die, its disk stays (and
keeps billing for storage), and it starts again by itself when its bid wins again. The
listing then shows ``actual_status == "stopped"`` with ``intended_status``, ``cur_state``
and ``next_state`` all ``"stopped"`` (dstack reads exactly that as an interruption,
dstackai/dstack#4037), and ``is_bid`` true. We never stop instances ourselves, so on a bid
instance any ``stopped`` is read as outbid.

Which jobs bid: every rule named by Snakemake's ``--preemptible-rules`` (no names: all
rules; Snakemake hands the executor ``remote_execution_settings.preemptible_rules``, as
the Google Batch executor reads it), or a rule whose ``vastai_interruptible`` resource is
true (false opts a rule out). The bid is ``--vastai-bid`` times the offer's ``min_bid``,
never above the price cap (``--vastai-max-price`` / ``vastai_max_price``, which bounds
``dph_total``: the bid plus the disk's hourly storage). After ``--preemptible-retries``
preemptions of one job (default :data:`DEFAULT_FALLBACK_AFTER`), its next instance is
rented on demand, unless ``--vastai-no-bid-fallback``. Preemptions are handled inside the
job: they never reach Snakemake as failures, so they never use up ``--retries``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..workflow.validation import ConfigError, is_pending, resource

DEFAULT_BID_FACTOR = 1.0
DEFAULT_GRACE = 300.0
DEFAULT_FALLBACK_AFTER = 3
HOURS_PER_MONTH = 720.0  # Vast.ai prices storage per GB-month of 30 days
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})


class Preempted(Exception):
    """The job's bid instance was outbid (stopped by Vast.ai); raised inside a step."""


class SelfStopped(Preempted):
    """The job's on-demand instance stopped itself: its watchdog saw no heartbeat (the run
    was away, see watchdog/agent.py). Handled as a preemption, except that the job's
    progress stands: the watchdog stops only once the job has ended, so the instance is
    started again and what is on its disk is used."""


@dataclass(frozen=True)
class BidSettings:
    """The run's bid options (validated)."""

    rules: frozenset[str] = frozenset()  # --preemptible-rules names
    all_rules: bool = False  # --preemptible-rules without names
    factor: float = DEFAULT_BID_FACTOR  # --vastai-bid: multiple of min_bid
    grace: float = DEFAULT_GRACE  # --vastai-preemption-grace, seconds
    fallback_after: int = DEFAULT_FALLBACK_AFTER  # --preemptible-retries
    fallback: bool = True  # off with --vastai-no-bid-fallback

    def interruptible(self, rule: str, resources: Mapping[str, object]) -> bool:
        """Whether a job of ``rule`` rents a bid instance (the resource wins)."""
        own = interruptible_resource(resources, rule)
        if own is not None:
            return own
        return self.all_rules or rule in self.rules

    def on_demand_now(self, preemptions: int) -> bool:
        """After enough preemptions a job falls back to an on-demand instance."""
        return self.fallback and preemptions >= self.fallback_after


def interruptible_resource(resources: Mapping[str, object], rule: str) -> bool | None:
    """The rule's ``vastai_interruptible`` resource as a bool (None if not given)."""
    value = resources.get("vastai_interruptible")
    if value is None or is_pending(value):
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise ConfigError(f"{resource(rule, 'vastai_interruptible')}={value!r} must be true or "
                      "false (rent an interruptible bid instance or not)")


def settings_from(executor_settings: Any, remote_settings: Any) -> BidSettings:
    """Read and check the bid options; ConfigError names the option at fault."""
    factor = getattr(executor_settings, "bid", None)
    factor = DEFAULT_BID_FACTOR if factor is None else factor
    grace = getattr(executor_settings, "preemption_grace", None)
    grace = DEFAULT_GRACE if grace is None else grace
    try:
        factor, grace = float(factor), float(grace)
    except (TypeError, ValueError):
        raise ConfigError("--vastai-bid and --vastai-preemption-grace must be numbers") from None
    if not factor >= 1.0:
        raise ConfigError(f"--vastai-bid={factor:g} must be at least 1 (a multiple of the "
                          "offer's min_bid; Vast.ai refuses bids below it)")
    if not grace >= 0:
        raise ConfigError(f"--vastai-preemption-grace={grace:g} must be 0 or more seconds")
    chosen = getattr(remote_settings, "preemptible_rules", None)
    retries = getattr(remote_settings, "preemptible_retries", None)
    if retries is not None and int(retries) < 0:
        raise ConfigError(f"--preemptible-retries={retries} cannot be negative")
    return BidSettings(
        rules=frozenset(getattr(chosen, "rules", None) or ()),
        all_rules=bool(getattr(chosen, "all", False)),
        factor=factor, grace=grace,
        fallback_after=DEFAULT_FALLBACK_AFTER if retries is None else int(retries),
        fallback=not bool(getattr(executor_settings, "no_bid_fallback", False)))


def storage_dph(offer: Mapping[str, Any], disk_gb: float) -> float:
    """$/h the rented disk costs, running or stopped (``storage_cost`` is $/GB-month)."""
    return float(offer.get("storage_cost") or 0.0) * float(disk_gb) / HOURS_PER_MONTH


def bid_price(offer: Mapping[str, Any], factor: float, max_price: float | None,
              disk_gb: float) -> float | None:
    """The bid ($/h) for ``offer``: ``factor`` x ``min_bid``, lowered to stay within the
    price cap (which bounds bid + storage); None if even ``min_bid`` breaks the cap."""
    minimum = offer.get("min_bid")
    if minimum is None:
        return None
    minimum = float(minimum)
    bid = minimum * factor
    if max_price is not None:
        bid = min(bid, float(max_price) - storage_dph(offer, disk_gb))
    if bid < minimum - 1e-12:
        return None
    return round(bid, 6)


def on_demand_dph(offer: Mapping[str, Any], disk_gb: float) -> float | None:
    """What the same machine costs per hour on demand (``dph_base`` plus storage)."""
    base = offer.get("dph_base")
    if base is None:
        return None
    return round(float(base) + storage_dph(offer, disk_gb), 6)


def is_outbid(row: Mapping[str, Any]) -> bool:
    """A bid instance that Vast.ai stopped (see the module docstring for the fields)."""
    if not row.get("is_bid"):
        return False
    status = str(row.get("actual_status") or "")
    if status == "exited":  # its command ended: not a preemption
        return False
    return status == "stopped" or (row.get("intended_status") == "stopped"
                                   and row.get("cur_state") == "stopped")


class InstanceLost(Preempted):
    """The idle instance a job leased from the run's pool is gone before the job's process
    started (its watchdog ended it while the run was away, or the host vanished): nothing
    of the job's work was on it, so the job rents another rather than failing."""


def self_stopped(row: Mapping[str, Any]) -> bool:
    """An on-demand instance stopped on request (its watchdog's, since the run never
    stops one): ``stopped`` and meant to be."""
    return (not row.get("is_bid") and str(row.get("actual_status") or "") == "stopped"
            and row.get("intended_status") == "stopped")


def default_preemptible_retries(workflow: Any) -> int | None:
    """Snakemake 9.27 makes ``--preemptible-retries`` the retry count of the preemptible
    rules and compares it with a number when such a job fails; not given, it is None and
    the comparison crashes Snakemake. Default it to ``--retries`` (what those rules would
    have had); read after :func:`settings_from`, so the fallback keeps its own default.
    Returns the value set, or None if nothing needed setting."""
    remote = getattr(workflow, "remote_execution_settings", None)
    chosen = getattr(remote, "preemptible_rules", None)
    if remote is None or chosen is None or getattr(remote, "preemptible_retries", 0) is not None:
        return None
    if not (getattr(chosen, "all", False) or getattr(chosen, "rules", None)):
        return None
    retries = getattr(getattr(workflow, "execution_settings", None), "retries", 0) or 0
    remote.preemptible_retries = int(retries)
    return int(retries)
