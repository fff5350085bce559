"""The run's side of the watchdog: keep every instance's heartbeat fresh while the run lives.

One thread for the whole run touches ``~/.vastai-watchdog/heartbeat`` on each instance it
holds, over SSH, every quarter of the orphan timeout: with the default 600 s, one short
SSH connection per instance every 150 s (at 100 instances, about 0.7 connections a
second), and no Vast.ai API request at all, so the heartbeat costs none of the API's rate
limits. A touch that fails (a host briefly away, a dropped Wi-Fi) is tried again at the
next round; three rounds must fail in a row before the watchdog acts. Instances are
noted when a job first reaches them over SSH (with the key and pinned host key that
worked) and forgotten when they are destroyed.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..transports.ssh.channels import Endpoint
from ..transports.ssh.session import RemoteSession
from .install import HEARTBEAT, STATE_DIR

TOUCH = f'mkdir -p "$HOME/{STATE_DIR}" && touch "$HOME/{HEARTBEAT}"'


def keep_warm_command(seconds: float) -> str:
    """Write the keep-warm window's end, ``seconds`` from now by the instance's clock, for
    its watchdog (agent.py reads ``kept_until`` until a newer heartbeat comes)."""
    script = ("import os,sys,time;p=os.path.expanduser(sys.argv[1]);"
              "open(p,'w').write('%d' % (time.time()+float(sys.argv[2])))")
    return (f'mkdir -p "$HOME/{STATE_DIR}" && PY=$(command -v python3 || command -v python) '
            f'&& "$PY" -c "{script}" "~/{STATE_DIR}/kept_until" {seconds:.0f}')


@dataclass(frozen=True)
class Fed:
    """How to reach one instance: where, with which key, which host key to expect."""

    endpoint: Endpoint
    pkey: Any  # paramiko.PKey
    host_key: str | None


class HeartbeatFeeder:
    """Touches the heartbeat of every noted instance every ``interval`` seconds."""

    def __init__(self, orphan_timeout: float, *, ssh_timeout: float = 15.0,
                 log: Callable[..., None] | None = None,
                 still_ours: Callable[[int], bool] = lambda iid: True,
                 connect: Callable[..., RemoteSession] = RemoteSession.connect) -> None:
        self.interval = max(orphan_timeout / 4.0, 0.5)
        self.ssh_timeout = ssh_timeout
        self.log = log
        self.still_ours = still_ours  # False once the instance is known destroyed
        self.connect = connect
        self.rounds = 0
        self.touches = 0
        self.orphan_timeout = orphan_timeout
        self._fed: dict[int, Fed] = {}
        self._last_fed: dict[int, float] = {}  # wall clock: it runs on while we are frozen
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()  # set by stop(): the loop ends at once
        self._thread: threading.Thread | None = None

    def note(self, instance_id: int, endpoint: Endpoint, pkey: Any,
             host_key: str | None) -> None:
        # No feed now: the instance's watchdog counts a full timeout from its own start, and
        # the first round comes within a quarter of it (an SSH handshake per boot saved).
        with self._lock:
            self._fed[int(instance_id)] = Fed(endpoint, pkey, host_key)

    def forget(self, instance_id: int) -> None:
        with self._lock:
            self._fed.pop(int(instance_id), None)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="vastai-heartbeat",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.ssh_timeout + 5.0)

    def feed_once(self) -> int:
        """Touch every noted instance's heartbeat; how many touches worked."""
        with self._lock:
            fed = dict(self._fed)
        done = 0
        for iid, where in fed.items():
            if self._stop.is_set():
                break
            try:
                if not self.still_ours(iid):
                    self.forget(iid)
                    continue
            except Exception:  # a closing journal: the next round decides
                continue
            try:
                session = self.connect(where.endpoint, where.pkey,
                                       pinned_host_key=where.host_key,
                                       timeout=self.ssh_timeout, io_timeout=self.ssh_timeout)
            except Exception as exc:  # the next round tries again
                self._say("could not reach the instance to feed its watchdog", iid, exc)
                continue
            try:
                if session.run(TOUCH, timeout=self.ssh_timeout).rc == 0:
                    done += 1
                    with self._lock:
                        self._last_fed[iid] = time.time()
            except Exception as exc:
                self._say("feeding the instance's watchdog failed", iid, exc)
            finally:
                with contextlib.suppress(Exception):
                    session.close()
        self.rounds += 1
        self.touches += done
        return done

    def may_have_ended_itself(self, instance_id: int, since: float | None) -> bool:
        """Could the instance's watchdog have ended it? True when no heartbeat reached it
        for an orphan timeout (by the wall clock, which runs on while this process is
        stopped or the laptop asleep), counted from ``since`` (its creation) until the
        first one did."""
        with self._lock:
            last = self._last_fed.get(int(instance_id))
        start = last if last is not None else since
        return start is not None and time.time() - start >= self.orphan_timeout

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if not self._stop.is_set():
                self.feed_once()

    def _say(self, event: str, iid: int, exc: BaseException) -> None:
        if self.log is not None:
            self.log(event, instance=iid, error=f"{type(exc).__name__}: {exc}")
