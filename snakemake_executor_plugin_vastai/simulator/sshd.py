"""The SSH side of a simulated instance: a real SSH server on 127.0.0.1.

Each ``InstanceSSH`` is an asyncssh server for one instance. All of them share ONE asyncio
event loop running in a daemon thread, started on first use, behind a synchronous facade:
the REST side of the simulator is threaded and must not need to know about asyncio.

What a client gets:

- public-key auth as ``root`` only; acceptable keys are the API-attached keys (a callable)
  plus ``<sandbox>/.ssh/authorized_keys``, both re-read on every attempt;
- exec and shell sessions run ``/bin/sh [-c COMMAND]`` like ``sandbox.spawn`` (cwd and HOME
  = sandbox, tagged environment), with binary-safe, separately delivered stdout/stderr, and
  the exit status (death by signal N is reported as 128+N). Without a pty, as with real
  sshd, the session ends only when the process has exited AND its stdout/stderr reached
  EOF; a client that disconnects does not kill the process, which just loses its pipes;
- SFTP confined to the sandbox: ``..``, absolute paths and symlinks resolving outside it
  are refused (a symlink the instance itself planted in the sandbox included). Legacy
  ``scp -O`` works because it execs the machine's own ``scp -t``/``scp -f``.

Faults (``SSHFaults``) are read on every accepted connection. A *refused* connection is
accepted and immediately reset (TCP RST, before the SSH banner): the port stays reserved for
the instance, so it cannot be taken by someone else while the "host" is away, and clients
fail promptly ("Connection reset by peer"). The one-shot *drop* faults are armed on the
next connection that authenticates (so port probes do not consume them) and tear its TCP
connection down abruptly, without an SSH disconnect message.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncssh

from .sandbox import kill_tagged, sandbox_env, signal_tagged, spawn

CHUNK = 256 * 1024  # large reads: tar streams go through exec channels at 100+ MB/s
PIPE_LIMIT = 1024 * 1024
CALL_TIMEOUT = 30.0
USER = "root"
# Rekey like OpenSSH's sshd does by default with the AES ciphers paramiko uses: after 2**32
# cipher blocks (64 GiB), never on a timer. asyncssh's own defaults (1 GiB, 1 h) would make
# the server start key exchanges real hosts do not start. That matters: paramiko 5.1 can
# deadlock its transport thread (replying to a CHANNEL_CLOSE while its own rekey is pending,
# "Key-exchange timed out waiting for key negotiation") or send WINDOW_ADJUST after CLOSE,
# which asyncssh, unlike OpenSSH, answers with a disconnect. paramiko still starts its own
# rekey every 512 MiB (Packetizer.REKEY_BYTES); clients should raise that threshold.
REKEY_BYTES = 1 << 36
REKEY_SECONDS = 10 * 365 * 86400

T = TypeVar("T")


# --------------------------------------------------------------------------- event loop


class _LoopThread:
    """The one event loop all instance servers share, in a daemon thread."""

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None

    @classmethod
    def get(cls) -> asyncio.AbstractEventLoop:
        """Start the loop on first use (importing this module must not spawn threads)."""
        with cls._lock:
            if cls._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="vastai-sim-sshd", daemon=True
                )
                thread.start()
                cls._loop, cls._thread = loop, thread
            return cls._loop

    @classmethod
    def call(cls, coro: Coroutine[Any, Any, T], timeout: float = CALL_TIMEOUT) -> T:
        """Run ``coro`` on the loop and wait for its result from a synchronous caller."""
        if threading.current_thread() is cls._thread:
            coro.close()
            raise RuntimeError("InstanceSSH's synchronous API called from its own event loop")
        return asyncio.run_coroutine_threadsafe(coro, cls.get()).result(timeout)


# --------------------------------------------------------------------------- faults


@dataclass
class SSHFaults:
    """Faults of one instance's SSH server; plain attributes, set from any thread.

    ``refuse_until`` is a ``time.monotonic()`` deadline; ``refuse_count`` refuses that many
    connections whenever they come (a test that must see a refusal cannot rely on a
    client reaching the server inside a time window). The two drop faults are one-shot:
    the next authenticated connection takes (and clears) them.
    """

    refuse_until: float = 0.0
    refuse_count: int = 0
    drop_after_bytes: int | None = None
    drop_after_seconds: float | None = None
    throttle_bps: float | None = None  # exec stdin (uploads) at most this many bytes/s

    def refusing(self) -> bool:
        """Whether connections are being refused right now."""
        return time.monotonic() < self.refuse_until

    def take_refusal(self) -> bool:
        """Whether the connection arriving now is refused; consumes one counted refusal."""
        if self.refusing():
            return True
        if self.refuse_count > 0:
            self.refuse_count -= 1
            return True
        return False

    def take_drops(self) -> tuple[int | None, float | None]:
        """Consume the one-shot drop faults for the connection being armed."""
        drops = (self.drop_after_bytes, self.drop_after_seconds)
        self.drop_after_bytes = self.drop_after_seconds = None
        return drops


def _reset(conn: asyncssh.SSHServerConnection) -> None:
    """Tear a connection down abruptly: RST, no SSH disconnect message."""
    sock = conn.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.abort()


class _Link:
    """Per-connection state: the byte budget of a drop fault and its timer."""

    def __init__(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        self.budget: int | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.dropped = False

    def arm(self, drop_bytes: int | None, drop_seconds: float | None) -> None:
        """Apply the one-shot drop faults to this connection."""
        self.budget = drop_bytes
        if drop_seconds is not None:
            self.timer = asyncio.get_running_loop().call_later(drop_seconds, self.drop)
        if self.budget is not None and self.budget <= 0:
            self.drop()

    def allow(self, n: int) -> int:
        """How many of the next ``n`` payload bytes may pass; drops when the budget is spent."""
        if self.dropped:
            return 0
        if self.budget is None:
            return n
        k = min(n, self.budget)
        self.budget -= k
        return k

    def after(self) -> bool:
        """Drop now if the budget is spent; True if the connection is (now) dropped."""
        if not self.dropped and self.budget is not None and self.budget <= 0:
            self.drop()
        return self.dropped

    def drop(self) -> None:
        """Abort the connection (idempotent)."""
        if self.timer is not None:
            self.timer.cancel()
        if not self.dropped:
            self.dropped = True
            _reset(self.conn)


# --------------------------------------------------------------------------- auth


def _key_blobs(lines: Iterable[str]) -> set[str]:
    """Every whitespace-separated token of authorized_keys-style lines.

    Membership of the client key's base64 blob in this set is the check; it ignores key
    options and comments without parsing them. A blob is long random base64 and cannot
    collide with an option or a comment by accident.
    """
    blobs: set[str] = set()
    for line in lines:
        if not line.strip().startswith("#"):
            blobs.update(line.split())
    return blobs


def _key_blob(key: asyncssh.SSHKey) -> str:
    """The base64 blob of a public key, as it appears in authorized_keys."""
    return key.export_public_key("openssh").decode().split()[1]


# --------------------------------------------------------------------------- SFTP


class _SandboxSFTPServer(asyncssh.SFTPServer):
    """asyncssh's chrooted SFTP server, plus refusal of paths that resolve outside the root.

    asyncssh's chroot is lexical and follows pre-existing symlinks out of the root. Here
    every path is resolved fully and must stay inside the root, else permission denied.
    The lexical path is what gets operated on, so removing or lstat-ing an in-sandbox
    symlink acts on the link itself. (A process racing to swap symlinks between check and
    use could still escape; instance processes are not confined anyway, see sandbox.py.)

    File data read and written is counted (and subject to the drop budget) here, because
    asyncssh runs the SFTP protocol on the channel itself; SFTP's own framing is not
    counted.
    """

    def __init__(
        self, chan: asyncssh.SSHServerChannel, root: Path, count: Callable[[int, bool], int]
    ) -> None:
        self._root = os.fsencode(os.path.realpath(root))
        self._count = count
        super().__init__(chan, chroot=self._root)

    def _check_inside(self, local: bytes) -> None:
        """Refuse a local path that resolves (symlinks followed) outside the root."""
        real = os.path.realpath(local)
        if real != self._root and not real.startswith(self._root + b"/"):
            raise asyncssh.SFTPPermissionDenied("Path leads outside the sandbox")

    def map_path(self, path: bytes) -> bytes:
        """Map a client path into the sandbox, refusing escapes via symlinks."""
        mapped = super().map_path(path)
        self._check_inside(mapped)
        return mapped

    def _map_link(self, path: bytes) -> bytes:
        """Map a path whose last component is not followed: only its directory must resolve
        inside. Lets a client lstat or remove a symlink that points outside."""
        mapped = super().map_path(path)
        self._check_inside(os.path.dirname(mapped))
        return mapped

    def lstat(self, path: bytes) -> os.stat_result:
        return os.lstat(self._map_link(path))

    def remove(self, path: bytes) -> None:
        os.remove(self._map_link(path))

    def read(self, file_obj: object, offset: int, size: int) -> bytes:
        data = super().read(file_obj, offset, size)
        assert isinstance(data, bytes)
        return data[: self._count(len(data), False)]

    def write(self, file_obj: object, offset: int, data: bytes) -> int:
        allowed = self._count(len(data), True)
        return super().write(file_obj, offset, data[:allowed])  # type: ignore[return-value]

    def exit(self) -> None:
        """Report exit status 0 before the channel closes: OpenSSH scp returns 1 without."""
        with contextlib.suppress(OSError, asyncssh.Error):
            self._chan.exit(0)


# --------------------------------------------------------------------------- exec plumbing


class _PipeWriter(asyncio.BaseProtocol):
    """Flow-control protocol for the child's stdin pipe."""

    def __init__(self) -> None:
        self._writable = asyncio.Event()
        self._writable.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self._writable.set()

    async def drain(self) -> None:
        await self._writable.wait()


