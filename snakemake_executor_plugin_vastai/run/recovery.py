"""After a crash: find what earlier runs left, resume what can be resumed, destroy the rest.

When a run starts, before it rents anything, :meth:`Recovery.reconcile` reads
the journal's unfinished jobs and possibly-alive instances and compares them
with ONE listing of the account's instances carrying this workflow's label
prefix (matched by id and by label, so an instance whose id never reached the
journal is found too). Then, by policy (``--vastai-on-restart``):

``resume`` (default)
    A live instance whose journaled job Snakemake will run again (same
    fingerprint) is kept for that job: when Snakemake submits it, the job is
    re-attached (reconnect with the earlier run's key and pinned host key; a
    still-running job is followed to its end, a finished one goes straight to
    downloading). No second instance is rented.

    *When the rest is destroyed*: instances whose job Snakemake does not plan
    to run at all are destroyed at once, at start. Instances whose job is
    planned but whose inputs are not there yet cannot be claimed either (the
    fingerprint covers the inputs), so they go at start too. The remaining
    claimable ones wait for their job, which Snakemake schedules as soon as
    its inputs are ready; whatever is still unclaimed when the run ends is
    destroyed then.

``destroy``
    Every live instance from earlier runs is destroyed at start.

Earlier jobs that are not resumed are driven to ``cancelled`` through the
same state machine (``cancel`` -> ``destroying``), so the journal never keeps a
job that looks active forever. A job whose destroy was requested but never
confirmed (a crash while destroying) is finished the same way: its listed
instance is torn down, never taken for "nothing was rented".

Only the work of provably dead runs is touched (``liveness.py``): two runs in
one directory each finish their own jobs. Instances that no journal row owns
(``listing.py``: duplicates of a label after a lost create answer, unknown
labels) are torn down as strays; a live run's own strays are left to its
end-of-run sweep. Every teardown goes through ``teardown.py``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..lifecycle import instance_life
from . import fingerprint as fingerprints
from . import listing
from . import liveness as leases
from .keys import KeyFileError, RunKey

if TYPE_CHECKING:
    from ..journal.store import Journal
    from ..vastai.api import VastAPI
    from .logs import PluginLogger

# (earlier run's job row, its instance id or None, its label or None): drive it to
# cancelled through the job machine, destroying the instance
CloseOldJob = Callable[[dict, "int | None", "str | None"], None]
# (instance id, label=..., stray=..., reason=...): the one teardown, in the background
DestroyUntracked = Callable[..., None]

POLICIES = ("resume", "destroy")


@dataclass
class Claim:
    """A live instance of an earlier run, waiting for its job to be scheduled again."""

    job: dict  # the earlier run's job row
    instance: dict  # its journaled instance row
    row: dict | None  # what the listing says about the instance now (None: not listed)
    key: RunKey | None  # the earlier run's SSH key (None: missing, reattach impossible)


class Recovery:
    """Reconciles the journal with Vast.ai when a run starts, and hands out claims."""

    def __init__(self, journal: Journal, api: VastAPI, *, run_id: str, log: PluginLogger,
                 key_dir: Path, close_old_job: CloseOldJob,
                 destroy_untracked: DestroyUntracked, policy: str = "resume",
                 adopt_kept: Callable[[dict, dict], bool] = lambda row, listed: False,
                 resume_gone: Callable[[], bool] = lambda: False) -> None:
        if policy not in POLICIES:
            raise ValueError(f"--vastai-on-restart must be one of {', '.join(POLICIES)}")
        self.journal = journal
        self.api = api
        self.run_id = run_id
        self.log = log
        self.key_dir = key_dir
        self._close_old_job = close_old_job
        self._destroy_untracked = destroy_untracked
        self._adopt_kept = adopt_kept  # --vastai-keep-warm: an earlier run's kept instance
        # storage mode: a job whose instance is gone may be done (its outputs in the bucket)
        self._resume_gone = resume_gone
        self._gone_unasked: set[str] = set()  # labels gone with no destroy asked for
        self.policy = policy
        self._claims: dict[str, Claim] = {}
        self._lock = threading.Lock()
        self.resumed = 0
        self.destroyed_at_start = 0
        self.adopted = 0  # instances kept warm by an earlier run, now in this run's pool

    # -- at start ---------------------------------------------------------------------
    def reconcile(self, scheduled: dict[str, dict[str, str]]) -> None:
        """Compare journal and API; keep claimable instances, tear the others down.

        ``scheduled`` maps the fingerprints of the jobs Snakemake plans to run whose
        inputs exist now to their parts (computed by the caller from the DAG).
        Only the work of provably dead runs is touched (``liveness.py``).
        """
        journal = self.journal
        dead = self._dead_runs()
        journal.close_transfers(dead)  # a crash left them "in flight" (progress.py)
        owners = journal.instance_owner_runs()
        old_jobs = [j for j in journal.unfinished_jobs(exclude_run=self.run_id)
                    if j["run_id"] in dead]
        maybe_alive = [r for r in journal.instances_possibly_alive()
                       if owners.get(r["label"], r["run_id"]) in dead]
        first_run = len(journal.runs()) <= 1
        if not old_jobs and not maybe_alive and not journal.strays_possibly_alive() \
                and not first_run and not journal.adopted_after_loss:
            return
        found = self.api.list_instances(journal.label_prefix)
        # The journal is read after the listing: a live run journals a label before its
        # create call, so every instance in the listing has its row by now.
        matched = listing.match(journal.instances(), found, journal.label_prefix,
                                unknown_are_ours=journal.adopted_after_loss)
        owners = journal.instance_owner_runs()
        alive = self._settle(matched, owners, dead)
        self._destroy_strays(matched.strays, owners, dead, found)
        handled: set[str] = set()
        owners = journal.instance_owner_runs()
        for job in old_jobs:
            if owners.get(job.get("label") or "", self.run_id) not in (*dead,
                                                                          self.run_id):
                continue  # another live run took this job's instance over first
            entry = alive.get(job.get("label") or "")
            claim = self._claim_for(job, entry)
            if claim is not None and self.policy == "resume" and job["fingerprint"] in scheduled:
                with self._lock:
                    self._claims.setdefault(job["fingerprint"], claim)
            else:
                self._say_why(job, entry, scheduled)
                self._close(job, entry)
            if job.get("label"):
                handled.add(job["label"])
        self._close_orphan_instances(alive, handled)
        if journal.adopted_after_loss:  # the lost journal's leftovers are settled now
            journal.clear_adopted_after_loss()
        self.log.info("reconciled earlier runs", unfinished_jobs=len(old_jobs),
                          live_instances=len(alive), kept_for_resume=len(self._claims),
                          policy=self.policy)

    def _dead_runs(self) -> set[str]:
        """Earlier runs that are provably over; say which live ones are left alone."""
        dead = set()
        for run in self.journal.runs():
            if run["id"] == self.run_id:
                continue
            if leases.is_provably_dead(run):
                dead.add(run["id"])
            elif run.get("ended_at") is None:
                self.log.info("another run of this workflow is still running here or on "
                                  "another host; its jobs and instances are left to it",
                                  other_run=run["id"], pid=run.get("pid"),
                                  host=run.get("hostname"))
        return dead

    def _settle(self, matched: listing.Matched, owners: dict[str, str],
                dead: set[str]) -> dict[str, tuple[dict, dict]]:
        """Dead runs' rows: mark the unlisted gone, learn ids found by label; the living
        ones this run took over (``Journal.take_over``), to resume or tear down."""
        journal = self.journal
        for row in matched.gone:
            if owners.get(row["label"], row["run_id"]) in dead:
                if row.get("destroy_requested_at") is None and row.get("instance_id"):
                    self._gone_unasked.add(row["label"])  # it went by itself
                instance_life.destroyed(journal, label=row["label"])
        for stray in journal.strays_possibly_alive():
            if stray["instance_id"] not in {s.instance_id for s in matched.strays}:
                instance_life.destroyed(journal, instance_id=int(stray["instance_id"]))
        alive: dict[str, tuple[dict, dict]] = {}
        for label, (row, listed) in matched.alive.items():
            if owners.get(label, row["run_id"]) not in dead:
                continue
            # Journaled before acting, and only one live run wins it: the other leaves it.
            if not journal.take_over(label, self.run_id, from_runs=dead):
                continue
            if row.get("instance_id") is None:
                instance_life.created(journal, label, int(listed["id"]))
                row = {**row, "instance_id": int(listed["id"])}
            alive[label] = (row, listed)
        return alive

    def _destroy_strays(self, strays: list[listing.Stray], owners: dict[str, str],
                        dead: set[str], found: list[dict]) -> None:
        """Instances no journal row owns: torn down, unless a live run's label (that run
        sweeps its own at its end)."""
        for stray in strays:
            if not stray.known:
                self.log.warning(
                    "an instance carries this workflow's label prefix but is not in its "
                    "journal (a copy of this directory elsewhere?); left alone. If it is a "
                    "leftover, 'journal cleanup --orphans' destroys it once its watchdog has "
                    "stopped it, 'journal cleanup' at once", instance=stray.instance_id,
                    label=stray.label)
                continue
            owner = owners.get(stray.label)
            if owner is not None and owner not in dead and owner != self.run_id:
                continue
            self._destroy_untracked(stray.instance_id, stray=stray.listed,
                                       reason=stray.reason)
            self.destroyed_at_start += 1

    def _claim_for(self, job: dict, entry: tuple[dict, dict] | None) -> Claim | None:
        if entry is None:
            return self._claim_gone(job)
        instance, listed = entry
        if instance.get("destroy_requested_at") is not None:
            return None  # a destroy was asked for: only finishing it is right
        try:
            key = RunKey.load_or_create(self.key_dir, job["run_id"]) \
                if (self.key_dir / job["run_id"]).exists() else None
        except KeyFileError:
            key = None
        return Claim(job=job, instance=instance, row=listed, key=key)

    def _claim_gone(self, job: dict) -> Claim | None:
        """Storage mode: the container ran the job from its start, and its watchdog
        destroys a succeeded job's instance that no run picked up. So a job whose instance
        is gone (not by a destroy this workflow asked for) is claimed all the same: the
        resumed job finds it gone and the bucket decides (outputs written since the
        instance was created: done; else it runs again)."""
        if not self._resume_gone() or job.get("label") not in self._gone_unasked:
            return None
        instance = self.journal.instance_row(label=job["label"])
        if not instance or instance.get("instance_id") is None:
            return None
        return Claim(job=job, instance=instance, row=None, key=None)

    def _say_why(self, job: dict, entry: tuple[dict, dict] | None,
                 scheduled: dict[str, dict[str, str]]) -> None:
        """A live instance not re-attached: name what changed, if the job is scheduled."""
        if entry is None or self.policy != "resume":
            return
        if entry[0].get("destroy_requested_at") is not None:
            self.log.info("finishing an earlier run's requested destroy", rule=job["rule"],
                              old_job=job["id"], instance=entry[0].get("instance_id"))
            return
        old = _parts(job)
        for parts in scheduled.values():
            if old and parts.get("identity") == old.get("identity"):
                what = ", ".join(fingerprints.changed(old, parts)) or "its fingerprint"
                self.log.warning(
                    "not re-attaching: the job changed since the run that started it; its "
                    "instance is torn down and the job runs anew", rule=job["rule"],
                    old_job=job["id"], instance=entry[0].get("instance_id"), changed=what)
                return

    def _close(self, job: dict, entry: tuple[dict, dict] | None) -> None:
        """Drive an earlier job to cancelled through the one teardown: its live instance if
        listed (also when a destroy was already requested), else nothing to destroy."""
        instance_id = int(entry[0]["instance_id"]) if entry else None
        if entry is not None:
            self.destroyed_at_start += 1
        self._close_old_job(job, instance_id, entry[0]["label"] if entry else None)

    def _close_orphan_instances(self, alive: dict[str, tuple[dict, dict]],
                                handled: set[str]) -> None:
        """Live instances of dead runs whose job is no longer unfinished (e.g. the job row
        reached a terminal state while its destroy was never confirmed)."""
        claimed = {c.instance["label"] for c in self._claims.values()}
        for label, (instance, listed) in alive.items():
            if label in claimed or label in handled:
                continue
            if self._adopt_kept(instance, listed):
                self.adopted += 1
                continue
            self._destroy_untracked(int(instance["instance_id"]), label=label)
            self.destroyed_at_start += 1

    # -- while running ---------------------------------------------------------------------
    def claim(self, fingerprint: str) -> Claim | None:
        """The live instance kept for a job with this fingerprint, taken at most once."""
        with self._lock:
            return self._claims.pop(fingerprint, None)

    # -- at the end ---------------------------------------------------------------------
    def release_unclaimed(self) -> None:
        """The run ends: nobody claimed these, so they stop billing now."""
        with self._lock:
            leftovers, self._claims = list(self._claims.values()), {}
        for claim in leftovers:
            self._close(claim.job, (claim.instance, claim.row))


def _parts(job: dict) -> dict[str, str]:
    try:
        parts = json.loads(job.get("fingerprint_parts") or "{}")
    except ValueError:
        return {}
    return parts if isinstance(parts, dict) else {}


def scheduled_fingerprints(workflow: Any, workdir: Path,
                           parts_of: Any) -> dict[str, dict[str, str]]:
    """Fingerprint -> parts of the jobs Snakemake plans to run whose inputs all exist now."""
    dag = getattr(workflow, "dag", None)
    if dag is None:
        return {}
    try:
        jobs = list(dag.needrun_jobs())
    except Exception:  # Snakemake-internal interface: never block a run on it
        return {}
    found: dict[str, dict[str, str]] = {}
    for job in jobs:
        try:
            if all((workdir / str(f)).exists() for f in job.input):
                parts = parts_of(job)
                found[fingerprints.combine(parts)] = parts
        except Exception:
            continue
    return found


def resumable_state(status: Any) -> tuple[bool, int | None]:
    """(remote job started, exit code) from RemoteSession.job_status()."""
    if status == "running" or status == "lost":
        return True, None
    if isinstance(status, tuple) and status[0] == "finished":
        return True, int(status[1])
    return False, None

