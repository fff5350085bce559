"""What a transport may ask of its job's driver: the narrow port, not the driver.

A transport (``transports/``) gets this port when the run makes it for a job
(``ports.JobPorts.transport``); :class:`~.driver.JobDriver` implements it. Through it
the transport reads the job and its ports, logs, sees a cancel, judges the instance's
health and journals a retry in place (an SSH reconnect shows as a ``retry``
transition). It fires no other trigger and writes nothing on the job model: a
transport returns outcomes (``outcomes.py``), and the driver applies them.

Its own module because it names both the model and the ports, which name each other's
module (``models.py`` -> ``ports.py`` -> ``transports``) for types only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .models import JobModel
    from .ports import JobPorts


class StepPort(Protocol):
    """The job as its transport sees it (implemented by ``driver.JobDriver``)."""

    @property
    def m(self) -> JobModel:
        """The job, to read: only the driver writes it."""
        ...

    @property
    def p(self) -> JobPorts:
        """The job's narrow ports (journal, instances, spec, settings, ...)."""
        ...

    def log(self, level: str, event: str, **kw: Any) -> None:
        """Log with the job's identity, state and instance."""

    def check_cancel(self) -> None:
        """Raise JobCancelled once Snakemake asked the job to stop."""

    def instance_id(self) -> int:
        """The job's instance (JobFailure if it has none)."""
        ...

    def note_retry(self, detail: str) -> None:
        """A step is retried in place after transient trouble: journal a ``retry``."""

    def heartbeat(self, iid: int, status: str, since: float | None) -> float | None:
        """Tolerate a lost host heartbeat for the grace period (JobFailure past it)."""
        ...

    def check_outbid(self, row: dict | None) -> None:
        """Raise Preempted if the listing row shows the bid instance outbid."""

    def check_ended_itself(self, iid: int, during: str) -> None:
        """Raise InstanceLost if the vanished instance's watchdog may have ended it while
        the run was away, before the job's process started (the job rents another)."""

    def over_runtime_message(self) -> str:
        """The failure message of a job that ran past its runtime cap."""
        ...
