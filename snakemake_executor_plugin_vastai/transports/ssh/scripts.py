"""The shell and Python snippets that run on the instance, and the command lines around them.

Kept apart from the client side (session.py and the modules it joins) so that what
executes on a rented host can be read in one place. Everything here is plain POSIX
``sh`` plus a small Python 3 script (the job needs Python on the image anyway), and
nothing here ever contains a secret: the command line of an exec request is visible
to every process on the host (``ps``), so secrets travel only inside the uploaded tar
stream, into 0600 files.

Layout of a job directory ``D`` (relative to ``$HOME``)::

    D/.vastai/job.sh   the job's command (0700)
    D/.vastai/env      ``export K='v'`` lines, sourced by the wrapper (0600)
    D/.vastai/run.sh   the wrapper below (0700)
    D/.vastai/pid      the wrapper's pid, written by the wrapper itself
    D/.vastai/log      stdout + stderr of the wrapper and the job
    D/.vastai/rc       the job's exit code; written last, atomically (tmp + mv)
    D/.vastai/max_runtime  the job's maximal runtime in seconds (0: none), for the watchdog
    D/.vastai/home     written by the clean-up after a download: the outputs are home
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence

CONTROL_DIR = ".vastai"
JOB_SCRIPT = f"{CONTROL_DIR}/job.sh"
ENV_FILE = f"{CONTROL_DIR}/env"
TAG_FILE = f"{CONTROL_DIR}/tag"  # the job's process tag (a fresh random token per launch)
WRAPPER = f"{CONTROL_DIR}/run.sh"
MAX_RUNTIME_FILE = f"{CONTROL_DIR}/max_runtime"  # seconds, 0 = none (watchdog/agent.py)
HOME_MARK = "home"  # in the control dir: the job's outputs reached the run (agent.py)

# Exit codes of our own snippets (chosen outside what sh/tar use for their errors).
EXIT_NO_JOB_DIR = 96
EXIT_NO_START = 70
EXIT_NO_PYTHON = 127

_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# The wrapper, started detached (new session, stdin /dev/null, output to the log) so a
# dropped SSH connection cannot take the job down. It outlives the job: a job killed by
# SIGKILL (an OOM kill, say) still gets its status 137 recorded. rc is the last thing
# written, via rename, so a reader that sees rc sees a complete number and a finished log.
WRAPPER_SH = """\
# vastai job wrapper: records its pid, sources env, runs job.sh, records rc.
cd "$(dirname "$0")/.." || exit 1
echo $$ > .vastai/pid.tmp && mv -f .vastai/pid.tmp .vastai/pid
if [ -f .vastai/env ]; then . ./.vastai/env; fi
# every process the job starts inherits the tag, detached ones too (sweep finds them)
if [ -f .vastai/tag ]; then SNAKEMAKE_VASTAI_JOB_TAG=$(cat .vastai/tag); fi
export SNAKEMAKE_VASTAI_JOB_TAG
sh ./.vastai/job.sh
rc=$?
echo "$rc" > .vastai/rc.tmp && mv -f .vastai/rc.tmp .vastai/rc
"""

# The follower / status probe (Python 3.6+, stdlib only), run with ``python3 -c``.
# follow: stream the log from OFFSET to stdout as raw bytes -- nothing else ever goes
# to stdout, so the client's byte count IS the log offset. The outcome goes to stderr
# as one final line ("end rc N", "end lost", "end absent"), with "hb" heartbeat lines
# meanwhile so the client can tell a silent host from a quiet job. The outcome comes
# from the rc file written by the wrapper, never from the log's content.
# status: print one line: "running", "finished N", "lost" or "absent".
FOLLOWER_PY = r"""
import os, select, sys, time

def read_rc(ctl):
    try:
        with open(os.path.join(ctl, "rc"), "rb") as f:
            return f.read(32).strip().decode("ascii", "replace") or "?"
    except OSError:
        return None

def wrapper_alive(ctl):
    # None: no pid file (never launched); else whether the wrapper process still runs.
    try:
        with open(os.path.join(ctl, "pid"), "rb") as f:
            pid = int(f.read(32).strip())
    except (OSError, ValueError):
        return None
    proc = "/proc/%d" % pid
    if os.path.isdir("/proc/self"):
        try:
            with open(proc + "/stat", "rb") as f:
                stat = f.read()
            with open(proc + "/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            return False
        state = stat[stat.rindex(b")") + 2:stat.rindex(b")") + 3]
        if state in (b"Z", b"X"):
            return False
        # The pid may have been reused by an unrelated process: it must be our wrapper.
        wrapper = os.path.realpath(os.path.join(ctl, "run.sh")).encode()
        return any(a == wrapper for a in args)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

def status(ctl):
    if not os.path.isdir(ctl):
        return "absent"
    rc = read_rc(ctl)
    if rc is not None:
        return "finished " + rc
    alive = wrapper_alive(ctl)
    rc = read_rc(ctl)  # the wrapper may have finished between the two looks
    if rc is not None:
        return "finished " + rc
    if alive is None:
        return "absent"
    return "running" if alive else "lost"

def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]

