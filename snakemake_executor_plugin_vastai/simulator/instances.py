"""One simulated instance: lifecycle, processes, SSH endpoint, logs and billing clock.

Life of an instance (``actual_status``, as the real API reports it)::

    None (just created) -> loading ("Pulling image ...") -> running
                                       |                    |-> offline/unknown (fault;
                                       |                    |   -> running only if a
                                       |                    |   duration was given)
                                       |                    |-> exited (args entrypoint ended)
                                       |-> exited/created + error status_msg (boot_fatal)
    reboot: rebooting -> loading -> running        destroy/vanish: gone from the API
stop/start by request (PUT /instances/{id}/ state): running -> stopped -> loading -> running

The SSH server starts at creation but resets every connection until ``running`` (the port is
known early, like Vast's SSH proxy port); ``ports["22/tcp"]`` (direct SSH) appears with
``running``. On ``running`` the ``onstart`` script runs (runtype ssh), or the ``args`` are
the container's command (runtype args): its exit makes the instance ``exited``. Their output
(stdout and stderr) is the instance log. Every process runs in the instance's sandbox
directory with the instance environment and its tag (see ``sandbox.py``), so destroying
the instance can kill all of them, detached ones too.

Billing: ``dph_total`` per hour of wall-clock time from creation until destruction (or
vanishing), never scaled; plus bandwidth per GB (2**30 bytes, as the SDK's $/TB column
multiplies by 1024) in each direction as the host sees it: what the instance receives
(``ssh_bytes_in``: our uploads) at the offer's ``inet_down_cost``, what it sends
(``ssh_bytes_out``: our downloads, logs) at ``inet_up_cost``.

Interruptible (bid) instances: a create with a ``price`` (the bid, $/h, at least the
offer's ``min_bid``) makes a bid instance; its ``dph_total`` is the bid plus the disk's
storage price. The ``outbid`` fault stops it (a competing bid won): processes die, SSH
refuses, the disk stays, ``actual_status``/``intended_status``/``cur_state``/``next_state``
read ``stopped``, and only storage bills (``storage_cost`` $/GB-month for its disk) until it
starts again (after ``back_after`` seconds, or when ``PUT /instances/bid_price/{id}/``
raises the bid above the competing one) and boots as after a reboot, files kept.

Scoped keys and stop/start (issue 30). Each instance has its own API key, as Vast.ai's
``CONTAINER_API_KEY``: in the create answer (``instance_api_key``) and in the environment of
the container's main process (onstart or args, and what they start), never in an SSH
session's environment, with ``CONTAINER_ID``. The key may show, stop, start and destroy
that one instance (see ``api.py``). A stop kills every process, refuses SSH and keeps the
disk; it bills storage only (``storage_cost`` $/GB-month for the disk), as an outbid bid
instance does. A start boots it again (onstart runs again), unless the ``start_fails``
fault says its GPUs went to someone else: then it stays stopped. The description does not
say what a start of such an instance answers; here it is accepted (200) and the status
says why it stays stopped, so a client must watch the status, not the answer.

Why this module is long: an instance's status, processes, faults and billing clock
change together under one lock and one boot generation (a fault armed for one boot
must not fire in the next); split across modules, every fault would reach into the
instance's private state. Issues 29 and 30 change this simulator next; a split by
fault family is planned there.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import sandbox
from .faults import BOOT_KINDS, Fault
from .sshd import InstanceSSH
from .timeline import Timeline

log = logging.getLogger(__name__)

INDEFINITE = math.inf
BYTES_PER_GB = 1024**3  # Vast.ai's $/GB bandwidth prices (its CLI shows $/TB as x 1024)
CREATED_PHASE = 0.15  # share of the boot delay spent before loading starts


@dataclass
class LaunchSpec:
    """What the create request asked for (``build_create_instance_payload`` fields)."""

    image: str
    disk: float = 10.0
    env: dict[str, str] = field(default_factory=dict)
    label: str | None = None
    onstart: str | None = None
    runtype: str = "ssh"
    args: list[str] | str | None = None
    price: float | None = None  # the bid ($/h) of an interruptible instance

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> LaunchSpec:
        """Validate a create payload; ValueError (HTTP 400 invalid_args) if unusable."""
        image = payload.get("image")
        if not isinstance(image, str) or not image.strip():
            raise ValueError("image is required")
        env = payload.get("env") or {}
        if not isinstance(env, dict):
            raise ValueError("env must be an object of NAME: value")
        args = payload.get("args")
        if args is not None and not isinstance(args, list | str):
            raise ValueError("args must be a list of strings")
        try:
            disk = float(payload.get("disk") or 10.0)
        except (TypeError, ValueError):
            raise ValueError("disk must be a number (GB)") from None
        label = payload.get("label")
        price = payload.get("price")
        if price is not None:
            try:
                price = float(price)
            except (TypeError, ValueError):
                raise ValueError("price must be a number ($/h bid)") from None
        runtype = str(payload.get("runtype") or ("args" if args is not None else "ssh"))
        return cls(
            image=image.strip(),
            disk=disk,
            env={str(k): str(v) for k, v in env.items()},
            label=None if label is None else str(label),
            onstart=payload.get("onstart") or None,
            runtype=runtype,
            args=args,
            price=price,
        )

    @property
    def uses_args(self) -> bool:
        """The args are the container command (runtype args), instead of an onstart."""
        return "args" in self.runtype.split()

    def command(self) -> str | None:
        """The shell command of the instance's main process, if any."""
        if self.uses_args:
            if not self.args:
                return None
            return self.args if isinstance(self.args, str) else shlex.join(map(str, self.args))
        return None

    def process_env(self) -> dict[str, str]:
        """Env entries that are variables (``-p 8080:8080``-style docker options are not)."""
        return {k: v for k, v in self.env.items() if not k.startswith("-")}


