"""Storage mode: data moves through a bucket; the container runs the job; no SSH at all.

The instance is created with runtype ``args`` and a container command that
deploys the sources from the bucket and runs the job (``storage.py`` builds
it); credentials travel in the create request's environment. The job's end is
seen in the batched status listing and the instance log (our exit line), or,
for a host that never reports the exit, as every output present in the bucket.

Each step returns an outcome (``lifecycle/outcomes.py``); the driver writes the job
model and fires the trigger.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

from snakemake.io import is_flagged

from ...lifecycle.outcomes import (
    Booted,
    Downloaded,
    JobFailure,
    Reattached,
    RunEnded,
    Uploaded,
    command_exit_code,
    log_tail,
)
from ...vastai import bids
from ...vastai.api import VastError
from ..ssh import transport as ssh
from .setup import (
    StorageSetup,
    Watchdog,
    container_args,
    exit_code_from_log,
    exit_token,
)

if TYPE_CHECKING:
    from ...lifecycle.step_port import StepPort

LOG_LINES = 20000  # lines of an instance log fetched when a job ends
LOG_WAIT_SECONDS = 120.0  # how long an exited container's log is retried
ENDED_STATUSES = frozenset({"exited", "stopped", "frozen"})
PICKUP_MIN_SECONDS = 60.0  # a succeeded job's instance waits at least this for the run
PICKUP_LOOKS = 4  # ... and at least this many looks at the bucket


def resume_status(row: dict) -> str:
    """A container that runs or ran has started the job."""
    status = str(row.get("actual_status") or "")
    return "running" if status in ("running", "exited", "offline", "unknown") else status


class StorageTransport:
    """One job whose data moves through the bucket."""

    skips_ssh = True

    def __init__(self, steps: StepPort, storage: StorageSetup) -> None:
        self.steps = steps
        self.m = steps.m  # read only: the driver writes the job model
        self.p = steps.p
        self.storage = storage
        self._offline_since: float | None = None  # monotonic: the host's heartbeat lost

    # -- renting and booting ----------------------------------------------------------
    def launch(self, label: str) -> dict[str, Any]:
        args = container_args(job_command=self.p.spec.snakemake_command(),
                              deploy_command=self.storage.prepare_command(self.p.spec.job),
                              mode=self.storage.mode,
                              snakemake_version=self.p.spec.workspace.snakemake_version,
                              job_dir=ssh.REMOTE_DIR, token=exit_token(label),
                              watchdog=self._watchdog())
        return {"env": self.p.spec.environment(), "runtype": "args", "args": args}

    def _watchdog(self) -> Watchdog | None:
        """The instance-side watchdog (watchdog/): the job under its eye; once it ended,
        a failed job's instance stops itself and a succeeded one's destroys itself unless
        this run destroys it first (``pickup``); none without an orphan timeout."""
        settings = self.p.settings
        if settings.orphan_timeout <= 0 or settings.keep_instances:
            return None
        return Watchdog(settings.api_url, settings.orphan_timeout, self.p.spec.max_runtime,
                        pickup=self.pickup_seconds())

    def pickup_seconds(self) -> float:
        """How long an instance whose job succeeded waits for this run before destroying
        itself: several of this run's looks at the bucket (``check_interval``), at least a
        minute so a short network drop does not cost the job's log, at most the orphan
        timeout. 0 (stop, do not destroy) when the outputs cannot prove the job's end
        (``directory()``): only the log can, and it goes with the instance."""
        job = self.p.spec.job
        if job is None or any(is_flagged(o, "directory") for o in job.output):
            return 0.0
        return min(self.p.settings.orphan_timeout,
                   max(PICKUP_MIN_SECONDS, PICKUP_LOOKS * self.check_interval))

    def prepare_boot(self, instance_id: int) -> None:
        """Nothing to authorise: the plugin never logs in."""

    def ready(self, status: str, row: dict) -> Booted | None:
        # The container runs the job itself; one that already ended is judged by its
        # log in the running step.
        return Booted(detail={"status": status}) if status in ("running", "exited") else None

    def after_boot(self, instance_id: int) -> None:
        """The running step keeps listing it."""

    def resume_status(self, claim: Any) -> Reattached:
        if claim.row is None:  # gone: the running step asks the bucket whether it is done
            return Reattached(status="gone", started=True)
        status = resume_status(claim.row)
        # the exit code is read from the log once running
        return Reattached(status=status, started=status == "running")

    def probe_job(self) -> Reattached:
        return Reattached(status=None, started=False)

    def upload(self) -> Uploaded:
        raise JobFailure("internal: storage mode uploads nothing")

    def download(self) -> Downloaded:
        raise JobFailure("internal: storage mode downloads nothing")

    def clean_for_next(self) -> str | None:
        return "storage-mode instances run one job and are not lent again"

    def close(self) -> None:
        """No connection to drop."""

    # -- running --------------------------------------------------------------------
    @property
    def check_interval(self) -> float:
        """How often a running job's outputs are looked for in the bucket."""
        return max(3.0 * self.p.settings.status_interval, 1.0)

    @property
    def settle_seconds(self) -> float:
        """Outputs present but no exit line: how long to wait for the job's own end."""
        return max(10.0 * self.p.settings.status_interval, 5.0)

    def run(self, started: bool) -> RunEnded:
        """Watch the container: its end shows as ``exited`` plus our exit line in its log,
        or (a host that never reports the exit) as the outputs in the bucket. The
        container starts the job itself, so ``started`` changes nothing."""
        iid = self.steps.instance_id()
        watcher = self.p.instances.watcher
        watcher.watch(iid)
        started = self.m.running_since or time.monotonic()
        cap = self.p.spec.max_runtime  # the rule's cap, else --vastai-max-runtime
        next_probe = started + self.check_interval
        outputs_since: float | None = None
        exited_since: float | None = None
        generation = 0
        while True:
            self.steps.check_cancel()
            generation = watcher.wait_next(generation, timeout=5.0)
            seen = watcher.sighting(iid)
            if seen is not None and seen.row is None:
                if self.outputs_prove_end(since=self._created_at(iid)):
                    return self._complete(0, "the instance vanished after its outputs "
                                             "reached storage")
                raise JobFailure(f"instance {iid} vanished while running")
            status = str(seen.row.get("actual_status") or "") if seen else ""
            self._offline_since = self.steps.heartbeat(iid, status, self._offline_since)
            if status in ENDED_STATUSES and seen is not None and bids.is_outbid(seen.row):
                # a bid instance stopped by Vast.ai (bids.py): done if its log says so,
                # else preempted (the container reruns the job when it starts again)
                ended = self._finish_from_log(exited=False)
                if ended is not None:
                    return ended
                self.steps.check_outbid(seen.row)
            if status in ENDED_STATUSES:
                exited_since = exited_since or time.monotonic()
                ended = self._finish_from_log(exited=True)
                if ended is not None:
                    return ended
                if time.monotonic() - exited_since > LOG_WAIT_SECONDS:
                    return self._judge_without_log(status)
            now = time.monotonic()
            if now >= next_probe:
                next_probe = now + self.check_interval
                if self.outputs_present():
                    outputs_since = outputs_since or now
                    ended = self._finish_from_log(exited=False, outputs_since=outputs_since)
                    if ended is not None:
                        return ended
            if cap and now - started > cap:
                return self._runtime_exceeded(cap)

    def outputs_prove_end(self, since: float | None = None) -> bool:
        """True if the job's outputs alone prove its end: every one exists (written at or
        after ``since``, wall clock, when given) and none is a ``directory()``. An object
        is whole once it exists (a PUT is atomic); a directory is uploaded one file at a
        time, and keys under its prefix prove nothing: for those only the job's exit line
        in the instance log (printed after the remote Snakemake's last upload) says the
        job is done."""
        job = self.p.spec.job
        if job is None or any(is_flagged(o, "directory") for o in job.output):
            return False
        return self.outputs_present(since)

    def _created_at(self, iid: int) -> float | None:
        """When this job's instance was created (journal, wall clock): outputs older than
        that are an earlier run's, not this instance's work."""
        with contextlib.suppress(Exception):
            row = self.p.journal.instance_row(instance_id=iid) or {}
            return float(row["created_at"]) if row.get("created_at") else None
        return None

    def outputs_present(self, since: float | None = None) -> bool:
        """True if the job has storage outputs and every one of them exists, written at or
        after ``since`` when given (then its log is worth reading for the exit line)."""
        job = self.p.spec.job
        if job is None:
            return False
        try:
            return self.storage.outputs.all_present(job.output, since=since) is True
        except Exception as exc:  # any provider error: not (yet) known to be there
            self.steps.log("warning", "cannot check the job's outputs in storage",
                           error=f"{type(exc).__name__}: {exc}")
            return False

    def _instance_log(self) -> str:
        return self.p.instances.log(self.steps.instance_id(), tail=LOG_LINES)

    def _finish_from_log(self, *, exited: bool,
                         outputs_since: float | None = None) -> RunEnded | None:
        """Read the instance log for our exit line; the job's end once it is judged."""
        iid = self.steps.instance_id()
        spec = self.p.spec
        try:
            text = self._instance_log()
        except VastError as exc:
            self.steps.log("warning", "cannot read the instance log yet", error=str(exc))
            return None
        rc = exit_code_from_log(text, exit_token(self.m.label or ""))
        if rc is not None:
            spec.write_log(text)
            return self._complete(rc)
        if exited:
            spec.write_log(text)
            if self.outputs_prove_end():
                return self._complete(0, "the container exited without an exit line, but "
                                         "every output is in storage")
            raise JobFailure(f"instance {iid}: the container exited without reporting the "
                             f"job's exit code; log: {spec.log_path}{log_tail(spec.log_path)}")
        if outputs_since is not None and self.outputs_prove_end() and \
                time.monotonic() - outputs_since > self.settle_seconds:
            spec.write_log(text)
            return self._complete(0, f"every output is in storage and instance {iid} has not "
                                     "reported the job's end; taking it as done")
        return None

    def _judge_without_log(self, status: str) -> RunEnded:
        """The container ended but its log stays unreadable: the bucket decides."""
        if self.outputs_prove_end():
            return self._complete(0, "the instance log could not be read, but every output "
                                     "is in storage")
        raise JobFailure(f"instance {self.m.instance_id} went {status} and its log could not "
                         f"be read for {LOG_WAIT_SECONDS:.0f}s; the job's outputs are not in "
                         "storage")

    def _runtime_exceeded(self, cap: float) -> RunEnded:
        """--vastai-max-runtime: a job with all outputs in storage is done, else failed."""
        with contextlib.suppress(VastError):
            self.p.spec.write_log(self._instance_log())
        if self.outputs_prove_end():
            return self._complete(0, f"--vastai-max-runtime {cap:g}s reached with every "
                                     "output in storage")
        raise JobFailure(self.steps.over_runtime_message())

    def _complete(self, rc: int, note: str | None = None) -> RunEnded:
        """The job's end: exit 0 means its outputs are in the bucket (nothing to download)."""
        if note:
            self.steps.log("warning", note)
        failure = None
        if rc != 0:
            spec = self.p.spec
            rc = command_exit_code(spec.log_path, rc) or rc  # the command's own, see there
            failure = (f"rule {self.m.rule}: the job exited with code {rc} on instance "
                       f"{self.m.instance_id}; log: {spec.log_path}{log_tail(spec.log_path)}")
        return RunEnded(exit_code=rc, note=note, failure=failure, outputs_home=rc == 0)
