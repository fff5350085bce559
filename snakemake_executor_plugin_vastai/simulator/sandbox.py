"""The process side of a simulated instance: environment, spawning, killing.

A simulated instance is a private directory (its *sandbox*) plus a *tag*. Every process
started for the instance -- by the SSH server (``sshd.py``) or by the REST side (the
onstart script) -- runs ``/bin/sh -c COMMAND`` with ``cwd`` = the sandbox, ``HOME`` = the
sandbox and ``VASTAI_SIM_TAG=<tag>`` in its environment. The tag is inherited by every
descendant, including ``setsid nohup ... &`` children that left the session and process
group, so ``kill_tagged`` finds them all by reading ``/proc/PID/environ``.

Isolation between instances is by convention only: exec'd commands are ordinary processes
of the simulator's own user (no root, no containers, no namespaces), so a command can read
or write anything that user can; each instance merely *starts* in its own directory.
Only SFTP is confined to the sandbox (see ``sshd.py``). A process that scrubs its own
environment (``env -i ...``) escapes the tag and thus ``kill_tagged``.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

TAG_VAR = "VASTAI_SIM_TAG"
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"

# What subprocess accepts for stdin/stdout/stderr.
_Redirect = int | IO[Any] | None


def sandbox_env(sandbox: Path, tag: str, extra_env: Mapping[str, str] | None) -> dict[str, str]:
    """Build the environment of every process of an instance.

    The simulator's interpreter directory comes first on PATH so that ``python`` and
    ``python -m snakemake`` inside an instance work without any network install.
    ``extra_env`` (the create request's env) is applied last, as on Vast.ai, but it cannot
    remove the tag: the tag is what lets ``kill_tagged`` find the instance's processes.
    """
    env = {
        "HOME": str(sandbox),
        "PATH": f"{Path(sys.executable).parent}:{SYSTEM_PATH}",
        "LANG": "C.UTF-8",
        "USER": "root",
        "LOGNAME": "root",
        "SHELL": "/bin/sh",
    }
    env.update(extra_env or {})
    env[TAG_VAR] = tag
    return env


def shell_argv(command: str | None) -> list[str]:
    """Argv that runs ``command`` like sshd does (``sh -c``), or an interactive-less shell."""
    return ["/bin/sh"] if command is None else ["/bin/sh", "-c", command]


def spawn(
    command: str | None,
    *,
    sandbox: Path,
    env: Mapping[str, str],
    stdin: _Redirect = subprocess.DEVNULL,
    stdout: _Redirect = subprocess.DEVNULL,
    stderr: _Redirect = subprocess.DEVNULL,
) -> subprocess.Popen[bytes]:
    """Start ``/bin/sh -c command`` (``command`` None: a plain ``/bin/sh``) in the sandbox.

    The new session keeps terminal signals of the simulator (Ctrl-C in a test run) away
    from instance processes; they are ended by ``kill_tagged`` instead. Unbuffered pipes
    (``bufsize=0``), because buffered ones stall interactive protocols such as ``scp -t``.
    """
    return subprocess.Popen(
        shell_argv(command),
        cwd=sandbox,
        env=dict(env),
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        bufsize=0,
        start_new_session=True,
        close_fds=True,
    )


def _environ_has_tag(pid: int, entry: bytes) -> bool:
    """Whether the process has exactly ``entry`` among its environment entries.

    Splitting on NUL makes the match exact: tag ``x-1`` does not match ``x-10``. Processes
    that vanish or belong to someone else simply do not match. Zombies have an empty
    environ, so dead-but-unreaped children never match (they are dead already).
    """
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            data = fh.read()
    except OSError:
        return False
    return entry in data.split(b"\0")


def tagged_pids(tag: str) -> list[int]:
    """Pids of live processes (of this uid) whose environment carries ``tag``.

    The calling process is never included, so the simulator cannot kill itself even if it
    was started from inside an instance.
    """
    entry = f"{TAG_VAR}={tag}".encode()
    me = os.getpid()
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != me and _environ_has_tag(int(name), entry):
            pids.append(int(name))
    return sorted(pids)


def _is_gone(pid: int) -> bool:
    """True once ``pid`` no longer runs: it has exited (zombie) or was reaped."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return True
    # Field 3, after the parenthesised command name (which may itself contain spaces).
    state = stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3]
    return state in (b"Z", b"X")


def signal_pids(pids: list[int], sig: int) -> list[int]:
    """Send ``sig`` to each pid; return those that existed."""
    hit = []
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            continue
        hit.append(pid)
    return hit


def _wait_gone(pids: list[int], deadline: float) -> list[int]:
    """Poll until all pids are gone or the deadline passes; return the survivors."""
    alive = [p for p in pids if not _is_gone(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.01)
        alive = [p for p in alive if not _is_gone(p)]
    return alive


def signal_tagged(tag: str, sig: int) -> int:
    """Send ``sig`` once to every process of ``tag``; return how many got it.

    After SIGKILL, waits (briefly) until they are really gone, so a caller that "killed the
    job" can rely on it being dead.
    """
    hit = signal_pids(tagged_pids(tag), sig)
    if sig == signal.SIGKILL:
        _wait_gone(hit, time.monotonic() + 1.0)
    return len(hit)


def kill_tagged(tag: str, grace: float = 0.5) -> int:
    """End every process of the instance ``tag``: SIGTERM, up to ``grace`` s, then SIGKILL.

    Returns how many processes were signalled. Rescans after the SIGKILL round, because a
    dying shell may have forked a last child in between. Dead children are not reaped here:
    their owner (a ``Popen`` or asyncio transport) reaps them and must get the real exit
    status -- reaping behind its back would turn that status into a bogus 0 or 255.
    """
    hit = set(signal_pids(tagged_pids(tag), signal.SIGTERM))
    survivors = _wait_gone(sorted(hit), time.monotonic() + grace)
    for _ in range(5):
        survivors = sorted(set(survivors) | set(tagged_pids(tag)))
        if not survivors:
            break
        hit |= set(signal_pids(survivors, signal.SIGKILL))
        survivors = _wait_gone(survivors, time.monotonic() + 1.0)
    return len(hit)


# -- a small disk (the disk_full fault) ---------------------------------------------------
def mount_small_disk(path: Path, size_bytes: int) -> bool:
    """Mount a tmpfs of about ``size_bytes`` over ``path``: writes beyond it get ENOSPC.

    Returns False (and mounts nothing) where mounting is not permitted.
    """
    size_kib = max(size_bytes // 1024, 16)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0700",
                           "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        log.warning("disk_full fault: cannot mount a tmpfs on %s: %s", path,
                    done.stderr.strip())
        return False
    return True


def unmount(path: Path) -> None:
    """Undo :func:`mount_small_disk` (lazily: a process may still hold a file there)."""
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def can_mount() -> bool:
    """Whether :func:`mount_small_disk` works here (root with mount permission)."""
    import tempfile

    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    probe = Path(tempfile.mkdtemp(prefix="vastai-sim-mount-"))
    try:
        if not mount_small_disk(probe, 64 * 1024):
            return False
        unmount(probe)
        return True
    finally:
        probe.rmdir()