def exit_waiter(ctl):
    # A pidfd becomes readable when the wrapper exits: the follower sleeps long while
    # the job is quiet and still sees its end at once (Linux >= 5.3; else plain polls).
    try:
        with open(os.path.join(ctl, "pid"), "rb") as f:
            return os.pidfd_open(int(f.read(32).strip()))
    except (AttributeError, OSError, ValueError):
        return None

def follow(ctl, offset, poll, beat):
    path = os.path.join(ctl, "log")
    log = None
    last = time.monotonic()
    waiter = exit_waiter(ctl)
    delay = poll
    while True:
        if log is None:
            try:
                log = open(path, "rb")
                log.seek(offset)
            except OSError:
                log = None
        chunk = log.read(1 << 16) if log is not None else b""
        if chunk:
            write_all(1, chunk)
            offset += len(chunk)
            delay = poll
            continue
        state = status(ctl)
        if state != "running":
            while log is not None:
                chunk = log.read(1 << 16)
                if not chunk:
                    break
                write_all(1, chunk)
            parts = state.split(" ", 1)
            end = "end rc " + parts[1] if parts[0] == "finished" else "end " + state
            write_all(2, (end + "\n").encode())
            return
        if time.monotonic() - last >= beat:
            write_all(2, b"hb\n")
            last = time.monotonic()
        if waiter is None:
            time.sleep(poll)
            continue
        # Quiet job: poll the log less and less often (up to 1 s); its exit wakes us.
        select.select([waiter], [], [], delay)
        delay = min(delay * 1.5, max(poll, 1.0))

def tagged(tag):
    # Every process whose environment carries the job's tag (readable: the same user).
    mark = ("SNAKEMAKE_VASTAI_JOB_TAG=" + tag).encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open("/proc/%s/environ" % name, "rb") as f:
                if mark in f.read().split(b"\0"):
                    found.append(int(name))
        except OSError:
            pass
    return found

def gpu_apps():
    # Processes holding GPU memory (nvidia-smi where present; -1: cannot tell).
    import shutil, subprocess
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid",
                              "--format=csv,noheader"], capture_output=True, timeout=30)
    except Exception:
        return -1
    if out.returncode != 0:
        return -1
    return len([l for l in out.stdout.split(b"\n") if l.strip()])

def sweep(ctl):
    # End everything the job started: TERM, a grace, KILL; report what is left. The
    # outputs are home by now: mark it, so the watchdog may destroy rather than stop.
    import signal
    try:
        open(os.path.join(ctl, "home"), "w").close()
    except OSError:
        pass
    try:
        with open(os.path.join(ctl, "tag"), "rb") as f:
            tag = f.read(64).strip().decode("ascii")
    except OSError:
        write_all(1, b"untagged\n")
        return
    if not tag:
        write_all(1, b"untagged\n")
        return
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
        pids = tagged(tag)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            time.sleep(0.1)
            pids = [p for p in tagged(tag) if not zombie(p)]
        if not pids:
            break
    left = [p for p in tagged(tag) if not zombie(p)]
    write_all(1, ("left %d gpu %d\n" % (len(left), gpu_apps())).encode())

def zombie(pid):
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2:stat.rindex(b")") + 3] in (b"Z", b"X")
    except (OSError, ValueError):
        return True

def main():
    mode, ctl = sys.argv[1], sys.argv[2]
    if mode == "status":
        write_all(1, (status(ctl) + "\n").encode())
    elif mode == "sweep":
        sweep(ctl)
    else:
        follow(ctl, int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]))

try:
    main()
except BrokenPipeError:
    pass
