"""Exec channels: what every operation on an instance is built from.

Each call opens its own session channel on the connection, running one command
(``_exec``, which counts the payload bytes both ways into the session's meter for the
bandwidth bill and the progress reports), then ``_pump`` delivers stdout and stderr as
they arrive and ``_exit_status`` says how the command ended. ``run`` puts these together
for a one-shot command. ``Endpoint`` (where the host listens; every error message
names it) and ``Completed`` (what ``run`` returns) are the values these calls deal in.

``Channels`` is the base of the session: the upload (upload.py), the download
(extract.py) and the detached launch (launch.py) are methods of its subclasses, and
``RemoteSession`` (session.py) joins them and owns the connection. It lives below
them, so that none of them needs to import the session.
"""

from __future__ import annotations

import contextlib
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paramiko

from ...costs.ledger import ByteMeter
from .errors import SSHUnavailable

CHUNK = 1024 * 1024  # local file reads and channel receives


@dataclass(frozen=True)
class Endpoint:
    """Where an instance's sshd listens."""

    host: str
    port: int
    user: str = "root"

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Completed:
    """The outcome of ``RemoteSession.run``."""

    rc: int
    stdout: bytes
    stderr: bytes


def _tail(data: bytes, limit: int = 2000) -> str:
    text = data.decode("utf-8", "replace").strip()
    return text if len(text) <= limit else "..." + text[-limit:]


class _MeteredChannel:
    """A channel whose payload bytes (stdin sent; stdout and stderr received) are counted
    into a :class:`~.ledger.ByteMeter`: bandwidth is billed per byte (ledger.py), and
    progress reports read the same counts (progress.py)."""

    def __init__(self, chan: paramiko.Channel, meter: ByteMeter) -> None:
        self._chan = chan
        self._meter = meter

    def send(self, data: Any) -> int:
        n = self._chan.send(data)
        self._meter.sent(n)
        return n

    def sendall(self, data: bytes) -> None:
        self._chan.sendall(data)
        self._meter.sent(len(data))

    def recv(self, nbytes: int) -> bytes:
        data = self._chan.recv(nbytes)
        self._meter.received(len(data))
        return data

    def recv_stderr(self, nbytes: int) -> bytes:
        data = self._chan.recv_stderr(nbytes)
        self._meter.received(len(data))
        return data

    def __getattr__(self, name: str) -> Any:  # everything else is the channel's own
        return getattr(self._chan, name)


class Channels:
    """Opening, pumping and ending exec channels; ``run`` for a one-shot command.

    The attributes are set by ``RemoteSession`` (session.py), which connects.
    """

    endpoint: Endpoint
    timeout: float
    io_timeout: float
    meter: ByteMeter
    _transport: paramiko.Transport

    # -- channels

    def _exec(self, command: str, what: str) -> paramiko.Channel:
        """Open a session channel and start ``command`` (which must hold no secret)."""
        try:
            chan = self._transport.open_session(timeout=self.timeout)
            chan.settimeout(self.io_timeout)
            chan.exec_command(command)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SSHUnavailable(f"{self.endpoint}: cannot start {what}: {exc}") from None
        return _MeteredChannel(chan, self.meter)  # type: ignore[return-value]

    def _close_input(self, chan: paramiko.Channel, what: str) -> None:
        """Send EOF on stdin; a link that died just after the exec is a transient loss."""
        try:
            chan.shutdown_write()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            chan.close()
            raise SSHUnavailable(f"{self.endpoint}: connection lost starting {what}: "
                                 f"{exc or type(exc).__name__}") from None

    def _exit_status(self, chan: paramiko.Channel, what: str) -> int:
        """The remote exit status; a channel that died without one means a lost link."""
        if not chan.status_event.wait(self.io_timeout):
            chan.close()
            raise SSHUnavailable(f"{self.endpoint}: {what}: no exit status (timed out)")
        rc = chan.exit_status
        if rc == -1:
            raise SSHUnavailable(f"{self.endpoint}: connection lost during {what}")
        return rc

    def _pump(
        self,
        chan: paramiko.Channel,
        on_stdout: Callable[[bytes], None],
        on_stderr: Callable[[bytes], None],
        what: str,
        *,
        timeout: float | None = None,
        stall: float | None = None,
    ) -> int:
        """Deliver stdout/stderr as they arrive until the channel is done; the exit status.

        ``timeout`` bounds the whole call, ``stall`` the time without any data.
        """
        start = last = time.monotonic()
        while True:
            # Look at "done" before draining: data that arrives with the close is
            # then still delivered by this round's drain.
            done = chan.closed or (chan.eof_received and chan.exit_status_ready())
            got = False
            while chan.recv_ready():
                on_stdout(chan.recv(CHUNK))
                got = True
            while chan.recv_stderr_ready():
                on_stderr(chan.recv_stderr(CHUNK))
                got = True
            now = time.monotonic()
            if done and not got:
                break
            if got:
                last = now
                continue
            if timeout is not None and now - start > timeout:
                chan.close()
                raise SSHUnavailable(f"{self.endpoint}: {what} timed out after {timeout:g} s")
            if stall is not None and now - last > stall:
                chan.close()
                raise SSHUnavailable(f"{self.endpoint}: {what}: no sign of life for {stall:g} s")
            select.select([chan], [], [], 0.2)
        return self._exit_status(chan, what)

    # -- commands

    def run(
        self, command: str, *, stdin: bytes | None = None, timeout: float | None = None
    ) -> Completed:
        """Run ``command`` via ``/bin/sh -c`` on the host; collect its output and status.

        ``command`` is visible to every process on the host: put secrets in ``stdin``
        or in uploaded files, never here.
        """
        chan = self._exec(command, "command")
        out, err = bytearray(), bytearray()
        feeder = None
        if stdin:
            # A separate thread, so that a command producing output before it has read
            # all its input cannot deadlock against us on the channel window.
            feeder = threading.Thread(target=self._feed, args=(chan, stdin), daemon=True)
            feeder.start()
        else:
            self._close_input(chan, "command")
        try:
            rc = self._pump(chan, out.extend, err.extend, "command", timeout=timeout)
        finally:
            if feeder is not None:
                feeder.join(1.0)
            chan.close()
        return Completed(rc, bytes(out), bytes(err))

    @staticmethod
    def _feed(chan: paramiko.Channel, data: bytes) -> None:
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            chan.sendall(data)
            chan.shutdown_write()


__all__ = ["Channels", "Completed", "Endpoint"]
