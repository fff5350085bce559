"""The run's SSH key pair: made once per run, kept on disk 0600, never printed.

paramiko can load but not generate Ed25519 keys, so ``cryptography`` generates
them. The private key is written so that it is never readable by anyone else,
not even for a moment (created 0600 under a temporary name in a 0700
directory, then linked into place), and concurrent creators (two processes
racing on the same run) end up sharing one key rather than overwriting each
other. Nothing here puts key material into a repr, a log line or an exception
message; only the public line and its fingerprint may be shown.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class KeyFileError(Exception):
    """A key file cannot be created or read (message names the path, never the content)."""


def generate_keypair(comment: str = "") -> tuple[bytes, str]:
    """A fresh Ed25519 key: (private key as OpenSSH PEM, public ``ssh-ed25519 AAAA...`` line)."""
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    line = public.decode("ascii")
    return pem, f"{line} {comment}" if comment else line


def _private_dir(directory: Path) -> None:
    """Create ``directory`` (and parents) and make it 0700: the key's directory is ours alone."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)


def _write_temp(directory: Path, pem: bytes) -> Path:
    """Write ``pem`` to a new 0600 file in ``directory`` and return its path.

    ``O_EXCL | O_NOFOLLOW`` with mode 0600 at creation: the file never exists with
    looser permissions, and a planted symlink cannot redirect the write.
    """
    tmp = directory / f".tmp-{secrets.token_hex(8)}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(tmp, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(pem)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp


def write_private_key(path: Path, pem: bytes, *, replace: bool = True) -> bool:
    """Store a private key at ``path`` with mode 0600, atomically; parent directory 0700.

    With ``replace=False`` an existing file wins (returns False) -- the link-based
    create is atomic, so two racing writers agree on one key. Returns True when
    ``pem`` was stored.
    """
    path = Path(path)
    _private_dir(path.parent)
    tmp = _write_temp(path.parent, pem)
    try:
        if replace:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        tmp.unlink(missing_ok=True)


def load_private_key(path: Path) -> paramiko.PKey:
    """Load a private key file for paramiko; refuse one that others may read."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise KeyFileError(f"cannot read SSH key {path}: {exc.strerror}") from None
    if mode & 0o077:
        raise KeyFileError(
            f"SSH key {path} is accessible by group or others (mode {mode & 0o777:o}); "
            "chmod 600 it or delete it to get a new one"
        )
    try:
        return paramiko.PKey.from_path(path)
    except (OSError, paramiko.SSHException, ValueError) as exc:
        # The exception text of a key parser never contains the key itself, but its
        # type is all the caller needs.
        raise KeyFileError(f"cannot load SSH key {path}: {type(exc).__name__}") from None


def public_line(pkey: paramiko.PKey, comment: str = "") -> str:
    """The OpenSSH ``authorized_keys`` line of a key (public half only)."""
    line = f"{pkey.get_name()} {pkey.get_base64()}"
    return f"{line} {comment}" if comment else line


def fingerprint(public: str) -> str:
    """OpenSSH-style ``SHA256:...`` fingerprint of a public key line."""
    try:
        blob = base64.b64decode(public.split()[1], validate=True)
    except (IndexError, ValueError):
        return "(not a public key line)"
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


@dataclass(frozen=True)
class RunKey:
    """The key pair of one run: ``pkey`` for paramiko, ``public_line`` for instances."""

    path: Path
    public_line: str
    pkey: paramiko.PKey = field(repr=False, compare=False)

    @classmethod
    def load_or_create(cls, directory: Path, name: str) -> RunKey:
        """The key stored as ``directory/name``, generated and stored first if absent.

        ``name`` (the run id) must be a plain file name. Loading again after a crash
        returns the same key, so instances rented before the crash stay reachable.
        """
        if not _NAME_RE.match(name):
            raise KeyFileError(f"invalid key name {name!r}: use letters, digits, '.', '_', '-'")
        path = Path(directory) / name
        comment = f"vastai-{name}"
        if not path.exists():
            pem, _ = generate_keypair(comment)
            write_private_key(path, pem, replace=False)
        pkey = load_private_key(path)
        return cls(path=path, public_line=public_line(pkey, comment), pkey=pkey)

    @property
    def fingerprint(self) -> str:
        """``SHA256:...`` of the public key, the safe way to show which key this is."""
        return fingerprint(self.public_line)

    def __repr__(self) -> str:
        return f"RunKey(path={str(self.path)!r}, fingerprint={self.fingerprint!r})"

    def delete(self) -> None:
        """Remove the private key file (after the run, when no instance needs it)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


__all__ = [
    "KeyFileError",
    "RunKey",
    "fingerprint",
    "generate_keypair",
    "load_private_key",
    "public_line",
    "write_private_key",
]
