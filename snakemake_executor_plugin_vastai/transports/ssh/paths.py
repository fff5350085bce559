"""Which relative paths may travel: the path rules of both directions.

``clean_relative`` normalises a path named relative to a job directory and refuses
absolute ones, ``..`` and NUL bytes (the tar sender names every member with it, the
download validates every requested path with it). ``AllowedPaths`` is the safe
extractor's allow-list: what a job may bring home, its declared outputs and logs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from .errors import UnsafeArchive


def clean_relative(path: str) -> str:
    """Normalise a relative POSIX path; raise ValueError for absolute or escaping ones."""
    if "\0" in path:
        raise ValueError(f"path {path!r} contains a NUL byte")
    if path.startswith("/"):
        raise ValueError(f"path {path!r} is absolute")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"path {path!r} contains '..'")
    if not parts:
        raise ValueError(f"path {path!r} is empty")
    return "/".join(parts)


def _ancestors(rel: str) -> Iterator[str]:
    """Proper ancestors of a relative path, outermost first: a/b/c -> a, a/b."""
    parts = rel.split("/")
    for i in range(1, len(parts)):
        yield "/".join(parts[:i])


class AllowedPaths:
    """What a job may bring home: its declared output/log files and directories.

    ``check`` accepts a declared file, a declared directory or anything inside one,
    and directory entries for the parents of declared paths; everything else, and a
    file where a directory is declared (or the reverse), raises ``UnsafeArchive``.
    """

    def __init__(self, files: Iterable[str], directories: Iterable[str]) -> None:
        self.files = frozenset(clean_relative(str(f)) for f in files)
        self.directories = frozenset(clean_relative(str(d)) for d in directories)
        self._parents = frozenset(a for p in self.files | self.directories for a in _ancestors(p))

    def __repr__(self) -> str:
        return f"AllowedPaths(files={sorted(self.files)}, directories={sorted(self.directories)})"

    def directory_of(self, rel: str) -> str | None:
        """The declared directory that strictly contains ``rel``, if any."""
        for parent in _ancestors(rel):
            if parent in self.directories:
                return parent
        return None

    def check(self, member_name: str, *, is_dir: bool = False) -> str:
        """The normalised relative path of an archive member, or raise ``UnsafeArchive``."""
        try:
            rel = clean_relative(member_name)
        except ValueError as exc:
            raise UnsafeArchive(f"archive entry rejected: {exc}") from None
        if rel in self.files:
            if is_dir:
                raise UnsafeArchive(f"{rel!r} is a directory, but a file was declared")
            return rel
        if rel in self.directories:
            if not is_dir:
                raise UnsafeArchive(f"{rel!r} is not a directory, but a directory was declared")
            return rel
        if self.directory_of(rel) is not None:
            return rel
        if rel in self._parents:
            if not is_dir:
                raise UnsafeArchive(f"{rel!r} is not a directory, but declared paths lie below it")
            return rel
        raise UnsafeArchive(f"{rel!r} is not a declared output or log of the job")


__all__ = ["AllowedPaths", "clean_relative"]
