"""The watchdog that runs ON a rented instance and ends its billing when the run that
rented it is gone (a killed process, a laptop asleep or gone for good).

It is shipped as text (``install.py`` packs it into the instance's start command) and runs
with the image's own Python: standard library only, Python 3.6 and up. It is started by
the container's start script, so it holds the container's own environment, where Vast.ai
puts ``CONTAINER_ID`` and ``CONTAINER_API_KEY`` (a key that may show, stop, start and
destroy this one instance); SSH sessions do not get them. It uses plain HTTP because the
``vastai`` SDK is not on the image; the key is read from the environment and never
written anywhere, nor put on a command line.

The run feeds it a heartbeat: the modification time of ``~/.vastai-watchdog/heartbeat``,
touched over SSH (``feeder.py``); until the first touch, the watchdog's own start counts.
A run that keeps an idle instance warm past its end (``--vastai-keep-warm``) writes the
window's end, by this instance's clock, to ``~/.vastai-watchdog/kept_until``; until a
newer heartbeat comes, that end decides.
Ages are measured with the instance's clock only, so the laptop's clock does not matter.
While the heartbeat is younger than the orphan timeout it never acts. Once it is older:

- a job is running (a job directory's wrapper pid alive, no rc): it waits for the job to
  end; a job older than its maximal runtime (``.vastai/max_runtime``, seconds) is ended
  (SIGTERM to its process group, SIGKILL 30 s later), as the run would have ended it;
- no job running, but one ran while the run was gone, or a finished job's outputs were
  never fetched (no ``.vastai/home`` mark, written when the run cleans up after a
  download): it STOPS the instance, so the outputs wait on its disk at storage price
  for the run to come back;
- otherwise (idle, warm, booting, between jobs): it DESTROYS the instance.

A refused key or an unreachable API is logged and retried with growing pauses (5 s up to
5 min); the watchdog never touches the job for those. Its log is
``~/.vastai-watchdog/log``.

In storage mode no SSH reaches the instance, so there is no heartbeat: the container's
command runs the job under ``--job`` (which ends it past its maximal runtime plus the
orphan timeout) and, the job ended, hands its exit status to ``--ended RC PICKUP``. A
job that succeeded has its outputs in the bucket: a run that is alive sees them, reads
the exit line and destroys the instance within a few status intervals; if none has done
so after PICKUP seconds, the run is away, and the instance DESTROYS itself (the run, back,
finds the outputs in the bucket). A failed job, or one whose outputs cannot prove its
end (PICKUP 0: ``directory()`` outputs), STOPS the instance: its log, which only the
instance has, waits at storage price for the run.

Usage: ``python3 agent.py API_URL ORPHAN_TIMEOUT [TICK]`` (SSH mode),
``... API_URL ORPHAN_TIMEOUT TICK --job PID MAX_RUNTIME``, ``... API_URL --ended RC PICKUP``.
"""

import contextlib
import json
import os
import signal
import sys
import time

HOME = os.path.expanduser("~")
STATE = os.path.join(HOME, ".vastai-watchdog")
HEARTBEAT = os.path.join(STATE, "heartbeat")
JOB_ROOTS = ("vastai-job", "vastai-jobs")
KILL_GRACE = 30.0


def say(message):
    sys.stdout.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} watchdog: {message}\n")
    sys.stdout.flush()


def mtime(path, default):
    try:
        return os.stat(path).st_mtime
    except OSError:
        return default


def control_dirs():
    """Every job's control directory (``.vastai`` with a ``pid``) below the job roots."""
    found = []
    for top in JOB_ROOTS:
        base = os.path.join(HOME, top)
        for here, dirs, files in os.walk(base):
            if here[len(base):].count(os.sep) > 8:
                dirs[:] = []
            elif os.path.basename(here) == ".vastai":
                dirs[:] = []
                if "pid" in files:
                    found.append(here)
    return found


def read_int(path):
    try:
        with open(path) as f:
            return int(float(f.read().strip() or "0"))
    except (OSError, ValueError):
        return None


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running(ctl):
    pid = read_int(os.path.join(ctl, "pid"))
    return (pid is not None and not os.path.exists(os.path.join(ctl, "rc"))
            and alive(pid))


def unfetched(ctl):
    return (os.path.exists(os.path.join(ctl, "rc"))
            and not os.path.exists(os.path.join(ctl, "home")))


