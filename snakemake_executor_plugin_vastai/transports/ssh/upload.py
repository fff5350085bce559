"""The tar sender: uploads, sources and inputs alike, as one tar stream into ``tar -x``.

One exec channel per upload, whatever the number of files: that is the fast path
for big files and for many small ones (no per-file round trips). The tar is built
on the fly while it is sent, from local files and trees (a symlink is followed: its
content is what the job needs) plus in-memory members such as a 0600 env file, and
small pieces are batched into sends of about ``SEND_BATCH`` bytes. Names are checked
(``clean_relative``) before the channel opens.
"""

from __future__ import annotations

import os
import stat
import tarfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import paramiko

from . import scripts as scripts
from .channels import CHUNK, Channels, _tail
from .errors import LocalFileError, RemoteError
from .paths import _ancestors, clean_relative

SEND_BATCH = 256 * 1024  # coalesce small tar pieces into sends of about this size
TAR_BLOCK = 512
TAR_RECORD = 20 * TAR_BLOCK


@dataclass(frozen=True)
class _Dir:
    name: str
    mode: int
    mtime: int


@dataclass(frozen=True)
class _File:
    name: str
    path: Path


@dataclass(frozen=True)
class _Data:
    name: str
    data: bytes
    mode: int


_Member = _Dir | _File | _Data


def _header(name: str, kind: bytes, *, size: int = 0, mode: int, mtime: int) -> bytes:
    """One tar header (PAX only where needed: long or non-ASCII names, huge sizes)."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.mode = mode
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _walk(path: Path, rel: str, chain: frozenset[tuple[int, int]]) -> Iterator[_Member]:
    """Members for a local file or directory tree. Symlinks are followed (their content
    is what the job needs); symlink loops and fifos/sockets are skipped; a dangling
    symlink is an error, like a missing file."""
    try:
        st = path.stat()
    except OSError as exc:
        raise LocalFileError(f"cannot upload {path}: {exc.strerror}") from None
    if stat.S_ISREG(st.st_mode):
        yield _File(rel, path)
        return
    if not stat.S_ISDIR(st.st_mode) or (st.st_dev, st.st_ino) in chain:
        return
    yield _Dir(rel, stat.S_IMODE(st.st_mode) | 0o700, int(st.st_mtime))
    inner = chain | {(st.st_dev, st.st_ino)}
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        yield from _walk(Path(entry.path), f"{rel}/{entry.name}", inner)


def _plan_upload(
    files: Iterable[tuple[Path, str]], extra: Mapping[str, tuple[bytes, int]]
) -> list[tuple[Path, str] | _Member]:
    """Validate names up front, before a channel is opened; trees are walked while sending.

    Parents of in-memory members get explicit 0700 directory entries: those members
    may be secrets (the env file), and their directory should not be listable.
    """
    plan: list[tuple[Path, str] | _Member] = []
    for local, rel in files:
        local = Path(local)
        if not local.exists():
            raise LocalFileError(f"cannot upload {local}: no such file or directory")
        plan.append((local, clean_relative(rel)))
    now = int(time.time())
    made: set[str] = set()
    for rel, (data, mode) in extra.items():
        name = clean_relative(rel)
        for parent in _ancestors(name):
            if parent not in made:
                made.add(parent)
                plan.append(_Dir(parent, 0o700, now))
        plan.append(_Data(name, bytes(data), mode & 0o7777))
    return plan


class _TarSender:
    """Writes a tar stream into a channel, batching small pieces into larger sends."""

    def __init__(self, chan: paramiko.Channel) -> None:
        self.chan = chan
        self.sent = 0
        self._buf = bytearray()

    def write(self, data: bytes | memoryview) -> None:
        if len(self._buf) + len(data) <= SEND_BATCH:
            self._buf += data
            return
        self.flush()
        if len(data) < SEND_BATCH:
            self._buf += data
        else:
            self._send(data)

    def flush(self) -> None:
        if self._buf:
            self._send(self._buf)
            self._buf = bytearray()

    def _send(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            n = self.chan.send(view)
            if n <= 0:
                raise OSError("channel closed while sending")
            view = view[n:]
            self.sent += n

    def add(self, member: _Member) -> None:
        if isinstance(member, _Dir):
            self.write(_header(member.name, tarfile.DIRTYPE, mode=member.mode, mtime=member.mtime))
        elif isinstance(member, _Data):
            self.write(
                _header(
                    member.name,
                    tarfile.REGTYPE,
                    size=len(member.data),
                    mode=member.mode,
                    mtime=int(time.time()),
                )
            )
            self.write(member.data)
            self._pad(len(member.data))
        else:
            self._add_file(member)

    def _add_file(self, member: _File) -> None:
        """Header from the open file's own stat, then exactly that many bytes."""
        try:
            fh = open(member.path, "rb")  # noqa: SIM115 -- closed below, errors mapped
        except OSError as exc:
            raise LocalFileError(f"cannot upload {member.path}: {exc.strerror}") from None
        with fh:
            st = os.fstat(fh.fileno())
            size = st.st_size
            self.write(
                _header(
                    member.name,
                    tarfile.REGTYPE,
                    size=size,
                    mode=stat.S_IMODE(st.st_mode) & 0o777,
                    mtime=int(st.st_mtime),
                )
            )
            remaining = size
            buf = bytearray(min(CHUNK, max(size, 1)))
            while remaining:
                n = fh.readinto(memoryview(buf)[: min(len(buf), remaining)])
                if not n:
                    raise LocalFileError(f"{member.path} shrank while it was being uploaded")
                self.write(memoryview(buf)[:n])
                remaining -= n
        self._pad(size)

    def _pad(self, size: int) -> None:
        if size % TAR_BLOCK:
            self.write(bytes(TAR_BLOCK - size % TAR_BLOCK))

    def finish(self) -> None:
        """End-of-archive (two zero blocks), padded to a whole tar record."""
        end = self.sent + len(self._buf) + 2 * TAR_BLOCK
        self.write(bytes(2 * TAR_BLOCK + (-end) % TAR_RECORD))
        self.flush()


class Uploads(Channels):
    """The upload operation of a session (``RemoteSession`` in session.py)."""

    def upload(
        self,
        files: Iterable[tuple[Path, str]],
        remote_dir: str,
        *,
        extra: Mapping[str, tuple[bytes, int]] | None = None,
    ) -> int:
        """Send files (directories recurse) and in-memory members into ``remote_dir``.

        ``files`` pairs a local path with its path relative to ``remote_dir``;
        ``extra`` maps relative paths to (content, mode), e.g. a 0600 env file.
        One exec channel running ``tar -x``; returns the bytes of tar sent.
        """
        plan = _plan_upload(files, extra or {})
        chan = self._exec(scripts.upload_command(remote_dir), "upload")
        sender = _TarSender(chan)
        try:
            for item in plan:
                if isinstance(item, tuple):
                    for member in _walk(item[0], item[1], frozenset()):
                        sender.add(member)
                else:
                    sender.add(item)
            sender.finish()
            chan.shutdown_write()
        except LocalFileError:
            chan.close()  # remote tar sees a truncated archive and stops
            raise
        except (OSError, EOFError, paramiko.SSHException):
            pass  # the remote side stopped reading: its exit status and stderr say why
        err = bytearray()
        rc = self._pump(chan, lambda _: None, err.extend, "upload", stall=self.io_timeout)
        chan.close()
        if rc != 0:
            raise RemoteError(
                f"{self.endpoint}: unpacking into {remote_dir} failed (tar exit {rc}): "
                f"{_tail(bytes(err)) or 'no message'}"
            )
        return sender.sent


__all__ = ["Uploads"]
