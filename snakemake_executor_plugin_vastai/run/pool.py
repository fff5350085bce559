"""Warm instances: the run's pool of booted, idle instances that serve the next job.

A boot on Vast.ai (image pull, container start) takes one to five minutes and
is billed. When a job succeeds and its outputs are home, its instance is given
back here instead of being destroyed (``lifecycle/job_machine.py``: ``gave_back``); the next
job whose needs it meets leases it (``leased``: searching -> uploading) and
skips searching, renting and booting. Among the fitting idle instances the
cheapest wins.

What "meets the job's needs" means: the job's own offer request (``offers.py``,
the same one its search would send: GPU model and count, RAM, CPU, disk,
price cap, region, reliability, the user's query, the machines it failed on)
is evaluated against the offer the instance was rented from (with Vast.ai's
filter semantics from ``vastai/query.py``, the simulator's own), and the image
and the rented disk must match too. Warm instances exist in SSH mode only: in
storage mode the container runs its one job from its launch arguments.

Price: an idle instance is not leased blindly. When the market has a cheaper
fitting offer free, keeping the idle instance costs its price premium over the
work it would do, and replacing it costs a boot at the cheaper price; the cheaper
of the two wins (``costs/warm.worth_keeping``), and the journal says which and why (the
lease's or the expiry's detail). The work is the run's median job time so far
times the queue share (jobs still to come that no instance holds, per instance of
the run): a long queue makes a dear instance worth replacing, a short one makes
a boot not worth paying.

Every move is journaled before it happens (``instance_machine.py``): giving
back (leased -> idle), leasing (a guarded idle -> leased, so two threads never
lease one instance) and expiring (idle -> destroying, then the one teardown).
An idle instance is torn down after ``--vastai-idle-timeout`` seconds, as soon as
no job that could use it may still come (``work_ahead.py``), when the run ends, on
Ctrl-C and when the run fails (``drain``). After a crash the next
run finds idle instances in the journal and tears them down (``recovery.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..journal.store import Journal, JournalError
from ..lifecycle import instance_life
from ..settings import DEFAULT_IDLE_TIMEOUT
from ..vastai.query import offer_misfit

# Seconds an idle instance waits for its next job by default. Vast.ai boots take 60-300 s
# (NOTES.md); waiting at most as long as the cheapest boot can never cost more than one
# avoided boot (the ski-rental bound), while the gap between a job's end and the next
# job's submission in Snakemake is a few seconds (benchmarks/reuse.py measures both).
# DEFAULT_IDLE_TIMEOUT (60 s) lives in settings.py, where --help shows it.
# Seconds a boot is taken to last until this run has measured one: the middle of the
# 60-300 s Vast.ai boots (NOTES.md).
DEFAULT_BOOT_ESTIMATE = 180.0
REAP_EVERY = 1.0  # seconds between looks for expired idle instances
NO_WORK_AHEAD = "no job that could use it is left to run"


@dataclass
class WarmInstance:
    """An instance of this run that may serve more than one job."""

    label: str
    instance_id: int
    offer: dict  # the full offer row it was rented from (what the match reads)
    image: str
    disk_gb: float
    endpoint: Any  # transports.ssh.channels.Endpoint
    idle_since: float = 0.0  # monotonic
    sources: str | None = None  # remote path of this run's source archive on it
    # rel path -> (remote path, sha256) of files that came home from it (a chain's inputs)
    files: dict[str, tuple[str, str]] = field(default_factory=dict)
    dirs: list[str] = field(default_factory=list)  # job directories on it (earlier jobs')

    @property
    def price(self) -> float:
        return float(self.offer.get("dph_total") or 0.0)


class Pool:
    """The idle instances of one run, and the reaper that ends them."""

    def __init__(self, journal: Journal, destroy: Callable[[int, str], None], log: Any, *,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT, enabled: bool = True,
                 work_ahead: Callable[[], bool] = lambda: True,
                 on_idle: Callable[[], None] = lambda: None,
                 on_gone: Callable[[dict], None] = lambda offer: None,
                 hand_over: Callable[[WarmInstance], bool] | None = None) -> None:
        self.journal = journal
        self._work_ahead = work_ahead  # may a job still come that an idle instance serves
        self._on_idle = on_idle  # wakes jobs waiting for an instance (market.Vacancies)
        self._on_gone = on_gone  # an idle instance is torn down: its offer's claim ends
        # --vastai-keep-warm: at the run's end an idle instance is handed over to the next
        # run (True) instead of torn down; None: nothing outlives the run
        self._hand_over = hand_over
        self.kept = 0  # instances handed over to the next run
        self.boots: list[float] = []  # seconds from create to booted, this run's instances
        self.job_times: list[float] = []  # seconds from running to home, this run's jobs
        self._destroy = destroy  # (instance id, label) -> the one teardown, in the background
        self.log = log
        self.idle_timeout = idle_timeout
        self.enabled = enabled
        self.leases = 0  # boots avoided
        self.gaps: list[float] = []  # seconds each leased instance had been idle
        self._idle: dict[str, WarmInstance] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None

    # -- leasing ----------------------------------------------------------------------
    def lease(self, job_id: str, request: Any, image: str,
              decide: Callable[[WarmInstance], tuple[bool, str]] | None = None,
              ) -> WarmInstance | None:
        """The cheapest idle instance that meets the job's request, leased in the journal;
        None if none fits (the job searches and rents as usual). ``decide`` says whether
        it is worth keeping at its price (``costs/warm.worth_keeping``); one that is not is torn
        down with the reason and None returned: the job rents the cheaper offer, and the
        other idle instances (dearer still) stay for jobs that find no such offer."""
        if not self.enabled:
            return None
        while True:
            with self._lock:
                idle = list(self._idle.values())
                fitting = sorted((w for w in idle if fits(w, request, image)),
                                 key=lambda w: w.price)
                if not fitting:
                    for w in idle:
                        self.log.info("idle instance does not fit the job", job=job_id,
                                      instance=w.instance_id, why=misfit(w, request, image),
                                      verbose=True)
                    return None
                warm = fitting[0]
            keep, why = (True, None) if decide is None else decide(warm)
            if not keep:
                self.expire(warm.label, why)
                return None
            with self._lock:
                if self._idle.pop(warm.label, None) is None:
                    continue  # expired or leased meanwhile: look again
            try:
                won = instance_life.lease(self.journal, warm.label, job_id, detail=why)
            except JournalError as exc:  # cannot journal the lease: it is not ours to use
                self.log.warning("cannot journal a lease; tearing the idle instance down",
                                 instance=warm.instance_id, error=str(exc))
                self._destroy(warm.instance_id, warm.label)
                continue
            if won:
                with self._lock:
                    self.leases += 1
                    self.gaps.append(time.monotonic() - warm.idle_since)
                return warm

    def give_back(self, warm: WarmInstance, job_id: str) -> bool:
        """A succeeded job's instance joins the pool (journaled first). One the pool
        refuses (it is off, the run is ending, the journal refuses) is torn down here, in
        the background, and False returned: its job has ended (``gave_back``), so the
        instance is the pool's to end."""
        if not self.enabled or self._stop.is_set():
            self._destroy(warm.instance_id, warm.label)
            return False
        try:
            instance_life.fire(self.journal, warm.label, "given_back", job_id=job_id,
                               leased_by=None, idle_since=time.time())
        except JournalError as exc:
            self.log.warning("cannot journal the instance as idle; tearing it down",
                             instance=warm.instance_id, error=str(exc))
            self._destroy(warm.instance_id, warm.label)
            return False
        warm.idle_since = time.monotonic()
        with self._lock:
            self._idle[warm.label] = warm
        if self._stop.is_set():  # the run ended meanwhile: drain may have missed it
            self.expire(warm.label, "the run ended")
            return True
        if not self._work_ahead():  # the run's last wave: waiting would only bill
            if not self._keep(warm.label):  # ... unless the next run is to adopt it
                self.expire(warm.label, NO_WORK_AHEAD)
            return True
        self._start_reaper()
        self._on_idle()
        return True

    def idle_offers(self) -> list[dict]:
        """The offers the idle instances were rented from (what a waiting job may lease)."""
        with self._lock:
            return [w.offer for w in self._idle.values()]

    def boot_estimate(self) -> float:
        """Seconds a fresh instance takes to boot: this run's median, else the default."""
        return statistics.median(self.boots) if self.boots else DEFAULT_BOOT_ESTIMATE

    def job_estimate(self) -> float | None:
        """Seconds a job keeps an instance busy: this run's median so far (None: unknown)."""
        return statistics.median(self.job_times) if self.job_times else None

    def idle_count(self) -> int:
        with self._lock:
            return len(self._idle)

    # -- ending idle instances ----------------------------------------------------------
    def expire(self, label: str, reason: str) -> bool:
        """Tear an idle instance down: idle -> destroying journaled (guarded: a lease that
        won is left alone), then the one teardown in the background."""
        with self._lock:
            warm = self._idle.pop(label, None)
        if warm is None:
            return False
        with contextlib.suppress(JournalError):  # the teardown journals its intent anyway
            instance_life.fire(self.journal, label, "expired", detail=reason)
        self.log.info("tearing down an idle instance", instance=warm.instance_id,
                      reason=reason, verbose=True)
        self._destroy(warm.instance_id, label)
        self._on_gone(warm.offer)
        return True

    def holds(self, label: str) -> bool:
        """Is this instance idle in the pool (its offer still the run's)?"""
        with self._lock:
            return label in self._idle

    def drain(self, reason: str, *, keep: bool = False) -> int:
        """The run ends (or is interrupted, or failed): no instance waits any longer here.
        ``keep`` (a normal end with --vastai-keep-warm): idle ones go to the next run."""
        self._stop.set()
        with self._lock:
            labels = list(self._idle)
        return sum(self.expire(label, reason) for label in labels
                   if not (keep and self._keep(label)))

    def adopt(self, warm: WarmInstance) -> None:
        """An earlier run's kept instance joins this run's pool (journaled by the caller)."""
        warm.idle_since = time.monotonic()
        with self._lock:
            self._idle[warm.label] = warm
        self._start_reaper()
        self._on_idle()

    def _keep(self, label: str) -> bool:
        """Hand an idle instance over to the next run; False: it is to be torn down."""
        if self._hand_over is None:
            return False
        with self._lock:
            warm = self._idle.get(label)
        if warm is None or not self._hand_over(warm):
            return False
        with self._lock:
            if self._idle.pop(label, None) is None:
                return False
            self.kept += 1
        return True

    def _start_reaper(self) -> None:
        with self._lock:
            if self._reaper is not None:
                return
            self._reaper = threading.Thread(target=self._reap, name="vastai-idle-reaper",
                                            daemon=True)
        self._reaper.start()

    def _reap(self) -> None:
        while not self._stop.wait(min(REAP_EVERY, max(self.idle_timeout / 4, 0.05))):
            now = time.monotonic()
            with self._lock:
                idle = list(self._idle.values())
            old = [w.label for w in idle if now - w.idle_since >= self.idle_timeout]
            for label in old:
                self.expire(label, f"idle for {self.idle_timeout:g}s (--vastai-idle-timeout)")
            if len(old) < len(idle) and not self._work_ahead():
                for w in idle:  # as a give-back in the last wave: the next run may adopt it
                    if w.label not in old and not self._keep(w.label):
                        self.expire(w.label, NO_WORK_AHEAD)


# -- price: keep an idle instance or replace it? -------------------------------------------
# -- matching: pure functions ------------------------------------------------------------
def fits(warm: WarmInstance, request: Any, image: str) -> bool:
    """Does this instance meet the job's request as its own search would have?"""
    return misfit(warm, request, image) is None


def misfit(warm: WarmInstance, request: Any, image: str) -> str | None:
    """Why the instance does not meet the job's request (None: it does)."""
    if warm.image != image:
        return f"image {warm.image}, not {image}"
    if warm.disk_gb + 1e-9 < float(request.storage_gb):
        return f"disk {warm.disk_gb:g} GB < {float(request.storage_gb):g} GB"
    return offer_misfit(warm.offer, request.query)


def file_digest(path: Path) -> str | None:
    """sha256 of a local file (None for directories and unreadable paths)."""
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()
