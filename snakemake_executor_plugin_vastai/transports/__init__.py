"""How a job's data and command reach its instance: one module per transfer mode.

A transport is made per job (``for_job``) and does the mode-specific part of
the job's steps; ``driver.py`` keeps the life cycle (search, rent, boot, tear
down) that every mode shares. The machine table knows one thing about the mode:
whether the SSH states are skipped (``skips_ssh``).

- ``ssh/``: the plugin ships sources and inputs over SSH, follows the job
  and brings outputs home (the default).
- ``storage/``: data moves through a bucket; the container runs the job
  itself and the plugin never opens SSH (a default storage provider is set).

A transport is made with its job's narrow port (``lifecycle/step_port.py``: read the
job, log, see a cancel, journal a retry in place) and returns outcomes
(``lifecycle/outcomes.py``); only the driver writes the job model and fires triggers.
What it provides (duck-typed, see :class:`Transport`):

``skips_ssh``                 storage mode: booting -> running -> destroying
``launch(label)``             create-request fields (onstart or args, env, runtype)
``prepare_boot(iid)``         before the instance boots (SSH: authorise our key)
``ready(status, row)``        booted? -> Booted (detail, journal fields, endpoint) or None
``after_boot(iid)``           once booted (SSH: stop listing it)
``resume_status(claim)``      how far an earlier run's job got on a live instance: Reattached
``probe_job()``               the same once booted (a resumed instance that was stopped)
``upload()``                  -> Uploaded
``run(started)``              launch (unless started) and follow to the end -> RunEnded
``download()``                -> Downloaded
``clean_for_next()``          before the instance is lent again: None (clean) or why not
``close()``                   drop connections (cancel, end of job)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..lifecycle.outcomes import Booted, Downloaded, Reattached, RunEnded, Uploaded


class Transport(Protocol):
    skips_ssh: bool

    def launch(self, label: str) -> dict[str, Any]: ...
    def prepare_boot(self, instance_id: int) -> None: ...
    def ready(self, status: str, row: dict) -> Booted | None: ...
    def after_boot(self, instance_id: int) -> None: ...
    def resume_status(self, claim: Any) -> Reattached: ...
    def probe_job(self) -> Reattached: ...
    def upload(self) -> Uploaded: ...
    def run(self, started: bool) -> RunEnded: ...
    def download(self) -> Downloaded: ...
    def clean_for_next(self) -> str | None: ...
    def close(self) -> None: ...
