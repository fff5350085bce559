"""The safe extractor: downloads, ``tar -c`` on the host streamed into a local unpacker.

One exec channel per download, as for uploads. The extractor treats the host as
hostile: only declared outputs and logs are accepted (see ``AllowedPaths`` in
paths.py and ``_Extractor``), links are accepted only where they cannot lead out,
nothing is written through a local symlink, and each file is written under a
temporary name and renamed, so a dropped connection never leaves a half file under
its final name. The stream is capped (a hostile host could send forever), and a
connection lost mid-stream becomes ``SSHUnavailable`` (retry), not a corrupt archive.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import secrets
import shutil
import stat
import tarfile
from collections.abc import Sequence
from pathlib import Path

import paramiko

from . import scripts as scripts
from .channels import CHUNK, Channels, _tail
from .errors import (
    DownloadTooLarge,
    MissingRemotePaths,
    RemoteError,
    SSHUnavailable,
    UnsafeArchive,
)
from .paths import AllowedPaths, clean_relative

TRAILER_LIMIT = 1024 * 1024  # bytes tolerated after the end-of-archive marker
TAR_READ_BUFSIZE = 32 * 1024  # tarfile's stream buffer (larger makes its slicing quadratic)
MODE_MASK = 0o755  # no setuid/setgid/sticky, no group/other write on files we receive


class _ChannelReader:
    """File-like ``read`` over a channel's stdout, for tarfile's stream mode.

    Receives in large pieces and serves tarfile's small reads from its own buffer:
    many small ``recv`` calls are slow in paramiko (each shifts its whole receive
    buffer). Counts bytes against a cap (a hostile host could stream forever) and
    turns a connection that vanished mid-stream into ``SSHUnavailable``.
    """

    def __init__(self, chan: paramiko.Channel, where: str, limit: int | None) -> None:
        self.chan = chan
        self.where = where
        self.limit = limit
        self.count = 0
        self._buf = b""
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        if self._pos >= len(self._buf):
            self._buf, self._pos = self._receive(), 0
        end = len(self._buf) if n is None or n < 0 else min(len(self._buf), self._pos + n)
        out = self._buf[self._pos : end]
        self._pos = end
        return out

    def _receive(self) -> bytes:
        try:
            data = self.chan.recv(CHUNK)
        except TimeoutError:
            raise SSHUnavailable(f"{self.where}: download stalled (no data)") from None
        except (EOFError, OSError, paramiko.SSHException) as exc:
            # A link that dies with data still buffered raises instead of returning b"":
            # that is a lost connection (retry), not an internal error.
            lost = f"{self.where}: connection lost during download: {exc!r}"
            raise SSHUnavailable(lost) from None
        # A clean end comes with EOF or at least an exit status (sent before the close);
        # a channel closed without either was cut off with its connection.
        if not data and not self.chan.eof_received and self.chan.exit_status == -1:
            raise SSHUnavailable(f"{self.where}: connection lost during download")
        self.count += len(data)
        if self.limit is not None and self.count > self.limit:
            raise UnsafeArchive(f"huge archive: the stream exceeds {self.limit} bytes")
        return data

    def drain(self) -> None:
        """Read to EOF: tar pads its output past the end-of-archive marker, to a whole
        record. Much more than that is not padding but a host streaming junk at us."""
        extra = 0
        while chunk := self.read(CHUNK):
            extra += len(chunk)
            if extra > TRAILER_LIMIT:
                raise UnsafeArchive(f"more than {TRAILER_LIMIT} bytes after the archive's end")


def _temp_name(directory: str) -> str:
    return os.path.join(directory, f".vastai-tmp-{secrets.token_hex(6)}")


def _create_temp(directory: str) -> tuple[int, str]:
    """A fresh 0600 file in ``directory``; never follows or reuses an existing name."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = _temp_name(directory)
        try:
            return os.open(tmp, flags, 0o600), tmp
        except FileExistsError:
            continue


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _stat(path: str) -> os.stat_result | None:
    """What a link leads to (None: nothing)."""
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _Extractor:
    """Extracts a tar stream under ``root``, accepting only what ``allowed`` declares.

    Links: a symlink must be relative and its target, resolved from the link's own
    directory, must stay inside what the job may write (a declared output, log or
    directory output): a symlinked output beside its file, or ``../top.txt`` inside a
    ``directory()``, is as safe as a file; a link that leaves the outputs is refused.
    A hard link must lie at an allowed path and name a file this same archive already
    delivered (it is written as a copy, and counted against ``max_bytes`` like one).
    Devices, fifos and sparse files are refused. Every directory on the way to a target
    is checked (once): a symlink this archive made is never written through (so no chain
    of links can climb out), while one that was there before the download is the user's
    layout (``results -> /big/disk``) and is followed. Targets are replaced by rename,
    which never follows a link.
    """

    def __init__(self, root: Path, allowed: AllowedPaths, max_bytes: int | None) -> None:
        self.root = os.path.abspath(root)
        self.allowed = allowed
        self.max_bytes = max_bytes
        self.total = 0
        self.seen: set[str] = set()
        self.written: list[Path] = []
        self._files: dict[str, str] = {}
        self._dirs: list[tuple[str, int, int]] = []
        self._real_dirs: set[str] = {self.root}
        self._links: set[str] = set()  # symlinks this archive made: never written through

    def extract(self, reader: _ChannelReader) -> list[Path]:
        os.makedirs(self.root, exist_ok=True)
        try:
            tar = tarfile.open(fileobj=reader, mode="r|", bufsize=TAR_READ_BUFSIZE)  # noqa: SIM115
        except tarfile.ReadError:
            if reader.count == 0:
                return []  # nothing to send: every requested path was missing
            raise
        with tar:
            for member in tar:
                self._member(tar, member)
        self._finish_dirs()
        return self.written

    def _count(self, size: int, name: str) -> None:
        """Bytes written locally so far, against the download cap."""
        self.total += size
        if self.max_bytes is not None and self.total > self.max_bytes:
            raise DownloadTooLarge(
                f"the job's outputs exceed the download cap of {self.max_bytes} bytes (at "
                f"{name!r}; --vastai-max-download, 0 for none)")

    def _member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        if member.isreg() and not member.issparse():
            self._count(member.size, member.name)
            self._file(tar, member, self.allowed.check(member.name))
        elif member.isdir():
            self._dir(member, self.allowed.check(member.name, is_dir=True))
        elif member.issym():
            self._symlink(member, self.allowed.check(member.name))
        elif member.islnk():
            self._hardlink(member, self.allowed.check(member.name))
        else:
            raise UnsafeArchive(
                f"{member.name!r}: special files (devices, fifos, sparse) are not accepted"
            )

    # -- placing things

    def _real_dir(self, path: str, rel: str) -> None:
        """Make sure ``path`` is a real directory (creating it), never a symlink."""
        if path in self._real_dirs:
            return
        st = _lstat(path)
        if st is None:
            with contextlib.suppress(FileExistsError):
                os.mkdir(path, 0o755)
            st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            if path in self._links:
                raise UnsafeArchive(f"{rel!r} goes through a symlink this archive made; "
                                    "refusing to write through it")
            st = _stat(path)  # the user's own link (there before the download): followed
            if st is None:
                raise UnsafeArchive(f"local {path} is a symlink to nothing; {rel!r} needs a "
                                    "directory there")
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafeArchive(f"local {path} is not a directory, but {rel!r} needs one")
        self._real_dirs.add(path)

    def _target(self, rel: str) -> str:
        """The local path for ``rel``, after making its parents real directories."""
        current = self.root
        for part in rel.split("/")[:-1]:
            current = os.path.join(current, part)
            self._real_dir(current, rel)
        self.seen.add(rel)
        return os.path.join(current, rel.rsplit("/", 1)[-1])

    def _install(self, tmp: str, target: str) -> None:
        """Rename into place: replaces a file or a symlink itself, never its target."""
        try:
            os.replace(tmp, target)
        except (IsADirectoryError, NotADirectoryError, FileExistsError):
            raise UnsafeArchive(
                f"local {target} is a directory; the archive has a file there"
            ) from None
        self.written.append(Path(target))

    def _file(self, tar: tarfile.TarFile, member: tarfile.TarInfo, rel: str) -> None:
        target = self._target(rel)
        source = tar.extractfile(member)
        assert source is not None
        fd, tmp = _create_temp(os.path.dirname(target))
        try:
            try:
                remaining = member.size
                while remaining:
                    chunk = source.read(min(CHUNK, remaining))
                    if not chunk:
                        raise RemoteError(f"archive ended inside {member.name!r}")
                    _write_all(fd, chunk)
                    remaining -= len(chunk)
                os.fchmod(fd, member.mode & MODE_MASK)
                os.utime(fd, (member.mtime, member.mtime))
            finally:
                os.close(fd)
            self._install(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        self._files[rel] = target

    def _dir(self, member: tarfile.TarInfo, rel: str) -> None:
        target = self._target(rel)
        self._real_dir(target, rel)
        if rel in self.allowed.directories or self.allowed.directory_of(rel):
            # Only declared trees take the archive's modes; parents of declared
            # paths (maybe the workdir's own folders) are merely created.
            self._dirs.append((target, (member.mode & MODE_MASK) | 0o700, member.mtime))

    def _symlink(self, member: tarfile.TarInfo, rel: str) -> None:
        link = member.linkname
        if not link or link.startswith("/") or "\0" in link:
            raise UnsafeArchive(f"symlink {rel!r} -> {link!r} rejected: only relative links "
                                "are accepted")
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(rel), link))
        if not self._inside_outputs(resolved):
            raise UnsafeArchive(
                f"symlink {rel!r} -> {link!r} rejected: it leads to {resolved!r}, outside "
                "the job's declared outputs")
        target = self._target(rel)
        tmp = _temp_name(os.path.dirname(target))
        os.symlink(link, tmp)
        try:
            self._install(tmp, target)
        except BaseException:
            os.unlink(tmp)
            raise
        self._links.add(target)

    def _inside_outputs(self, rel: str) -> bool:
        """Is ``rel`` (normalised) a path the job may write, as a file or a directory?"""
        for is_dir in (False, True):
            try:
                self.allowed.check(rel, is_dir=is_dir)
                return True
            except UnsafeArchive:
                continue
        return False

    def _hardlink(self, member: tarfile.TarInfo, rel: str) -> None:
        source = self._files.get(self.allowed.check(member.linkname))
        if source is None:
            raise UnsafeArchive(
                f"hard link {rel!r} -> {member.linkname!r} rejected: its target is not a "
                "file delivered by this archive"
            )
        self._count(os.stat(source, follow_symlinks=False).st_size, member.name)
        target = self._target(rel)
        fd, tmp = _create_temp(os.path.dirname(target))
        try:
            with (
                os.fdopen(os.open(source, os.O_RDONLY | os.O_NOFOLLOW), "rb") as src,
                os.fdopen(fd, "wb") as out,
            ):
                shutil.copyfileobj(src, out, CHUNK)
            shutil.copystat(source, tmp, follow_symlinks=False)
            self._install(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        self._files[rel] = target

    def _finish_dirs(self) -> None:
        """Directory modes and mtimes last (adding files changes a directory's mtime)."""
        for path, mode, mtime in reversed(self._dirs):
            os.chmod(path, mode)
            os.utime(path, (mtime, mtime))


SIZE_LISTING_MAX = 8 * 1024 * 1024  # bytes of a download's size listing (~500k entries)


class _ListingTooLong(Exception):
    """The host's size listing passed SIZE_LISTING_MAX: the total stays unknown."""


class Downloads(Channels):
    """The download operation of a session (``RemoteSession`` in session.py)."""

    def download_size(self, remote_dir: str, paths: Sequence[str]) -> int | None:
        """What :meth:`download` of ``paths`` will move, as the host lists it (for the
        progress total and percentage only: a host's word sizes nothing else); None
        when it cannot say."""
        wanted = [clean_relative(p) for p in paths]
        if not wanted:
            return None
        chan = self._exec(scripts.size_command(remote_dir, wanted), "size")
        self._close_input(chan, "size")
        listing = bytearray()

        def take(data: bytes) -> None:  # a host that floods gets no total, not our memory
            if len(listing) + len(data) > SIZE_LISTING_MAX:
                raise _ListingTooLong
            listing.extend(data)

        try:
            rc = self._pump(chan, take, lambda _data: None, "size", timeout=60)
        except _ListingTooLong:
            return None
        finally:
            chan.close()
        if rc != 0 or not listing:
            return None
        return scripts.tar_bytes(listing.decode("utf-8", "replace"))

    def download(
        self,
        remote_dir: str,
        paths: Sequence[str],
        local_root: Path,
        *,
        allowed: AllowedPaths,
        max_bytes: int | None = None,
        optional: Sequence[str] = (),
    ) -> list[Path]:
        """Bring ``paths`` (relative to ``remote_dir``) home under ``local_root``.

        One exec channel running ``tar -c``, streamed into the safe extractor. Paths
        that exist are written; missing ones then raise ``MissingRemotePaths`` (except
        those in ``optional``).
        Returns the local paths written (files and links).
        """
        wanted = [clean_relative(p) for p in paths]
        if not wanted:
            return []
        chan = self._exec(scripts.download_command(remote_dir, wanted), "download")
        self._close_input(chan, "download")
        limit = None if max_bytes is None else max_bytes + max_bytes // 8 + 16 * 1024 * 1024
        reader = _ChannelReader(chan, str(self.endpoint), limit)
        extractor = _Extractor(Path(local_root), allowed, max_bytes)
        try:
            written = extractor.extract(reader)
            reader.drain()
        except UnsafeArchive as exc:
            chan.close()
            raise UnsafeArchive(
                f"{self.endpoint}: unsafe archive from {remote_dir}: {exc}; "
                "nothing outside the declared outputs and logs was written"
            ) from None
        except tarfile.TarError as exc:
            if not self._transport.is_active():
                chan.close()
                raise SSHUnavailable(f"{self.endpoint}: connection lost during download") from None
            chan.status_event.wait(min(self.io_timeout, 5))
            err = _drain_stderr(chan)
            chan.close()
            raise RemoteError(
                f"{self.endpoint}: corrupt archive from {remote_dir}: {exc}; {_tail(err)}"
            ) from None
        except BaseException:
            with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                chan.close()
            raise
        rc = self._exit_status(chan, "download")
        err = _drain_stderr(chan)
        chan.close()
        if rc == scripts.EXIT_NO_JOB_DIR:
            raise RemoteError(f"{self.endpoint}: remote directory {remote_dir} does not exist")
        if rc != 0:
            raise RemoteError(
                f"{self.endpoint}: packing {remote_dir} failed (tar exit {rc}): {_tail(err)}"
            )
        may_lack = {clean_relative(p) for p in optional}
        missing = [p for p in wanted if p not in extractor.seen and p not in may_lack]
        if missing:
            raise MissingRemotePaths(
                f"{self.endpoint}: not found in {remote_dir} on the instance: "
                + ", ".join(missing),
                missing,
            )
        return written


def _drain_stderr(chan: paramiko.Channel) -> bytes:
    """Whatever stderr arrived (tar's complaints); small, and the channel has ended."""
    parts = []
    while chan.recv_stderr_ready():
        parts.append(chan.recv_stderr(CHUNK))
    return b"".join(parts)


__all__ = ["Downloads"]
