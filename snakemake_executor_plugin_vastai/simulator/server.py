"""The ``Simulator`` facade: a local Vast.ai on 127.0.0.1, started and stopped as one.

    with Simulator(SimConfig(seed=1)) as sim:
        sdk = vastai.VastAI(api_key=sim.api_key, server_url=sim.url)
        ...
        assert sim.truth()["alive_count"] == 0

``start()`` serves the REST API (see ``api.py`` and ``routes.py``) on a free port and
answers the base URL without a trailing slash (the SDK appends ``/api/...``). ``stop()``
stops the API, every instance's SSH server and every instance process, and removes the
temporary state directory; it is idempotent and leaves no process or port behind.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import secrets
import shutil
import tempfile
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import catalog
from .api import DOCUMENTED_INTERVALS, App, LogStore, RateLimiter, SimHTTPServer, Stats
from .exchanges import ExchangeLog
from .faults import FaultPlan
from .fleet import Fleet
from .market import Market
from .routes import Endpoints

log = logging.getLogger(__name__)

_sim_serial = itertools.count(1)

# The realistic profile, in seconds before ``time_scale``.
REAL_BOOT = (60.0, 300.0)
REAL_RATE_LIMIT = 0.25  # endpoints whose interval the description does not state
REAL_LOG_DELAY = 2.0


@dataclass
class SimConfig:
    """How the simulated Vast.ai behaves. The defaults are fast, for tests."""

    seed: int = 0
    boot_delay: float = 0.3  # seconds from create to running
    time_scale: float = 1.0  # multiplies the realistic profile's delays
    offers: Path | list[dict[str, Any]] | None = None  # None: the built-in catalogue
    rate_limit_interval: float = 0.0  # min seconds between calls per endpoint and key
    # Per-endpoint intervals by route key ("PUT /api/v0/asks/{id}/"), overriding the one above.
    rate_limit_intervals: dict[str, float] = field(default_factory=dict)
    state_dir: Path | None = None  # sandboxes and logs (default: a temp dir, removed)
    api_key: str | None = None  # default: random
    boot_delay_range: tuple[float, float] | None = None  # per-instance, seeded (realistic)
    log_delay: float = 0.4  # seconds a log URL answers 404 before the text is there
    credit: float = 100.0  # account credit in $, reduced by billing
    first_instance_id: int | None = None  # ids from here (seeded steps), not from the clock
    record_exchanges: bool = False  # keep every /api/ exchange in ``Simulator.exchanges``

    @classmethod
    def realistic(cls, time_scale: float = 1.0, **kw: Any) -> SimConfig:
        """Real-world timing times ``time_scale``: boots of 60-300 s (seeded per instance),
        the per-endpoint intervals Vast.ai's description states (1.0 s v1 listing, 2.0 s
        show, 3.0 s destroy, 4.5 s create, 5.5 s bid change) and 0.25 s for every other
        endpoint, per key; log URLs ready after 2 s."""
        lo, hi = REAL_BOOT
        config = cls(
            boot_delay=(lo + hi) / 2 * time_scale,
            time_scale=time_scale,
            rate_limit_interval=REAL_RATE_LIMIT * time_scale,
            rate_limit_intervals={k: v * time_scale for k, v in DOCUMENTED_INTERVALS.items()},
            boot_delay_range=(lo * time_scale, hi * time_scale),
            log_delay=min(REAL_LOG_DELAY * time_scale, 6.0),
        )
        return replace(config, **kw)


@dataclass
class _Running:
    """What exists only between start() and stop()."""

    http: SimHTTPServer
    thread: threading.Thread
    stopping: threading.Event = field(default_factory=threading.Event)


class Simulator:
    """A local Vast.ai: REST API, marketplace, instances as SSH sandboxes, ground truth."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self.api_key = self.config.api_key or secrets.token_hex(32)
        self.url = ""
        self.sim_id = f"{os.getpid()}n{next(_sim_serial)}"
        self.market = Market(catalog.load(self.config.offers, self.config.seed))
        self._own_state = self.config.state_dir is None
        self.state_dir = Path(self.config.state_dir or tempfile.mkdtemp(prefix="vastai-sim-"))
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.plan = FaultPlan(seed=self.config.seed)
        self.fleet = Fleet(
            market=self.market,
            plan=self.plan,
            state_dir=self.state_dir,
            sim_tag=self.sim_id,
            seed=self.config.seed,
            boot_delay_for=self._boot_delay_for,
            first_id=self.config.first_instance_id,
        )
        self.stats = Stats()
        self.logs = LogStore(self.config.log_delay)
        self.rate_limiter = RateLimiter(
            self.config.rate_limit_interval, self.config.rate_limit_intervals
        )
        self.exchanges = ExchangeLog() if self.config.record_exchanges else None
        self._running: _Running | None = None
        self._stopped = False
        self._lock = threading.Lock()

    # ----- life

    def start(self, port: int = 0) -> str:
        """Serve on 127.0.0.1:``port`` (0: a free one); returns the base URL."""
        with self._lock:
            if self._stopped:
                raise RuntimeError("a stopped Simulator cannot be restarted; make a new one")
            if self._running is not None:
                return self.url
            stopping = threading.Event()
            endpoints = Endpoints(
                fleet=self.fleet,
                market=self.market,
                plan=self.plan,
                logs=self.logs,
                base_url=lambda: self.url,
                api_key=self.api_key,
                credit=self.config.credit,
                truth=self.truth,
                add_fault=self.add_fault,
            )
            app = App(
                api_key=self.api_key,
                routes=endpoints.routes(),
                control=endpoints.control(),
                effect=self.plan.api_effect,
                lost_answer=self.plan.lost_answer,
                scoped=self.fleet.owner_of_key,
                rate_limiter=self.rate_limiter,
                stats=self.stats,
                stopping=stopping,
                exchanges=self.exchanges,
            )
            http = SimHTTPServer(("127.0.0.1", port), app)
            thread = threading.Thread(
                target=http.serve_forever,
                kwargs={"poll_interval": 0.02},
                name=f"vastai-sim-http-{self.sim_id}",
                daemon=True,
            )
            thread.start()
            self._running = _Running(http, thread, stopping)
            self.url = f"http://127.0.0.1:{http.server_address[1]}"
            log.info("Vast.ai simulator %s serving at %s", self.sim_id, self.url)
            return self.url

    def stop(self) -> None:
        """Stop the API and every instance; remove temporary state. Idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            running, self._running = self._running, None
        if running is not None:
            running.stopping.set()
            running.http.close()  # joins in-flight request threads
            running.thread.join(5.0)
        self.fleet.close()
        if self._own_state:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self) -> Simulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1]) if self.url else 0

    # ----- steering

    def add_fault(self, kind: str, **params: Any) -> None:
        """Add a fault (kinds and parameters: see ``faults.py``)."""
        fault = self.plan.add(kind, **params)
        if fault.instance_id is not None:
            self.fleet.add_fault(fault)

    def clear_faults(self) -> None:
        """Remove every fault not yet attached to an instance."""
        self.plan.clear()

    def create_foreign_instance(self, label: str = "someone-else") -> int:
        """A running instance on the account that belongs to no workflow; returns its id."""
        return self.fleet.create_foreign(label)

    # ----- observing

    def truth(self) -> dict[str, Any]:
        """The ground truth (also ``GET /_sim/truth``)."""
        rows = [i.truth() for i in self.fleet.everything()]
        return {
            "instances": rows,
            "created_count": len(rows),
            "alive_count": sum(1 for r in rows if r["alive"]),
            "preemptions": sum(r["preemptions"] for r in rows),  # outbid faults that fired
            **self.stats.snapshot(),
            "faults": self.plan.describe(),
            "available_offers": len(self.market.available_ids()),
        }

    def leftovers(self) -> dict[str, list[int]]:
        """Instance processes and SSH ports that outlived their instance (or the simulator)."""
        return self.fleet.leftovers()

    def instance_dir(self, instance_id: int) -> Path:
        """The sandbox (HOME and cwd) of an instance."""
        return self.state_dir / "instances" / str(instance_id)

    def _boot_delay_for(self, instance_id: int) -> float:
        """The configured delay, or a seeded draw per instance in the realistic profile."""
        span = self.config.boot_delay_range
        if span is None:
            return self.config.boot_delay
        rng = random.Random(f"vastai-sim-boot-{self.config.seed}-{instance_id}")
        return rng.uniform(*span)
