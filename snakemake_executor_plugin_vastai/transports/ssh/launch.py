"""The detached launch: run a job on the host so that it outlives our connection; follow it.

A job lives in a job directory ``D`` (relative to ``$HOME``) with a control
directory ``D/.vastai/`` (layout in scripts.py). ``launch`` uploads
``job.sh``, ``env`` (0600: it may hold secrets, which therefore never appear
on a command line) and the wrapper ``run.sh`` inside the tar stream, then
starts ``setsid nohup sh run.sh > log 2>&1 < /dev/null &`` and returns the pid
the wrapper recorded (it refuses while a job is still running there, so a retried
launch cannot run the job twice). The wrapper sources ``env``, runs ``job.sh`` and writes
the exit code to ``rc`` last, atomically (tmp + mv). It outlives the job, so
a job killed by SIGKILL gets 137 recorded; a dropped SSH connection touches
neither.

``follow`` runs a small Python follower through one exec channel. It streams
the log from a byte offset to stdout -- stdout carries log bytes and nothing
else, so the bytes received ARE the offset reached -- and polls every
``poll`` seconds (0.1 s) for the rc file, so completion is seen within about
a tenth of a second. The outcome arrives on stderr as one final line written
by the follower from the rc file (``end rc N``), or ``end lost`` when the
wrapper is gone without an rc (killed on the host). It is never parsed out of
the log, which the job (or a hostile host) can fill with anything. Heartbeat
lines on stderr let us tell a silent host from a quiet job. If the connection
drops, ``SSHUnavailable.offset`` says how far the log got; reconnect and call
``follow(offset=...)`` again: no byte is read twice or lost. ``job_status``
answers the same question in one shot, for re-attaching after a crash.

What runs on the host for this (the wrapper, the follower, the command lines) is in
scripts.py; here is the client side, as methods of a session.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from . import scripts as scripts
from .channels import _tail
from .errors import RemoteError, SSHUnavailable
from .upload import Uploads

HEARTBEAT_SECONDS = 5.0


@dataclass(frozen=True)
class JobEnd:
    """The outcome of ``follow``: exit code, or ``lost`` (gone without one)."""

    rc: int | None
    lost: bool
    offset: int


@dataclass(frozen=True)
class Sweep:
    """What ``sweep`` left: processes of the job still alive, processes on the GPU (-1:
    nvidia-smi failed), or a job that carried no tag (launched by an older plugin)."""

    left: int
    gpu_apps: int
    untagged: bool = False

    @property
    def clean(self) -> bool:
        return not self.untagged and self.left == 0 and self.gpu_apps == 0


JobStatus = Literal["running", "lost", "absent"] | tuple[Literal["finished"], int]


class DetachedJobs(Uploads):
    """Launching, following and asking after detached jobs, as methods of a session
    (``RemoteSession`` in session.py). An Uploads: ``launch`` sends the job's scripts."""

    def launch(self, job_dir: str, command: str, *, env: Mapping[str, str] | None = None,
               max_runtime: float = 0.0) -> int:
        """Write job.sh, env (0600) and the wrapper; start the wrapper detached; its pid.

        Refuses while a job is running in ``job_dir`` (so a retried launch cannot start
        the job twice); a finished or lost one is replaced, its log truncated.
        """
        if self.job_status(job_dir) == "running":
            raise RemoteError(f"{self.endpoint}: a job is already running in {job_dir}")
        extra = {
            scripts.TAG_FILE: (secrets.token_hex(12).encode(), 0o600),
            scripts.JOB_SCRIPT: (command.encode(), 0o700),
            scripts.ENV_FILE: (scripts.env_file(env or {}), 0o600),
            scripts.WRAPPER: (scripts.WRAPPER_SH.encode(), 0o700),
            # the instance's watchdog ends the job past it when the run is gone
            scripts.MAX_RUNTIME_FILE: (f"{max_runtime:.0f}".encode(), 0o600),
        }
        self.upload([], job_dir, extra=extra)
        done = self.run(scripts.launch_command(job_dir), timeout=max(self.timeout, 30))
        lines = done.stdout.split()
        if done.rc != 0 or not lines or not lines[-1].isdigit():
            raise RemoteError(
                f"{self.endpoint}: starting the job in {job_dir} failed (exit {done.rc}): "
                f"{_tail(done.stderr) or 'no message'}"
            )
        return int(lines[-1])

    def sweep(self, job_dir: str) -> Sweep:
        """End everything the job started (its whole process tree, detached ones included,
        found by the tag every one of them inherits) so the instance can serve another."""
        done = self.run(scripts.sweep_command(job_dir), timeout=max(self.timeout, 60))
        words = done.stdout.decode("ascii", "replace").split()
        if done.rc != 0 or not words:
            raise RemoteError(f"{self.endpoint}: cleaning up after the job in {job_dir} "
                              f"failed (exit {done.rc}): {_tail(done.stderr) or 'no message'}")
        if words[0] == "untagged":
            return Sweep(left=0, gpu_apps=0, untagged=True)
        try:
            return Sweep(left=int(words[1]), gpu_apps=int(words[3]))
        except (IndexError, ValueError):
            raise RemoteError(f"{self.endpoint}: unreadable clean-up answer "
                              f"{done.stdout[:80]!r}") from None

    def follow(
        self,
        job_dir: str,
        *,
        offset: int = 0,
        on_output: Callable[[bytes], None],
        poll: float = 0.1,
        heartbeat: float = HEARTBEAT_SECONDS,
    ) -> JobEnd:
        """Stream the job's log from ``offset`` into ``on_output`` until the job ends.

        Raises ``SSHUnavailable`` with ``.offset`` = the log offset reached if the
        connection breaks (or the host goes silent for ``io_timeout``): call again
        with that offset after reconnecting.
        """
        command = scripts.follow_command(job_dir, offset, poll, heartbeat)
        chan = self._exec(command, "follow")
        self._close_input(chan, "follow")
        reached = offset
        err = bytearray()

        def deliver(data: bytes) -> None:
            nonlocal reached
            on_output(data)
            reached += len(data)

        def note(data: bytes) -> None:
            err.extend(data)
            del err[:-4096]  # heartbeats accumulate; only the end matters

        # The follower writes a heartbeat every `heartbeat` s: missing several in a row
        # means the host (or the path to it) is gone even if TCP has not noticed yet.
        stall = 6 * heartbeat
        try:
            rc = self._pump(chan, deliver, note, "follow", stall=stall)
        except SSHUnavailable as exc:
            raise SSHUnavailable(str(exc), offset=reached) from None
        finally:
            chan.close()
        return self._job_end(job_dir, rc, bytes(err), reached)

    def _job_end(self, job_dir: str, rc: int, err: bytes, offset: int) -> JobEnd:
        """Interpret the follower's final stderr line (written from the rc file)."""
        lines = [ln for ln in err.decode("utf-8", "replace").splitlines() if ln != "hb"]
        last = lines[-1].split() if lines else []
        if rc == 0 and last[:2] == ["end", "rc"] and len(last) == 3:
            try:
                return JobEnd(rc=int(last[2]), lost=False, offset=offset)
            except ValueError:
                raise RemoteError(
                    f"{self.endpoint}: unreadable exit code {last[2]!r} in {job_dir}/.vastai/rc"
                ) from None
        if rc == 0 and last == ["end", "lost"]:
            return JobEnd(rc=None, lost=True, offset=offset)
        if rc == 0 and last == ["end", "absent"]:
            raise RemoteError(f"{self.endpoint}: no job was launched in {job_dir}")
        raise RemoteError(
            f"{self.endpoint}: following the job in {job_dir} failed (exit {rc}): "
            f"{_tail(err) or 'no message'}"
        )

    def job_status(self, job_dir: str) -> JobStatus:
        """``"running"``, ``("finished", rc)``, ``"lost"`` or ``"absent"`` (never launched)."""
        done = self.run(scripts.status_command(job_dir), timeout=max(self.timeout, 30))
        words = done.stdout.decode("ascii", "replace").split()
        if done.rc == 0 and words in (["running"], ["lost"], ["absent"]):
            return words[0]  # type: ignore[return-value]
        if done.rc == 0 and len(words) == 2 and words[0] == "finished":
            try:
                return ("finished", int(words[1]))
            except ValueError:
                pass
        raise RemoteError(
            f"{self.endpoint}: cannot tell the state of the job in {job_dir} "
            f"(exit {done.rc}): {_tail(done.stderr) or _tail(done.stdout) or 'no message'}"
        )


__all__ = ["DetachedJobs", "JobEnd", "JobStatus"]
