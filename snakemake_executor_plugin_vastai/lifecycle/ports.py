"""What one job's steps may touch: narrow ports, not the whole run.

A :class:`~.driver.JobDriver` sees only its :class:`JobPorts`: the offer market
(``market.py``), the instances API (``instances.py``), the journal, its own
job spec (``jobspec.py``), the settings that bound its steps, a logger, and a
transport factory (``transports/``: SSH mode or storage mode). ``runtime.py``
builds them; tests build them from a simulator and a journal alone, without
Snakemake (``tests/unit/lifecycle/test_driver.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..journal.store import Journal
    from ..run.logs import PluginLogger
    from ..run.pool import Pool
    from ..settings import RunSettings
    from ..transports import Transport
    from ..vastai.instances import Instances
    from ..vastai.market import OfferMarket
    from ..watchdog.feeder import HeartbeatFeeder
    from ..workflow.jobspec import JobSpec


@dataclass(frozen=True)
class JobPorts:
    """The narrow interfaces of one job."""

    run_id: str
    journal: Journal
    market: OfferMarket
    instances: Instances
    spec: JobSpec
    settings: RunSettings
    log: PluginLogger
    transport: Callable[[Any], Transport]  # made per job, with its driver
    on_end: Callable[[Any], None] = lambda model: None  # the run's bookkeeping
    pool: Pool | None = None  # warm instances (pool.py); None: one instance per job
    # Jobs still to come per instance of the run (>= 1): how much work an idle instance
    # would do if kept (costs/warm.worth_keeping)
    queue_share: Callable[[], float] = lambda: 1.0
    feeder: HeartbeatFeeder | None = None  # the watchdogs' heartbeat (watchdog/feeder.py)
