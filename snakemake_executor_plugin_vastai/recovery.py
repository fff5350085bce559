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
job that looks active forever.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .keys import KeyFileError, RunKey

if TYPE_CHECKING:
    from .runtime import Run

POLICIES = ("resume", "destroy")


@dataclass
class Claim:
    """A live instance of an earlier run, waiting for its job to be scheduled again."""

    job: dict  # the earlier run's job row
    instance: dict  # its journaled instance row
    row: dict  # what the listing says about the instance now
    key: RunKey | None  # the earlier run's SSH key (None: missing, reattach impossible)


class Recovery:
    """Reconciles the journal with Vast.ai when a run starts, and hands out claims."""

    def __init__(self, run: Run, policy: str = "resume") -> None:
        if policy not in POLICIES:
            raise ValueError(f"--vastai-on-restart must be one of {', '.join(POLICIES)}")
        self.run = run
        self.policy = policy
        self._claims: dict[str, Claim] = {}
        self._lock = threading.Lock()
        self.resumed = 0
        self.destroyed_at_start = 0

    # -- at start ---------------------------------------------------------------------
    def reconcile(self, scheduled: set[str]) -> None:
        """Compare journal and API; keep claimable instances, destroy the others.

        ``scheduled`` holds the fingerprints of the jobs Snakemake plans to run
        whose inputs exist now (computed by the caller from the DAG).
        """
        journal = self.run.journal
        old_jobs = journal.unfinished_jobs(exclude_run=self.run.run_id)
        maybe_alive = journal.instances_possibly_alive()
        first_run = len(journal.runs()) <= 1
        if not old_jobs and not maybe_alive and not first_run:
            return
        listing = self.run.api.list_instances(journal.label_prefix)
        by_id = {int(r["id"]): r for r in listing}
        by_label = {str(r.get("label")): r for r in listing}
        alive = self._settle_instances(maybe_alive, by_id, by_label)
        self._destroy_unjournaled(listing)
        for job in old_jobs:
            claim = self._claim_for(job, alive)
            if claim is not None and self.policy == "resume" and job["fingerprint"] in scheduled:
                with self._lock:
                    self._claims.setdefault(job["fingerprint"], claim)
                continue
            self._close(job, claim)
        self._close_orphan_instances(alive, old_jobs)
        self.run.log.info("reconciled earlier runs", unfinished_jobs=len(old_jobs),
                          live_instances=len(alive), kept_for_resume=len(self._claims),
                          policy=self.policy)

    def _settle_instances(self, rows: list[dict], by_id: dict[int, dict],
                          by_label: dict[str, dict]) -> dict[str, tuple[dict, dict]]:
        """Journal rows -> {label: (journal row, listing row)} for the living; mark the dead."""
        journal = self.run.journal
        alive: dict[str, tuple[dict, dict]] = {}
        for row in rows:
            listed = by_id.get(int(row["instance_id"])) if row.get("instance_id") else None
            listed = listed or by_label.get(row["label"])
            if listed is None:
                journal.record_instance_destroyed(label=row["label"])
                continue
            if row.get("instance_id") is None:
                journal.record_instance_created(row["label"], int(listed["id"]))
                row = {**row, "instance_id": int(listed["id"])}
            alive[row["label"]] = (row, listed)
        return alive

    def _destroy_unjournaled(self, listing: list[dict]) -> None:
        """Instances with our prefix but no journal row at all (journal lost or moved aside)."""
        known = {r["label"] for r in self.run.journal.instances()}
        for row in listing:
            if row.get("label") not in known:
                self.run.log.warning("destroying an instance of this workflow that the journal "
                                     "does not know", instance=row["id"], label=row.get("label"))
                self.run.destroy_untracked(int(row["id"]))
                self.destroyed_at_start += 1

    def _claim_for(self, job: dict, alive: dict[str, tuple[dict, dict]]) -> Claim | None:
        label = job.get("label")
        if not label or label not in alive:
            return None
        instance, listed = alive[label]
        if instance.get("destroy_requested_at") is not None:
            return None
        try:
            key = RunKey.load_or_create(self.run.key_dir, job["run_id"]) \
                if (self.run.key_dir / job["run_id"]).exists() else None
        except KeyFileError:
            key = None
        return Claim(job=job, instance=instance, row=listed, key=key)

    def _close(self, job: dict, claim: Claim | None) -> None:
        """Drive an earlier job to cancelled, destroying its instance if it has one."""
        instance_id = int(claim.instance["instance_id"]) if claim else None
        if claim is not None:
            self.destroyed_at_start += 1
        self.run.close_old_job(job, instance_id, claim.instance["label"] if claim else None)

    def _close_orphan_instances(self, alive: dict[str, tuple[dict, dict]],
                                old_jobs: list[dict]) -> None:
        """Live journaled instances whose job is no longer unfinished (e.g. crashed mid-destroy)."""
        claimed = {c.instance["label"] for c in self._claims.values()}
        handled = {j.get("label") for j in old_jobs}
        for label, (instance, _listed) in alive.items():
            if label in claimed or label in handled:
                continue
            self.run.destroy_untracked(int(instance["instance_id"]), label=label)
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
            self._close(claim.job, claim)


def scheduled_fingerprints(workflow: Any, workdir: Path, fingerprint_of: Any) -> set[str]:
    """Fingerprints of the jobs Snakemake plans to run whose inputs all exist now."""
    dag = getattr(workflow, "dag", None)
    if dag is None:
        return set()
    try:
        jobs = list(dag.needrun_jobs())
    except Exception:  # Snakemake-internal interface: never block a run on it
        return set()
    found = set()
    for job in jobs:
        try:
            if all((workdir / str(f)).exists() for f in job.input):
                found.add(fingerprint_of(job))
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