class Watchdog:
    def __init__(self, url, timeout, tick, now=time.time):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.tick = tick
        self.now = now
        self.started = now()
        self.saw_orphaned_job = False
        self.killed = {}  # control dir -> when SIGTERM went out
        self.next_try = 0.0
        self.pause = 5.0

    def heartbeat_age(self):
        """Since the last heartbeat, or since this watchdog started (a boot, a start after
        a stop) if that is later: a fresh start always gives the run a full timeout."""
        return self.now() - max(mtime(HEARTBEAT, 0.0), self.started)

    def fresh(self):
        """Is a run still looking after this instance? A keep-warm window (the run wrote
        its end, by this clock, after its last heartbeat) counts until it closes."""
        window = os.path.join(STATE, "kept_until")
        if mtime(window, -1.0) >= mtime(HEARTBEAT, 0.0):
            until = read_int(window)
            if until is not None:
                return self.now() < until
        return self.heartbeat_age() < self.timeout

    def step(self):
        """One look: None while nothing is to be done, else the action taken."""
        if self.fresh():
            self.saw_orphaned_job = False
            return None
        busy = [c for c in control_dirs() if running(c)]
        if busy:
            self.saw_orphaned_job = True
            for ctl in busy:
                self.enforce_runtime(ctl)
            return None
        if self.now() < self.next_try:
            return None
        keep = self.saw_orphaned_job or any(unfetched(c) for c in control_dirs())
        return self.act("stop" if keep else "destroy")

    def enforce_runtime(self, ctl):
        cap = read_int(os.path.join(ctl, "max_runtime")) or 0
        pid = read_int(os.path.join(ctl, "pid"))
        if not cap or pid is None:
            return
        ran = self.now() - mtime(os.path.join(ctl, "pid"), self.now())
        if ran <= cap:
            return
        first = self.killed.setdefault(ctl, self.now())
        sig = signal.SIGTERM if self.now() - first < KILL_GRACE else signal.SIGKILL
        name = "SIGTERM" if sig == signal.SIGTERM else "SIGKILL"
        say(f"the job in {os.path.dirname(ctl)} ran {ran:.0f} s, past its maximal runtime "
            f"of {cap} s: {name}")
        try:
            os.killpg(pid, sig)
        except OSError:
            with contextlib.suppress(OSError):
                os.kill(pid, sig)

    def act(self, action, why=None):
        """Stop or destroy this instance with its own key; on failure, try again later."""
        iid = os.environ.get("CONTAINER_ID", "")
        key = os.environ.get("CONTAINER_API_KEY", "")
        why = why or (f"no heartbeat for {self.heartbeat_age():.0f} s (orphan timeout "
                      f"{self.timeout:.0f} s)")
        if not iid or not key:
            say(f"no CONTAINER_ID/CONTAINER_API_KEY in this environment: cannot {action}")
            return self.later(action)
        address = f"{self.url}/api/v0/instances/{iid}/"
        if action == "stop":
            method, body = "PUT", json.dumps({"state": "stopped"}).encode()
        else:
            method, body = "DELETE", None
        import urllib.error  # here: ssl and http.client cost a start on every instance
        import urllib.request

        request = urllib.request.Request(address, data=body, method=method, headers={
            "Authorization": "Bearer " + key, "Content-Type": "application/json"})
        if action == "stop":  # the run, back, counts storage-only billing from here
            with contextlib.suppress(OSError), open(os.path.join(STATE, "stopped_at"), "w") as f:
                f.write(f"{self.now():.3f}\n")
        say(f"{why}: {action} instance {iid}")
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                answer.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and action == "destroy":
                say(f"instance {iid} is gone already")
                return action
            say(f"{action} refused: HTTP {exc.code}")
            return self.later(action)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            say(f"{action} failed: {type(exc).__name__}")
            return self.later(action)
        say(f"{action} requested")
        self.next_try = self.now() + 60.0  # if it is still here then, ask again
        return action

    def later(self, action):
        self.next_try = self.now() + self.pause
        say(f"trying to {action} again in {self.pause:.0f} s")
        self.pause = min(self.pause * 2, 300.0)
        return "failed"

    def loop(self):
        say(f"watching (orphan timeout {self.timeout:.0f} s, tick {self.tick:.0f} s)")
        while True:
            try:
                self.step()
            except Exception as exc:  # never die: the next tick tries again
                say(f"error: {type(exc).__name__}: {exc}")
            time.sleep(self.tick)


def act_now(url, action, why, tries=6):
    """Stop or destroy this instance now, retrying with the watchdog's pauses; 0 if asked."""
    dog = Watchdog(url, 0.0, 1.0)
    for _ in range(tries):
        if dog.act(action, why) == action:
            return 0
        time.sleep(max(dog.next_try - dog.now(), 0.0))
    return 1


def job_ended(url, rc, pickup, tries=6):
    """Storage mode, the job ended and its exit line is in the log (module docstring): a
    job that succeeded waits ``pickup`` seconds for the run to destroy the instance, then
    destroys it itself; otherwise (a failure, or ``pickup`` 0) it stops, keeping the log
    for the run at storage price. A destroy that keeps failing falls back to the stop."""
    if rc != 0 or pickup <= 0:
        return act_now(url, "stop", f"the job ended (exit {rc})", tries)
    say(f"the job succeeded: waiting {pickup:.0f} s for the run to pick it up")
    time.sleep(pickup)
    why = f"the job succeeded and no run picked it up within {pickup:.0f} s"
    if act_now(url, "destroy", why, tries) == 0:
        return 0
    return act_now(url, "stop", "the destroy failed", tries)


def watch_job(pid, max_runtime, timeout, tick):
    """Storage mode, while the job runs (``pid``: its process group): past its maximal
    runtime plus the orphan timeout the run, had it lived, would have destroyed the
    instance long ago: end the job (then the container stops itself)."""
    started, term_at = time.time(), None
    while alive(pid):
        over = max_runtime and time.time() - started > max_runtime + timeout
        if over:
            term_at = term_at or time.time()
            sig = signal.SIGTERM if time.time() - term_at < KILL_GRACE else signal.SIGKILL
            say(f"the job ran past its maximal runtime of {max_runtime:.0f} s with no run "
                "to end it: ending it")
            with contextlib.suppress(OSError):
                os.killpg(pid, sig)
        time.sleep(tick)


def main(argv):
    url = argv[1]
    if argv[2] == "--ended":
        sys.exit(job_ended(url, int(argv[3]), float(argv[4])))
    timeout = float(argv[2])
    tick = float(argv[3]) if len(argv) > 3 else min(30.0, max(timeout / 10.0, 1.0))
    os.makedirs(STATE, exist_ok=True)
    if len(argv) > 5 and argv[4] == "--job":  # storage mode: PID MAX_RUNTIME
        watch_job(int(argv[5]), float(argv[6]), timeout, tick)
        return
    Watchdog(url, timeout, tick).loop()


if __name__ == "__main__":
    main(sys.argv)
