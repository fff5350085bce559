"""The adapter's errors: one family under ``RemoteError``, split by what a caller does next.

``SSHUnavailable`` (and its ``AuthRejected``) is transient: retry with backoff.
``HostKeyMismatch`` must never be retried. ``UnsafeArchive`` and ``MissingRemotePaths``
come from a download, ``LocalFileError`` from an upload. They live apart from the code
that raises them because every part of the adapter raises them (the session, the tar
sender, the safe extractor, the detached launch) and the transport catches them.
"""

from __future__ import annotations

from collections.abc import Sequence


class RemoteError(Exception):
    """Something failed on or with the instance; the message names host:port and what."""


class SSHUnavailable(RemoteError):
    """Refused, reset, dropped or timed out: transient, retry with backoff.

    ``offset`` is set by ``follow``: how far the log got before the connection broke.
    """

    def __init__(self, message: str, *, offset: int | None = None) -> None:
        super().__init__(message)
        self.offset = offset


class AuthRejected(SSHUnavailable):
    """The server refused our key. Transient on Vast.ai right after boot (the key is
    being installed), permanent if the key is wrong: retry within a budget."""


class HostKeyMismatch(RemoteError):
    """The host key differs from the pinned one: refuse, never retry."""


class UnsafeArchive(RemoteError):
    """A downloaded archive entry would land outside the declared paths (or is huge)."""


class DownloadTooLarge(UnsafeArchive):
    """The job's outputs exceed ``--vastai-max-download``: what came home stays, the job
    fails and its instance is destroyed."""


class MissingRemotePaths(RemoteError):
    """Requested paths did not exist on the instance; the others were downloaded."""

    def __init__(self, message: str, missing: Sequence[str]) -> None:
        super().__init__(message)
        self.missing = list(missing)


class LocalFileError(RemoteError):
    """A local file to upload could not be read."""


__all__ = [
    "AuthRejected",
    "HostKeyMismatch",
    "LocalFileError",
    "MissingRemotePaths",
    "RemoteError",
    "SSHUnavailable",
    "UnsafeArchive",
]