async def _read_pipe(pipe: Any) -> tuple[asyncio.StreamReader, asyncio.BaseTransport]:
    """Attach a child's output pipe to the loop; the transport lets us close our end."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=PIPE_LIMIT)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    return reader, transport


async def _wait_exit(proc: subprocess.Popen[bytes]) -> int:
    """Wait for the child without a thread (pidfd), and reap it ourselves."""
    loop = asyncio.get_running_loop()
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        return await asyncio.to_thread(proc.wait)
    done = loop.create_future()
    loop.add_reader(fd, lambda: done.done() or done.set_result(None))
    try:
        await done
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return proc.wait()


def _exit_code(returncode: int) -> int:
    """Shell convention: death by signal N is status 128+N."""
    return 128 - returncode if returncode < 0 else returncode


# --------------------------------------------------------------------------- server


class _Server(asyncssh.SSHServer):
    """Per-connection callbacks: refusal, auth, arming the drop faults."""

    def __init__(self, instance: InstanceSSH) -> None:
        self._instance = instance
        self._link: _Link | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        sock = conn.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not self._instance.accepting_now():
            _reset(conn)
            return
        self._link = _Link(conn)
        self._instance._links[conn] = self._link

    def connection_lost(self, exc: Exception | None) -> None:
        if self._link is not None:
            self._instance._links.pop(self._link.conn, None)
            if self._link.timer is not None:
                self._link.timer.cancel()

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return username == USER and _key_blob(key) in self._instance.acceptable_key_blobs()

    def auth_completed(self) -> None:
        if self._link is not None:
            self._link.arm(*self._instance.faults.take_drops())


class InstanceSSH:
    """The SSH server of one simulated instance (synchronous facade, thread-safe enough).

    ``env`` is the environment of every exec'd process, built once by ``sandbox_env``; the
    owner may add to it later (e.g. the port once known), and later sessions see the change.
    ``bytes_in``/``bytes_out`` count exec stdin and stdout+stderr payload, plus file data
    read/written over SFTP (not SFTP's own framing), over the server's lifetime.
    ``port`` is 0 until ``start()``.
    """

    def __init__(
        self,
        *,
        sandbox: Path,
        tag: str,
        authorized_keys: Callable[[], Iterable[str]],
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.sandbox = Path(sandbox).resolve()
        self.tag = tag
        self.env = sandbox_env(self.sandbox, tag, env)
        self.faults = SSHFaults()
        self.port = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self._authorized_keys = authorized_keys
        self._host_key = asyncssh.generate_private_key("ssh-ed25519")
        self._accepting = True
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._links: dict[asyncssh.SSHServerConnection, _Link] = {}

    # ----- public facade

    @property
    def host_key_public(self) -> str:
        """The host's public key as one OpenSSH line, ``ssh-ed25519 AAAA...``."""
        return self._host_key.export_public_key("openssh").decode().strip()

    def start(self) -> int:
        """Listen on 127.0.0.1 on a free port; return the port. Idempotent.

        After a ``stop()`` the instance gets its previous port back if it is still free
        (a restarted Vast.ai instance usually keeps its address), else a new one.
        """
        if self._acceptor is None:
            self.port = _LoopThread.call(self._listen(self.port))
        return self.port

    def stop(self) -> None:
        """Stop listening, drop all connections, kill the instance's processes. Idempotent."""
        if self._acceptor is not None:
            _LoopThread.call(self._close())
        kill_tagged(self.tag)

    def rotate_host_key(self) -> None:
        """Use a new host key for later connections (a host that changed identity)."""
        self._host_key = asyncssh.generate_private_key("ssh-ed25519")
        if self._acceptor is not None:
            _LoopThread.call(self._update_host_key())

    def kill_processes(self, sig: int = signal.SIGKILL) -> int:
        """Signal every process of the instance (an OOM kill, say); sshd keeps serving."""
        return signal_tagged(self.tag, sig)

    def set_accepting(self, accepting: bool) -> None:
        """Refuse every new connection while False (an offline host), independent of faults.

        Established connections stay; ``drop_connections()`` ends them too.
        """
        self._accepting = accepting

    def drop_connections(self) -> int:
        """Abort every established connection abruptly (a network cut); return how many."""
        if self._acceptor is None:
            return 0
        return _LoopThread.call(self._drop_all())

    # ----- used by the per-connection callbacks (event loop thread)

    def accepting_now(self) -> bool:
        """Whether a new connection may proceed."""
        return self._accepting and not self.faults.take_refusal()

    def acceptable_key_blobs(self) -> set[str]:
        """API-attached keys plus ``<sandbox>/.ssh/authorized_keys``, read afresh."""
        lines = list(self._authorized_keys())
        with contextlib.suppress(OSError):
            lines += (self.sandbox / ".ssh" / "authorized_keys").read_text().splitlines()
        return _key_blobs(lines)

    # ----- event-loop side

    async def _listen(self, port: int) -> int:
        """Listen on ``port`` (0: any free one), falling back to a free port if taken."""
        try:
            self._acceptor = await self._listen_on(port)
        except OSError:
            if port == 0:
                raise
            self._acceptor = await self._listen_on(0)
        return self._acceptor.get_port()

    async def _listen_on(self, port: int) -> asyncssh.SSHAcceptor:
        return await asyncssh.listen(
            host="127.0.0.1",
            port=port,
            server_host_keys=[self._host_key],
            server_factory=lambda: _Server(self),
            process_factory=self._session,
            sftp_factory=self._sftp_server,
            encoding=None,
            allow_pty=False,
            agent_forwarding=False,
            x11_forwarding=False,
            keepalive_interval=0,
            rekey_bytes=REKEY_BYTES,
            rekey_seconds=REKEY_SECONDS,
        )

    async def _close(self) -> None:
        acceptor, self._acceptor = self._acceptor, None
        if acceptor is not None:
            acceptor.close()
        await self._drop_all()

    async def _drop_all(self) -> int:
        links = list(self._links.values())
        for link in links:
            link.drop()
        self._links.clear()
        return len(links)

    async def _update_host_key(self) -> None:
        if self._acceptor is not None:
            self._acceptor.update(server_host_keys=[self._host_key])

    def _link_of(self, process: asyncssh.SSHServerProcess[bytes]) -> _Link:
        conn = process.channel.get_connection()
        return self._links.get(conn) or _Link(conn)

    async def _session(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        """Serve one exec/shell session channel (asyncssh routes SFTP to _sftp_server)."""
        link = self._link_of(process)
        try:
            if process.subsystem:
                process.stderr.write(f"unknown subsystem {process.subsystem}\n".encode())
                _finish(process, 1)
            else:
                await self._serve_exec(process, link)
        except Exception:
            _finish(process, 255)
            raise

    # SFTP

    def _sftp_server(self, chan: asyncssh.SSHServerChannel) -> _SandboxSFTPServer:
        """One SFTP session, rooted in the sandbox, counting file data against the link."""
        conn = chan.get_connection()
        link = self._links.get(conn) or _Link(conn)

        def count(n: int, inbound: bool) -> int:
            k = link.allow(n)
            if inbound:
                self.bytes_in += k
            else:
                self.bytes_out += k
            link.after()
            return k

        return _SandboxSFTPServer(chan, self.sandbox, count)

    # exec / shell

    async def _serve_exec(self, process: asyncssh.SSHServerProcess[bytes], link: _Link) -> None:
        """Run the command with pipes copied by hand (process.redirect lost data under load)."""
        try:
            proc = spawn(
                process.command,
                sandbox=self.sandbox,
                env=self.env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except OSError as exc:
            process.stderr.write(f"sh: cannot start: {exc}\n".encode())
            _finish(process, 127)
            return
        out, out_transport = await _read_pipe(proc.stdout)
        err, err_transport = await _read_pipe(proc.stderr)
        stdin_task = asyncio.create_task(self._pump_in(process, proc, link))
        pumps = [
            self._pump_out(out, out_transport, process.stdout, link),
            self._pump_out(err, err_transport, process.stderr, link),
        ]
        returncode, *_ = await asyncio.gather(_wait_exit(proc), *pumps)
        stdin_task.cancel()
        with contextlib.suppress(OSError, asyncssh.Error):
            process.stdout.write_eof()  # as OpenSSH: EOF, then exit-status, then close
        _finish(process, _exit_code(returncode))

    async def _pump_in(
        self, process: asyncssh.SSHServerProcess[bytes], proc: subprocess.Popen[bytes], link: _Link
    ) -> None:
        """Client stdin -> child stdin; client EOF (or disconnect) closes the child's stdin."""
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.connect_write_pipe(_PipeWriter, proc.stdin)
        try:
            while data := await process.stdin.read(CHUNK):
                k = link.allow(len(data))
                self.bytes_in += k
                if not transport.is_closing():
                    transport.write(data[:k])
                    await protocol.drain()
                if self.faults.throttle_bps:
                    await asyncio.sleep(k / self.faults.throttle_bps)
                if link.after():
                    break
        except (asyncssh.Error, OSError):
            pass
        finally:
            transport.close()

    async def _pump_out(
        self,
        src: asyncio.StreamReader,
        transport: asyncio.BaseTransport,
        dst: asyncssh.SSHWriter[bytes],
        link: _Link,
    ) -> None:
        """Child stdout/stderr -> channel, until EOF; if the client is gone, close our end
        so the child gets SIGPIPE, as with real sshd."""
        try:
            while data := await src.read(CHUNK):
                k = link.allow(len(data))
                self.bytes_out += k
                dst.write(data[:k])
                await dst.drain()
                if link.after():
                    break
        except (asyncssh.Error, OSError):
            pass
        finally:
            transport.close()


def _finish(process: asyncssh.SSHServerProcess[bytes], status: int) -> None:
    """Send the exit status and close, unless the client is already gone."""
    with contextlib.suppress(OSError, asyncssh.Error):
        process.exit(status)


__all__ = ["InstanceSSH", "SSHFaults"]