"""

_FIND_PYTHON = (
    "PY=$(command -v python3 || command -v python) || "
    "{ echo 'vastai: no python3 on the instance (needed to follow the job)' >&2; "
    f"exit {EXIT_NO_PYTHON}; }}"
)


def control_dir(job_dir: str) -> str:
    """The control directory of a job directory, as the remote shell will see it."""
    return f"{job_dir.rstrip('/')}/{CONTROL_DIR}"


def env_file(env: Mapping[str, str]) -> bytes:
    """``export K='v'`` lines for the 0600 env file; values shell-quoted, names checked.

    Errors name the variable but never its value (it may be a secret).
    """
    lines = []
    for name, value in env.items():
        if not _ENV_NAME_RE.match(name):
            raise ValueError(f"invalid environment variable name {name!r}")
        if "\0" in value:
            raise ValueError(f"environment variable {name} contains a NUL byte")
        lines.append(f"export {name}={shlex.quote(value)}\n")
    return "".join(lines).encode()


def upload_command(remote_dir: str) -> str:
    """Unpack a tar stream from stdin into ``remote_dir`` (relative to $HOME or absolute)."""
    d = shlex.quote(remote_dir)
    return f"mkdir -p -- {d} && exec tar -x -f - -C {d}"


def download_command(remote_dir: str, paths: Sequence[str]) -> str:
    """Tar the requested paths of ``remote_dir`` to stdout, skipping the missing ones.

    Missing paths are simply left out (tar would fail on them); the client works out
    which ones were missing from the archive's own members, so nothing here needs
    to be parsed.
    """
    d = shlex.quote(remote_dir)
    words = " ".join(shlex.quote(p) for p in paths)
    return (
        f"cd -- {d} || exit {EXIT_NO_JOB_DIR}\n"
        "set --\n"
        f"for p in {words}; do\n"
        '  if [ -e "$p" ] || [ -h "$p" ]; then set -- "$@" "$p"; fi\n'
        "done\n"
        '[ "$#" -gt 0 ] || exit 0\n'
        'exec tar -c -f - -- "$@"\n'
    )


def size_command(remote_dir: str, paths: Sequence[str]) -> str:
    """List what :func:`download_command` would send: ``f SIZE`` per regular file, ``o``
    per other entry (directory, link), so the client can work out the tar's size for a
    download's total and percentage. Missing paths are left out, as there."""
    d = shlex.quote(remote_dir)
    words = " ".join(shlex.quote("./" + p) for p in paths)
    return (f"cd -- {d} || exit {EXIT_NO_JOB_DIR}\n"
            f"find {words} \\( -type f -printf 'f %s\\n' \\) -o -printf 'o\\n' "
            "2>/dev/null\nexit 0\n")


def tar_bytes(listing: str) -> int:
    """The size of an uncompressed tar of the ``size_command`` listing: a 512-byte header
    per entry, file data padded to 512 bytes, two zero blocks, whole 10 KiB records."""
    total = 1024
    for line in listing.splitlines():
        kind, _, size = line.partition(" ")
        if kind == "f" and size.isdigit():
            total += 512 + -(-int(size) // 512) * 512
        elif kind in ("f", "o"):
            total += 512
    return -(-total // 10240) * 10240


def launch_command(job_dir: str) -> str:
    """Start the wrapper detached and print its pid once it has recorded it.

    ``setsid`` (when present) puts the wrapper in its own session and ``nohup``
    ignores SIGHUP, so the end of this SSH session does not reach it. (Whether a job
    is already running is checked before, with the follower's ``status``.)
    """
    d = shlex.quote(job_dir)
    c = CONTROL_DIR
    return (
        f"cd -- {d} || exit {EXIT_NO_JOB_DIR}\n"
        f"rm -f {c}/rc {c}/rc.tmp {c}/pid {c}/pid.tmp\n"
        "S=; command -v setsid >/dev/null 2>&1 && S=setsid\n"
        f'$S nohup sh "$(pwd -P)/{WRAPPER}" > {c}/log 2>&1 < /dev/null &\n'
        "i=0\n"
        f"while [ ! -s {c}/pid ]; do\n"
        "  i=$((i + 1))\n"
        f"  if [ $i -gt 400 ]; then echo 'vastai: the job wrapper did not start' >&2; "
        f"exit {EXIT_NO_START}; fi\n"
        "  sleep 0.05 2>/dev/null || sleep 1\n"
        "done\n"
        f"cat {c}/pid\n"
    )


def follow_command(job_dir: str, offset: int, poll: float, heartbeat: float) -> str:
    """Run the follower on the job's control directory from byte ``offset`` of the log."""
    args = ["follow", control_dir(job_dir), str(int(offset)), f"{poll:g}", f"{heartbeat:g}"]
    return _python(args)


def status_command(job_dir: str) -> str:
    """Print the job's status line (see ``FOLLOWER_PY``)."""
    return _python(["status", control_dir(job_dir)])


def sweep_command(job_dir: str) -> str:
    """End every process the job in ``job_dir`` started (by its tag) and print
    ``left N gpu M`` (M: processes holding GPU memory, -1 unknown) or ``untagged``."""
    return _python(["sweep", control_dir(job_dir)])


def _python(args: Sequence[str]) -> str:
    quoted = " ".join(shlex.quote(a) for a in args)
    return f'{_FIND_PYTHON}; exec "$PY" -c {shlex.quote(FOLLOWER_PY)} {quoted}'