class Instance:
    """A rented machine: state machine on its own timeline, SSH server, processes."""

    def __init__(
        self,
        *,
        iid: int,
        offer: dict[str, Any],
        spec: LaunchSpec,
        tag: str,
        sandbox_dir: Path,
        log_path: Path,
        boot_delay: float,
        faults: list[Fault],
        keys: list[str],
        on_vanish: Callable[[Instance], None],
        foreign: bool = False,
    ) -> None:
        self.id = iid
        self.offer = offer
        self.spec = spec
        self.tag = tag
        self.sandbox = sandbox_dir
        self.log_path = log_path
        self.boot_delay = boot_delay
        self.foreign = foreign
        self.created_at = time.time()
        self.destroyed_at: float | None = None
        self.vanished = False
        self.exit_code: int | None = None
        self.actual_status: str | None = None
        self.cur_state = "running"
        self.status_msg: str | None = None
        self.ssh: InstanceSSH | None = None
        self.ssh_port: int | None = None
        self.history: list[tuple[float, str | None]] = [(0.0, None)]
        self.daemon_log: list[str] = []
        self._created_mono = time.monotonic()
        self._ended_mono: float | None = None
        self._keys = list(keys)
        self._pending = list(faults)
        self._on_vanish = on_vanish
        self._lock = threading.RLock()
        self._blocked: set[str] = {"boot"}  # reasons SSH refuses indefinitely
        self._hide_exit = False  # stays_running fault: the end of args is never reported
        self._small_disk = False  # disk_full fault: a tmpfs is mounted over the sandbox
        self._generation = 0
        self._watchers: list[threading.Thread] = []
        self._torn = False
        self.timeline = Timeline(f"vastai-sim-i{iid}")
        # bid instances (see the module docstring)
        self.bid_price: float | None = spec.price
        self.outbid = False
        self.preemptions = 0
        self._competing: float | None = None  # the bid that outbid this one
        self._stopped_seconds = 0.0
        self._stopped_mono: float | None = None
        self.api_key = secrets.token_hex(32)  # CONTAINER_API_KEY: this instance only
        self.user_stopped = False  # stopped by request (PUT state), not outbid
        self.stops = 0

    # ----- public

    def start(self) -> None:
        """Begin the life: SSH server up (refusing), then boot."""
        self._prepare_files()
        self.timeline.after(0, self._start_ssh)
        self.timeline.after(0, lambda: self._boot(self._generation))
        self.timeline.start()

    def start_running_now(self) -> None:
        """Bring the instance straight to running (foreign instances, set up by a test)."""
        self._prepare_files()
        self._start_ssh()
        self._become_running(self._generation)
        self.timeline.start()

    def _prepare_files(self) -> None:
        self.sandbox.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.touch()

    @property
    def alive(self) -> bool:
        return self.destroyed_at is None

    def billed_seconds(self) -> float:
        end = self._ended_mono if self._ended_mono is not None else time.monotonic()
        return max(end - self._created_mono, 0.0)

    def _bandwidth(self) -> tuple[float, float]:
        """Dollars billed for bytes sent (inet_up) and received (inet_down) by the instance."""
        ssh = self.ssh
        sent, received = (ssh.bytes_out, ssh.bytes_in) if ssh else (0, 0)
        up = sent / BYTES_PER_GB * float(self.offer.get("inet_up_cost") or 0.0)
        down = received / BYTES_PER_GB * float(self.offer.get("inet_down_cost") or 0.0)
        return up, down

    def attach_key(self, key_line: str) -> None:
        """Accept this public key from now on."""
        with self._lock:
            if key_line not in self._keys:
                self._keys.append(key_line)

    def authorized_keys(self) -> list[str]:
        with self._lock:
            return list(self._keys)

    def add_fault(self, fault: Fault) -> None:
        """A fault aimed at this (existing) instance: applied now if it is running."""
        with self._lock:
            self._pending.append(fault)
            running = self.actual_status == "running"
        if running and fault.kind not in BOOT_KINDS:
            gen = self._generation
            self.timeline.after(0, lambda: self._arm_running_faults(gen))

    def reboot(self) -> None:
        """Restart the container: processes die, boot again, onstart runs again."""
        self.timeline.after(0, self._reboot)

    def end(self, *, vanished: bool = False) -> bool:
        """Mark destroyed (or vanished) and stop billing; False if it already was."""
        with self._lock:
            if self.destroyed_at is not None:
                return False
            self.destroyed_at = time.time()
            self._ended_mono = time.monotonic()
            self.vanished = vanished
            self._note("destroyed" if not vanished else "vanished", self.actual_status)
            return True

    def stopped_seconds(self) -> float:
        """Seconds spent stopped (outbid or by request): storage bills only."""
        with self._lock:
            total = self._stopped_seconds
            if self._stopped_mono is not None:
                end = self._ended_mono if self._ended_mono is not None else time.monotonic()
                total += max(end - self._stopped_mono, 0.0)
            return total

    def storage_dph(self) -> float:
        """$/h of this instance's disk (``storage_cost`` is $/GB-month, 720 h)."""
        return float(self.offer.get("storage_cost") or 0.0) * self.spec.disk / 720.0

    def billed_dollars(self) -> float:
        """Running time at ``dph_total``; stopped time (outbid) at the storage price only."""
        seconds = self.billed_seconds()
        stopped = min(self.stopped_seconds(), seconds)
        dph = float(self.offer["dph_total"])
        return (dph * (seconds - stopped) + self.storage_dph() * stopped) / 3600.0

    def change_bid(self, price: float) -> None:
        """``PUT /instances/bid_price/{id}/``: a new bid; above the competing one, a
        stopped instance starts again."""
        minimum = float(self.offer.get("min_bid") or 0.0)
        if self.bid_price is None:
            raise ValueError(f"instance {self.id} is not an interruptible (bid) instance")
        if price < minimum:
            raise ValueError(f"bid {price:g} is below the machine's min_bid {minimum:g}")
        with self._lock:
            self.bid_price = price
            self.offer = {**self.offer, "dph_total": round(price + self.storage_dph(), 6)}
            wins = self.outbid and self._competing is not None and price > self._competing
            gen = self._generation
        if wins:
            self.timeline.after(0, lambda: self._outbid_end(gen))

    def freeze(self) -> None:
        """Stop the billing clock without destroying (the simulator itself stops)."""
        with self._lock:
            if self._ended_mono is None:
                self._ended_mono = time.monotonic()

    def teardown(self) -> None:
        """Stop the timeline, the SSH server and every process. Idempotent."""
        with self._lock:
            if self._torn:
                return
            self._torn = True
        self.timeline.stop()
        if self.ssh is not None:
            try:
                self.ssh.stop()
            except Exception:
                log.exception("stopping SSH of instance %s", self.id)
        sandbox.kill_tagged(self.tag)
        for watcher in list(self._watchers):
            if watcher is not threading.current_thread():
                watcher.join(5.0)
        if self._small_disk:
            sandbox.unmount(self.sandbox)
            self._small_disk = False

    def remove_files(self) -> None:
        """Delete the sandbox and log (used when the whole state dir goes away)."""
        shutil.rmtree(self.sandbox, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.log_path.unlink()

    def log_text(
        self, tail: int | None = None, grep: str | None = None, daemon: bool = False
    ) -> str:
        """The container log (or the daemon's status log), filtered, last ``tail`` lines."""
        if daemon:
            with self._lock:
                lines = list(self.daemon_log)
        else:
            try:
                text = self.log_path.read_bytes().decode("utf-8", "replace")
            except OSError:
                text = ""
            lines = text.splitlines()
        if grep:
            lines = [line for line in lines if grep in line]
        if tail is not None and tail >= 0:
            lines = lines[-tail:] if tail else []
        return "".join(line + "\n" for line in lines)

    # ----- rows

    def row(self) -> dict[str, Any]:
        """The instance as ``GET /api/v0/instances/{id}/`` shows it."""
        with self._lock:
            o, spec = self.offer, self.spec
            status = self.actual_status
            ports: dict[str, Any] = {}
            if self.ssh_port and status in ("running", "offline", "unknown"):
                hp = str(self.ssh_port)
                ports = {
                    "22/tcp": [
                        {"HostIp": "0.0.0.0", "HostPort": hp},
                        {"HostIp": "::", "HostPort": hp},
                    ]
                }
            uptime = self.billed_seconds() / 60.0
            return {
                **{k: o.get(k) for k in _OFFER_COLUMNS},
                "id": self.id,
                "label": spec.label,
                "actual_status": status,
                "intended_status": "stopped" if self.outbid or self.user_stopped
                else "running",
                "cur_state": self.cur_state,
                "next_state": self.cur_state,
                "status_msg": self.status_msg,
                "image_uuid": spec.image,
                "image_args": list(spec.args) if isinstance(spec.args, list) else [],
                "image_runtype": spec.runtype,
                "onstart": spec.onstart or "",  # typed string, never null
                "extra_env": [[k, v] for k, v in spec.env.items()],
                "disk_space": spec.disk,
                "disk_usage": 0.0,
                "disk_util": 0.0,
                "gpu_totalram": o.get("gpu_total_ram"),
                "gpu_util": 0.0 if status == "running" else None,
                "gpu_temp": 40.0 if status == "running" else None,
                "cpu_util": 0.0,  # typed number, never null
                "mem_usage": None,
                "mem_limit": None,
                "vmem_usage": None,
                "start_date": self.created_at,
                "end_date": self.created_at + float(o.get("duration") or 86400.0),
                "uptime_mins": round(uptime, 3),
                "ssh_host": "127.0.0.1",
                "ssh_port": self.ssh_port,
                "ssh_idx": "1",
                "public_ipaddr": "127.0.0.1",
                "local_ipaddrs": "127.0.0.1\n",
                "ports": ports,
                "direct_port_start": self.ssh_port,
                "direct_port_end": self.ssh_port,
                "jupyter_token": "",  # typed string; no Jupyter here
                "template_id": None,
                "template_hash_id": None,
                "template_name": None,
                "volume_info": [],
                "is_bid": self.bid_price is not None,
                "client_run_time": round(self.billed_seconds(), 3),
                "host_run_time": round(self.billed_seconds(), 3),
                "inet_up_billed": 0.0,  # units unknown (the SDK never reads it);
                "inet_down_billed": 0.0,  # the bandwidth bill is in truth() and the credit
            }

    def truth(self) -> dict[str, Any]:
        """Ground-truth facts (``/_sim/truth``), including what the API hides."""
        with self._lock:
            seconds = self.billed_seconds()
            dph = float(self.offer["dph_total"])
            ssh = self.ssh
            up_dollars, down_dollars = self._bandwidth()
            stopped = self.stopped_seconds()
            storage_stopped = self.storage_dph() * min(stopped, seconds) / 3600.0
            time_dollars = self.billed_dollars()  # running at dph, stopped: storage
            return {
                "id": self.id,
                "label": self.spec.label,
                "offer_id": int(self.offer["id"]),
                "machine_id": self.offer.get("machine_id"),
                "gpu_name": self.offer.get("gpu_name"),
                "num_gpus": self.offer.get("num_gpus"),
                "dph_total": dph,
                "image": self.spec.image,
                "disk": self.spec.disk,
                "geolocation": self.offer.get("geolocation"),
                "reliability": self.offer.get("reliability"),
                "alive": self.alive,
                "vanished": self.vanished,
                "actual_status": self.actual_status,
                "status_msg": self.status_msg,
                "exit_code": self.exit_code,
                "created_at": self.created_at,
                "destroyed_at": self.destroyed_at,
                "billed_seconds": seconds,
                "billed_dollars": time_dollars + up_dollars + down_dollars,
                "billed_compute_dollars": time_dollars - storage_stopped,
                "billed_bandwidth_dollars": up_dollars + down_dollars,
                "inet_up_cost": float(self.offer.get("inet_up_cost") or 0.0),
                "inet_down_cost": float(self.offer.get("inet_down_cost") or 0.0),
                "is_bid": self.bid_price is not None,
                "bid_price": self.bid_price,
                "min_bid": self.offer.get("min_bid"),
                "ondemand_dph": round(float(self.offer.get("dph_base") or 0.0)
                                      + self.storage_dph(), 6),
                "preemptions": self.preemptions,
                "outbid": self.outbid,
                "user_stopped": self.user_stopped,
                "stops": self.stops,
                "stopped_seconds": stopped,
                "storage_dph": self.storage_dph(),  # part of dph_total while it runs
                "storage_dollars_stopped": storage_stopped,
                "foreign": self.foreign,
                "ssh_port": self.ssh_port,
                "ssh_bytes_in": ssh.bytes_in if ssh else 0,
                "ssh_bytes_out": ssh.bytes_out if ssh else 0,
                "tag": self.tag,
                "sandbox": str(self.sandbox),
                "history": [[round(t, 3), s] for t, s in self.history],
            }

    # ----- lifecycle steps (on the timeline thread)

    def _set(self, status: str | None, msg: str | None, cur_state: str = "running") -> None:
        with self._lock:
            if self.destroyed_at is not None:
                return
            self.actual_status = status
            self.status_msg = msg
            self.cur_state = cur_state
            self.history.append((time.monotonic() - self._created_mono, status))
            self._note(status, msg)

    def _note(self, status: str | None, msg: str | None) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        self.daemon_log.append(f"{stamp} status={status} {msg or ''}".rstrip())

    def _current(self, gen: int) -> bool:
        return gen == self._generation and self.destroyed_at is None

    def _start_ssh(self) -> None:
        env = self._env()
        ssh = InstanceSSH(
            sandbox=self.sandbox, tag=self.tag, authorized_keys=self.authorized_keys, env=env
        )
        ssh.set_accepting(False)
        port = ssh.start()
        ssh.env["VAST_TCP_PORT_22"] = str(port)
        with self._lock:
            self.ssh, self.ssh_port = ssh, port
        self._apply_blocks()

    def _env(self) -> dict[str, str]:
        """Instance environment: Vast's own variables, then the user's env."""
        return {
            "CONTAINER_ID": str(self.id),
            "VAST_CONTAINERLABEL": f"C.{self.id}",
            "HOSTNAME": f"C.{self.id}",
            "PUBLIC_IPADDR": "127.0.0.1",
            "GPU_COUNT": str(self.offer.get("num_gpus") or 1),
            **self.spec.process_env(),
        }

    def _block(self, reason: str, on: bool) -> None:
        with self._lock:
            if on:
                self._blocked.add(reason)
            else:
                self._blocked.discard(reason)
        self._apply_blocks()

    def _apply_blocks(self) -> None:
        with self._lock:
            ssh, blocked = self.ssh, bool(self._blocked)
        if ssh is not None:
            ssh.set_accepting(not blocked)

    def _take(self, kinds: frozenset[str] | set[str]) -> list[Fault]:
        with self._lock:
            taken = [f for f in self._pending if f.kind in kinds]
            self._pending = [f for f in self._pending if f.kind not in kinds]
        return taken

    def _boot(self, gen: int) -> None:
        """Start a boot: created phase, loading, then running or a boot failure."""
        if not self._current(gen):
            return
        faults = {f.kind: f for f in self._take(BOOT_KINDS)}
        delay = self.boot_delay
        if "boot_delay" in faults:
            delay = float(faults["boot_delay"].params["seconds"])
        self._vanish_on("created", gen)
        created = delay * CREATED_PHASE
        self.timeline.after(created, lambda: self._loading(gen))
        if "boot_hang" in faults:
            return
        if "boot_fatal" in faults:
            p = faults["boot_fatal"].params
            self.timeline.after(
                delay, lambda: self._boot_failed(gen, p["final_status"], p["status_msg"])
            )
            return
        self.timeline.after(delay, lambda: self._become_running(gen))

    def _loading(self, gen: int) -> None:
        if not self._current(gen):
            return
        self._set("loading", f"Pulling image {self.spec.image}")
        self._vanish_on("loading", gen)
        self._outbid_on("loading", gen)

    def _boot_failed(self, gen: int, status: str, msg: str) -> None:
        if self._current(gen):
            self._set(status, msg, cur_state="stopped")

    def _become_running(self, gen: int) -> None:
        if not self._current(gen):
            return
        if self._take({"stays_running"}):  # before the command can end
            with self._lock:
                self._hide_exit = True
        for fault in self._take({"disk_full"}):
            self._small_disk = sandbox.mount_small_disk(self.sandbox,
                                                        int(fault.params["after_bytes"]))
        self._set("running", f"success, running {self.spec.image}")
        self._block("boot", False)
        self._start_main_process(gen)
        self._vanish_on("running", gen)
        self._outbid_on("running", gen)
        self._arm_running_faults(gen)

    def _arm_running_faults(self, gen: int) -> None:
        """Schedule the faults that act on a running instance."""
        if not self._current(gen):
            return
        for f in self._take({"offline", "ssh_refuse", "ssh_drop", "ssh_throttle", "kill_job",
                             "host_key_change", "keys_lost"}):
            p = f.params
            if f.kind == "offline":
                duration, status = _opt(p["duration"], float), str(p["status"])
                self.timeline.after(
                    float(p["after_seconds"]),
                    lambda d=duration, s=status: self._go_offline(gen, d, s),
                )
            elif f.kind == "ssh_refuse" and self.ssh is not None:
                self.ssh.faults.refuse_until = time.monotonic() + float(p["seconds"])
                self.ssh.faults.refuse_count = int(p["connections"])
            elif f.kind == "ssh_drop" and self.ssh is not None:
                self.ssh.faults.drop_after_bytes = _opt(p["after_bytes"], int)
                self.ssh.faults.drop_after_seconds = _opt(p["after_seconds"], float)
            elif f.kind == "ssh_throttle" and self.ssh is not None:
                self.ssh.faults.throttle_bps = float(p["bytes_per_second"])
            elif f.kind == "kill_job":
                self.timeline.after(
                    float(p["after_seconds"]),
                    lambda s=int(p["signal"]): self._kill_processes(gen, s),
                )
            elif f.kind == "host_key_change":
                self.timeline.after(float(p["after_seconds"]), lambda: self._rotate_key(gen))
            elif f.kind == "keys_lost":
                self.timeline.after(float(p["after_seconds"]), lambda: self._forget_keys(gen))
        with self._lock:
            vanish_running = [
                f for f in self._pending if f.kind == "vanish" and f.params["at_state"] == "running"
            ]
        if vanish_running:
            self._vanish_on("running", gen)
        self._outbid_on("running", gen)  # an outbid fault aimed at this running instance

    def _vanish_on(self, state: str, gen: int) -> None:
        """Schedule the vanish faults that wait for ``state``."""
        with self._lock:
            hits = [
                f for f in self._pending if f.kind == "vanish" and f.params["at_state"] == state
            ]
            self._pending = [f for f in self._pending if f not in hits]
        for f in hits:
            self.timeline.after(float(f.params["after_seconds"]), lambda: self._vanish(gen))

    def _outbid_on(self, state: str, gen: int) -> None:
        """Schedule the outbid faults that wait for ``state`` (once per instance)."""
        if self.bid_price is None:
            return
        with self._lock:
            hits = [f for f in self._pending
                    if f.kind == "outbid" and f.params["at_state"] == state]
            self._pending = [f for f in self._pending if f not in hits]
            # a shared fault's seeded draw per instance: this one outbid or not
            hits = [f for f in hits if f.rng.random() < float(f.params["chance"])]
        for f in hits:
            if f.params.get("after_bytes_out") is not None and self.ssh is not None:
                start = self.ssh.bytes_out
                self.timeline.after(0, lambda p=f.params, s=start: self._outbid_when_sent(
                    gen, p, s))
                continue
            self.timeline.after(float(f.params["after_seconds"]),
                                lambda p=f.params: self._go_outbid(gen, p))

    def _outbid_when_sent(self, gen: int, params: dict[str, Any], start: int) -> None:
        """Poll the SSH server's sent bytes; outbid once ``after_bytes_out`` went out."""
        if not self._current(gen) or self.ssh is None:
            return
        if self.ssh.bytes_out - start >= int(params["after_bytes_out"]):
            self._go_outbid(gen, params)
            return
        self.timeline.after(0.01, lambda: self._outbid_when_sent(gen, params, start))

    def _go_outbid(self, gen: int, params: dict[str, Any]) -> None:
        """A competing bid won: stop (processes die, disk kept), maybe start again later."""
        if not self._current(gen) or self.outbid:
            return
        with self._lock:
            self._generation += 1
            gen = self._generation
            self.outbid = True
            self.preemptions += 1
            self._stopped_mono = time.monotonic()
            competing = params.get("competing_bid")
            self._competing = float(competing) if competing is not None else \
                float(self.bid_price or 0.0) * 1.25 + 1e-6
        self.timeline.clear()
        self._block("outbid", True)
        if self.ssh is not None:
            self.ssh.drop_connections()
        sandbox.kill_tagged(self.tag)
        self._set("stopped", "Stopped: outbid by a higher bid on this machine",
                  cur_state="stopped")
        back = params.get("back_after")
        if back is not None:
            self.timeline.after(float(back), lambda: self._outbid_end(gen))

    def _outbid_end(self, gen: int) -> None:
        """The bid wins again: the instance boots as after a reboot, its files kept."""
        if not self._current(gen) or not self.outbid:
            return
        with self._lock:
            self._generation += 1
            gen = self._generation
            self.outbid = False
            if self._stopped_mono is not None:
                self._stopped_seconds += max(time.monotonic() - self._stopped_mono, 0.0)
                self._stopped_mono = None
        self.timeline.clear()
        self._block("boot", True)
        self._block("outbid", False)
        self._block("exited", False)
        self._set("loading", "Bid won again: starting")
        self._boot(gen)

    # ----- stop and start by request (PUT /instances/{id}/ with a state)

    def stop_by_request(self) -> None:
        self.timeline.after(0, self._stop_requested)

    def start_by_request(self) -> None:
        self.timeline.after(0, self._start_requested)

    def _stop_requested(self) -> None:
        """Processes die, SSH refuses, the disk stays; storage bills only."""
        if self.destroyed_at is not None or self.user_stopped:
            return
        with self._lock:
            self._generation += 1
            self.user_stopped = True
            self.stops += 1
            if self._stopped_mono is None:
                self._stopped_mono = time.monotonic()
        self.timeline.clear()
        self._block("stopped", True)
        if self.ssh is not None:
            self.ssh.drop_connections()
        sandbox.kill_tagged(self.tag)
        self._set("stopped", "Stopped by request", cur_state="stopped")

    def _start_requested(self) -> None:
        """Boot again, files kept; or stay stopped when its GPUs were taken (fault)."""
        if self.destroyed_at is not None or not self.user_stopped:
            return
        if self._take({"start_fails"}):
            self._set("stopped", "Cannot start: the machine's GPUs are rented by another "
                      "client", cur_state="stopped")
            return
        with self._lock:
            self._generation += 1
            gen = self._generation
            self.user_stopped = False
            if self._stopped_mono is not None and not self.outbid:
                self._stopped_seconds += max(time.monotonic() - self._stopped_mono, 0.0)
                self._stopped_mono = None
        self.timeline.clear()
        self._block("boot", True)
        self._block("stopped", False)
        self._block("exited", False)
        self._set("loading", "Starting again")
        self._boot(gen)

    def _vanish(self, gen: int) -> None:
        if self._current(gen) and self.end(vanished=True):
            self._on_vanish(self)

    def _go_offline(self, gen: int, duration: float | None, status: str) -> None:
        """Lose the heartbeat (``offline`` or ``unknown``); back only after ``duration``."""
        if not self._current(gen) or self.actual_status != "running":
            return
        msg = self.status_msg
        self._set(status, msg)
        self._block("offline", True)
        if self.ssh is not None:  # a host without heartbeat has no working links either
            self.ssh.drop_connections()
        if duration is not None:
            self.timeline.after(duration, lambda: self._back_online(gen, msg))

    def _back_online(self, gen: int, msg: str | None) -> None:
        if self._current(gen) and self.actual_status in ("offline", "unknown"):
            self._set("running", msg)
            self._block("offline", False)

    def _kill_processes(self, gen: int, sig: int) -> None:
        if self._current(gen):
            sandbox.signal_tagged(self.tag, sig)

    def _rotate_key(self, gen: int) -> None:
        if self._current(gen) and self.ssh is not None:
            self.ssh.rotate_host_key()

    def _forget_keys(self, gen: int) -> None:
        if not self._current(gen):
            return
        with self._lock:
            self._keys.clear()
        (self.sandbox / ".ssh" / "authorized_keys").unlink(missing_ok=True)

    def _reboot(self) -> None:
        if self.destroyed_at is not None:
            return
        self._generation += 1
        gen = self._generation
        self.timeline.clear()
        self._block("boot", True)
        self._block("offline", False)
        self._block("exited", False)
        sandbox.kill_tagged(self.tag)
        self._set("rebooting", "rebooting")
        self._boot(gen)

    # ----- the main process

    def _start_main_process(self, gen: int) -> None:
        """Run the onstart script or the args entrypoint, output appended to the log."""
        uses_args = self.spec.uses_args
        command = self.spec.command() if uses_args else self._onstart_command()
        if command is None:
            return
        with open(self.log_path, "ab") as out:
            env = sandbox.sandbox_env(self.sandbox, self.tag, self._env_with_port())
            proc = sandbox.spawn(
                command, sandbox=self.sandbox, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        watcher = threading.Thread(
            target=self._watch,
            args=(proc, gen, uses_args),
            name=f"vastai-sim-i{self.id}-main",
            daemon=True,
        )
        self._watchers.append(watcher)
        watcher.start()

    def _onstart_command(self) -> str | None:
        """Vast writes the onstart script to ``/root/onstart.sh`` and runs it with bash."""
        if not self.spec.onstart:
            return None
        script = self.sandbox / "onstart.sh"
        script.write_text(
            self.spec.onstart if self.spec.onstart.endswith("\n") else self.spec.onstart + "\n"
        )
        shell = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"
        return f"{shell} {shlex.quote(str(script))}"

    def _env_with_port(self) -> dict[str, str]:
        """The main process's environment (PID 1's, on Vast.ai): the scoped key is here,
        not in SSH sessions (``_env``), as on the real service."""
        env = {**self._env(), "CONTAINER_API_KEY": self.api_key}
        if self.ssh_port:
            env["VAST_TCP_PORT_22"] = str(self.ssh_port)
        return env

    def _watch(self, proc: subprocess.Popen[bytes], gen: int, entrypoint: bool) -> None:
        """Reap the main process; the end of an args entrypoint ends the container."""
        code = proc.wait()
        code = 128 - code if code < 0 else code
        if entrypoint:
            self.timeline.after(0, lambda: self._entrypoint_exited(gen, code))

    def _entrypoint_exited(self, gen: int, code: int) -> None:
        if not self._current(gen) or self.actual_status not in ("running", "offline", "unknown"):
            return
        with self._lock:
            self.exit_code = code
            if self._hide_exit:  # stays_running: the host never says so
                return
        self._set("exited", f"Exited ({code})", cur_state="stopped")
        self._block("exited", True)
        sandbox.kill_tagged(self.tag)


_OFFER_COLUMNS = (
    "machine_id",
    "host_id",
    "bundle_id",
    "gpu_name",
    "num_gpus",
    "gpu_ram",
    "gpu_frac",
    "gpu_arch",
    "gpu_mem_bw",
    "compute_cap",
    "cuda_max_good",
    "driver_version",
    "cpu_name",
    "cpu_arch",
    "cpu_cores",
    "cpu_cores_effective",
    "cpu_ghz",
    "cpu_ram",
    "has_avx",
    "mobo_name",
    "pci_gen",
    "pcie_bw",
    "disk_bw",
    "disk_name",
    "inet_up",
    "inet_down",
    "inet_up_cost",
    "inet_down_cost",
    "dph_base",
    "dph_total",
    "storage_cost",
    "storage_total_cost",
    "min_bid",
    "reliability2",
    "verification",
    "hosting_type",
    "geolocation",
    "static_ip",
    "direct_port_count",
    "os_version",
    "logo",
    "webpage",
    "total_flops",
    "dlperf",
    "dlperf_per_dphtotal",
    "flops_per_dphtotal",
)


def _opt(value: Any, kind: type) -> Any:
    return None if value is None else kind(value)
