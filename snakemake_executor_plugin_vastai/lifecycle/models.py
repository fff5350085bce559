"""The job model the shared machine drives: one object per job, its state and its facts.

``job_machine.py`` names the states and transitions; this model carries what the
conditions in that table read, and the hook that journals every transition before its
state begins (``before_state_change``). The driver (``driver.py``) does the steps and is
the only writer of the model (the run's ``cancel`` aside, which only asks); transports
return outcomes (``outcomes.py``) that the driver applies.

What the guards read is the state, one typed field (``progress``: how far the job's
work got on its instance) and the job's end (``failure``, ``cancel_requested``); the
other fields are facts the steps need, not sub-states.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..workflow.payload import REMOTE_DIR
from .job_machine import JobState, Progress

if TYPE_CHECKING:
    from .ports import JobPorts


@dataclass(eq=False)
class JobModel:
    """The per-job model the shared machine drives (``state`` is set by it)."""

    job_id: str
    ports: JobPorts = field(repr=False)
    snakemake_job: Any = field(repr=False)
    rule: str
    attempt: int
    fingerprint: str
    log_path: str
    state: JobState = JobState.SEARCHING
    candidates: list[dict] = field(default_factory=list)
    waiting_since: float | None = None  # monotonic time the job first found no offer free
    wait_reason: str = ""  # why it waits: what matched and who holds it (for the failure)
    rented_at: float | None = None  # monotonic time of the create (the boot's start)
    label: str | None = None
    instance_id: int | None = None
    offer: dict | None = None
    endpoint: Any = None  # transports.ssh.channels.Endpoint (SSH mode)
    progress: Progress = Progress.NOTHING  # how far the job's work got on its instance
    exit_code: int | None = None  # the job's exit code, once progress is finished or home
    failure: str | None = None
    cancel_requested: bool = False  # set by the run (Snakemake cancels); read by the driver
    claim: Any = None  # recovery.Claim: an earlier run's live instance to re-attach to
    key: Any = None  # the SSH key for this job's instance (an earlier run's, on resume)
    storage: bool = False  # storage mode: data moves through a bucket, no SSH at all
    running_since: float | None = None  # monotonic time the job first entered running
    destroy_deadline: float | None = None  # monotonic time the teardown gives up
    # interruptible (bid) instances, see bids.py
    interruptible: bool = False  # the job's rule asks for bid instances
    bidding: bool = False  # the current search/instance is a bid one
    bid_price: float | None = None  # $/h bid of the current instance
    preemptions: int = 0  # times this job's instances were outbid
    preempted_at: float | None = None  # monotonic time of the current preemption
    self_stopped: bool = False  # the instance stopped itself (watchdog): start it again
    lost_instances: int = 0  # gone while the run was away, before the job started
    probe_on_boot: bool = False  # a resumed job whose state was unknown: ask once booted
    work_dir: str = REMOTE_DIR  # the job's own directory on its instance (relative to $HOME)
    warm: Any = None  # pool.WarmInstance: the instance may serve the next job (warm instances)

    # -- conditions named in job_machine.TRANSITIONS ----------------------------------
    def work_finished(self, event: Any = None) -> bool:
        return self.progress is Progress.FINISHED

    def work_started(self, event: Any = None) -> bool:
        return self.progress is Progress.STARTED

    def inputs_uploaded(self, event: Any = None) -> bool:
        return self.progress is Progress.UPLOADED

    def in_storage_mode(self, event: Any = None) -> bool:
        return self.storage

    def outputs_home(self, event: Any = None) -> bool:
        return self.progress is Progress.HOME and self.failure is None

    def was_cancelled(self, event: Any = None) -> bool:
        return self.cancel_requested and self.failure is None

    def has_failed(self, event: Any = None) -> bool:
        return self.failure is not None

    def needs_an_instance(self, event: Any = None) -> bool:
        """Its instance is gone, its work neither home, failed nor cancelled: the one way
        there is an outbid instance abandoned past the grace (the job rents anew)."""
        return not (self.cancel_requested or self.has_failed() or self.outputs_home())

    @property
    def work_succeeded(self) -> bool:
        """The job's own work is done and home, whatever became of its instance or the
        journal afterwards: reporting it failed would make Snakemake delete the outputs."""
        return self.state is JobState.SUCCEEDED or self.progress is Progress.HOME

    # -- the journal hook -------------------------------------------------------
    def journal_transition(self, event: Any) -> None:
        """Write-ahead: commit the transition before the state (and its effect) begins."""
        source = JobState[event.transition.source].value
        dest = JobState[event.transition.dest].value
        self.ports.journal.transition(
            self.job_id, source=source, dest=dest, trigger=event.event.name,
            detail=event.kwargs.get("detail"), **event.kwargs.get("fields", {}),
        )
        self.ports.log.info("transition", job=self.job_id, rule=self.rule, state=dest,
                            source=source, trigger=event.event.name,
                            detail=event.kwargs.get("detail"), instance=self.instance_id,
                            verbose=True)
