"""The fault plan: what goes wrong, where and when. Deterministic given the seed.

Add faults with ``Simulator.add_fault(kind, **params)`` (or ``POST /_sim/faults`` with
``{"kind": ..., **params}``); ``clear_faults()`` / ``DELETE /_sim/faults`` removes those
not yet applied. Unknown kinds or parameters raise ``ValueError`` (HTTP 400).

Instance faults are attached to instances when they are created. Targeting parameters
(all optional, combinable):

- ``label_pattern``: fnmatch glob on the instance label (``"snakejob-*"``);
- ``next_n``: only the next N instances created (that match the pattern);
- ``instance_id``: one existing instance (applied at once if its state allows, else at
  its next boot or next ``running``).

Without targeting a fault applies to every instance created from now on. Each fault acts
once per instance (a reboot boots normally). Times are wall-clock seconds (not scaled).

Instance fault kinds:

- ``boot_delay(seconds)``: boot takes ``seconds`` instead of the configured delay.
- ``boot_hang()``: the instance stays ``loading`` forever (until destroyed or rebooted).
- ``boot_fatal(status_msg=<pull rate limit>, final_status="exited")``: after loading,
  the boot fails; ``actual_status`` becomes ``final_status`` (``exited``, or ``created`` as
  when a pull fails before the container exists) with that ``status_msg``, e.g.
  ``"manifest unknown"``, ``"no space left on device"``,
  ``"unauthorized: authentication required"``. SSH never answers.
- ``offline(after_seconds=0.5, duration=None, status="offline")``: ``after_seconds`` after
  reaching running the host loses its heartbeat: ``actual_status`` is ``status``
  (``offline`` or ``unknown``), established SSH connections are torn down and new ones
  reset; processes keep running. By default it never comes back, as the published
  description says of both statuses; a ``duration`` makes it ``running`` again after
  that many seconds (a short loss of heartbeat, for tests of the grace period).
- ``vanish(after_seconds=0.0, at_state="running")``: ``after_seconds`` after entering
  ``at_state`` (``created``, ``loading`` or ``running``) the instance disappears: gone from
  every API answer, SSH down, processes killed, billing stopped, its offer retired.
- ``ssh_refuse(seconds=2.0, connections=0)``: for ``seconds`` after reaching running, SSH
  connections are reset although the API says running; and then the next ``connections``
  connections too, whenever they come.
- ``ssh_drop(after_bytes=None, after_seconds=None)``: the first SSH connection that logs in
  after running is torn down (TCP RST) after that many payload bytes or seconds. One-shot.
- ``ssh_throttle(bytes_per_second)``: once running, what clients send over exec channels
  (uploads) reaches the instance no faster than that: a slow link, so that a test can act
  while a transfer is certainly under way.
- ``keys_lost(after_seconds=0.0)``: ``after_seconds`` after running the instance forgets
  every SSH public key it accepted (API-attached ones and ``~/.ssh/authorized_keys``):
  a client's key is refused until a key is attached again.
- ``kill_job(after_seconds=0.0, signal=9)``: ``after_seconds`` after running, every process
  of the instance gets ``signal`` (SIGKILL: an OOM kill); sshd keeps serving.
- ``host_key_change(after_seconds=0.0)``: the SSH host key changes ``after_seconds`` after
  running (a different machine answering on the same address).
- ``disk_full(after_bytes)``: the instance's disk (its sandbox, HOME) holds only about
  ``after_bytes`` (a size-limited tmpfs mounted over it at running, so writes beyond it
  fail with a real ENOSPC, "No space left on device"). Needs root to mount; see
  ``sandbox.can_mount()``.
- ``stays_running()``: runtype ``args`` only: when the container command ends, the host
  never reports it. ``actual_status`` stays ``running`` (and billing goes on) until the
  instance is destroyed; the log keeps the command's output; the truth's ``exit_code``
  has the real code.
- ``outbid(after_seconds=0.0, at_state="running", back_after=None, competing_bid=None,
  after_bytes_out=None, chance=1.0)``: bid instances only, each hit with probability
  ``chance`` (seeded): ``after_seconds`` after entering
  ``at_state`` (``loading`` or ``running``), or with ``after_bytes_out`` once its SSH server
  has sent that many payload bytes since running (a download under way), a competing bid
  wins the machine: the instance is stopped (processes
  killed, SSH refused, disk kept, storage billed). After ``back_after`` seconds (None:
  never by itself) it starts again; raising its bid above ``competing_bid`` (default: 1.25
  x its bid) with ``PUT /instances/bid_price/{id}/`` starts it at once. Counted in the
  truth's ``preemptions``.
- ``start_fails()``: once the instance is stopped (``PUT /instances/{id}/`` with
  ``state: stopped``), a request to start it again is accepted but the instance stays
  ``stopped``: its GPUs were rented by someone else meanwhile (``status_msg`` says so).

Service faults (no targeting; ``count`` limits how many requests they hit):

- ``api_status(code, fraction=1.0, endpoint="*", retry_after=None, count=None)``: matching
  API requests are answered with HTTP ``code`` (429: the real throttle body; 500: a JSON
  error; 502/503/504: a gateway's HTML page). ``retry_after`` adds a Retry-After header
  (the real service sends none). ``fraction`` of the requests, drawn from a seeded RNG.
- ``api_latency(seconds, fraction=1.0, endpoint="*", count=None)``: answers are delayed.
- ``api_down(seconds, after_seconds=0.0, mode="reset")``: for ``seconds`` the API does not
  answer: ``reset`` drops every connection (TCP RST, no HTTP answer; clients see a
  connection error), ``hang`` holds requests until the outage ends, then drops them.
- ``offer_taken(count=1, offer_id=None)``: the next ``count`` creates (on ``offer_id``
  only, if given) answer ``no_such_ask`` and the offer is gone from search, as if someone
  else rented it between search and create.
- ``create_refused(status=410, count=1, offer_id=None, fraction=1.0)``: the next ``count``
  creates (on ``offer_id`` only, if given; each with probability ``fraction``, seeded) are
  refused as the description documents: 410 ``no_such_ask`` "no longer available" (the
  machine cannot start it now; the offer stays listed) or, with ``status=400``,
  ``invalid_price``. Nothing is rented.
- ``gone_answer(mode="404", count=None)``: how ``GET /instances/{id}/`` answers for an
  instance that was destroyed (the description is silent; by default the simulator
  answers ``{"instances": null}``, which the SDK reads as gone): ``404`` answers the
  documented instance 404 (``not_found``); ``row`` answers its last row with
  ``intended_status``/``cur_state``/``next_state`` ``destroyed`` and ``actual_status``
  ``exited`` (a row on its way out). Only for instances this account had.
- ``answer_lost(endpoint="*", count=1, mode="reset", seconds=0.0, fraction=1.0)``: the
  server *does the work* (creates, destroys, lists), then the answer is lost on its way:
  ``reset`` drops the connection without a byte; ``truncate`` sends the headers and half
  the body, then drops it; ``html`` answers status 200 with a proxy's HTML page;
  ``garbage`` answers status 200 with JSON of the wrong shape; ``slow`` answers only
  after ``seconds`` (longer than the client's timeout, say).
  Counted in the truth's ``rejected["answer_lost"]``.

``endpoint`` is an fnmatch glob tried against ``"METHOD /path"``, ``"/path"`` and the
route pattern (``"PUT /api/v0/asks/{id}/"``), e.g. ``"*/bundles/*"`` or ``"PUT *"``.
"""

from __future__ import annotations

import fnmatch
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..vastai.query import glob_match

DEFAULT_FATAL_MSG = (
    "Error response from daemon: toomanyrequests: You have reached your pull rate limit. "
    "You may increase the limit by authenticating and upgrading: "
    "https://www.docker.com/increase-rate-limit"
)

_REQUIRED = object()

# kind -> {param: default}; _REQUIRED marks mandatory parameters.
INSTANCE_KINDS: dict[str, dict[str, Any]] = {
    "boot_delay": {"seconds": _REQUIRED},
    "boot_hang": {},
    "boot_fatal": {"status_msg": DEFAULT_FATAL_MSG, "final_status": "exited"},
    "offline": {"after_seconds": 0.5, "duration": None, "status": "offline"},
    "vanish": {"after_seconds": 0.0, "at_state": "running"},
    "ssh_refuse": {"seconds": 2.0, "connections": 0},
    "ssh_drop": {"after_bytes": None, "after_seconds": None},
    "ssh_throttle": {"bytes_per_second": _REQUIRED},
    "kill_job": {"after_seconds": 0.0, "signal": 9},
    "keys_lost": {"after_seconds": 0.0},
    "host_key_change": {"after_seconds": 0.0},
    "stays_running": {},
    "disk_full": {"after_bytes": _REQUIRED},
    "outbid": {"after_seconds": 0.0, "at_state": "running", "back_after": None,
               "competing_bid": None, "after_bytes_out": None, "chance": 1.0},
    "start_fails": {},
}
SERVICE_KINDS: dict[str, dict[str, Any]] = {
    "api_status": {
        "code": _REQUIRED,
        "fraction": 1.0,
        "endpoint": "*",
        "retry_after": None,
        "count": None,
    },
    "api_latency": {"seconds": _REQUIRED, "fraction": 1.0, "endpoint": "*", "count": None},
    "api_down": {"seconds": _REQUIRED, "after_seconds": 0.0, "mode": "reset"},
    "offer_taken": {"count": 1, "offer_id": None},
    "create_refused": {"status": 410, "count": 1, "offer_id": None, "fraction": 1.0},
    "gone_answer": {"mode": "404", "count": None},
    "answer_lost": {"endpoint": "*", "count": 1, "mode": "reset", "seconds": 0.0,
                    "fraction": 1.0},
}
LOST_MODES = ("reset", "truncate", "html", "garbage", "slow")
TARGETING = ("label_pattern", "next_n", "instance_id")
BOOT_KINDS = frozenset({"boot_delay", "boot_hang", "boot_fatal"})
VANISH_STATES = frozenset({"created", "loading", "running"})


@dataclass
class Fault:
    """One fault as added, with what is left of its budget."""

    kind: str
    params: dict[str, Any]
    serial: int
    rng: random.Random
    label_pattern: str | None = None
    next_n: int | None = None
    instance_id: int | None = None
    count: int | None = None
    down_from: float = 0.0
    down_until: float = 0.0

    def describe(self) -> dict[str, Any]:
        """JSON-able view (for the truth endpoint)."""
        return {
            "kind": self.kind,
            **self.params,
            "label_pattern": self.label_pattern,
            "next_n": self.next_n,
            "instance_id": self.instance_id,
            "count": self.count,
        }


@dataclass
class ApiEffect:
    """What the service faults do to one request."""

    latency: float = 0.0
    status: int | None = None
    retry_after: str | None = None
    down_until: float = 0.0
    down_mode: str = "reset"


def _validate(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    spec = INSTANCE_KINDS[kind] if kind in INSTANCE_KINDS else SERVICE_KINDS.get(kind)
    if spec is None:
        known = sorted(INSTANCE_KINDS) + sorted(SERVICE_KINDS)
        raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(known)}")
    allowed = set(spec) | (set(TARGETING) if kind in INSTANCE_KINDS else set())
    unknown = set(params) - allowed
    if unknown:
        raise ValueError(f"fault {kind}: unknown parameter(s) {sorted(unknown)}")
    out = {}
    for name, default in spec.items():
        value = params.get(name, default)
        if value is _REQUIRED:
            raise ValueError(f"fault {kind}: parameter {name!r} is required")
        out[name] = value
    _check_values(kind, out)
    return out


def _check_values(kind: str, p: dict[str, Any]) -> None:
    """Reject values that could not mean anything."""
    for name in ("seconds", "after_seconds", "duration", "fraction"):
        if p.get(name) is not None and float(p[name]) < 0:
            raise ValueError(f"fault {kind}: {name} must be >= 0")
    if kind == "ssh_drop" and p["after_bytes"] is None and p["after_seconds"] is None:
        raise ValueError("fault ssh_drop: give after_bytes or after_seconds")
    if kind == "vanish" and p["at_state"] not in VANISH_STATES:
        raise ValueError(f"fault vanish: at_state must be one of {sorted(VANISH_STATES)}")
    if kind == "outbid" and not 0.0 <= float(p["chance"]) <= 1.0:
        raise ValueError("fault outbid: chance must be between 0 and 1")
    if kind == "outbid" and p["at_state"] not in ("loading", "running"):
        raise ValueError("fault outbid: at_state must be 'loading' or 'running'")
    if kind == "outbid" and p["back_after"] is not None and float(p["back_after"]) < 0:
        raise ValueError("fault outbid: back_after must be >= 0 (or None: never)")
    if kind == "boot_fatal" and p["final_status"] not in ("exited", "created"):
        raise ValueError("fault boot_fatal: final_status must be 'exited' or 'created'")
    if kind == "api_status" and not 400 <= int(p["code"]) <= 599:
        raise ValueError("fault api_status: code must be an HTTP error status")
    if kind == "offline" and p["status"] not in ("offline", "unknown"):
        raise ValueError("fault offline: status must be 'offline' or 'unknown'")
    if kind == "create_refused" and int(p["status"]) not in (400, 410):
        raise ValueError("fault create_refused: status must be 410 (no_such_ask) or 400 "
                         "(invalid_price)")
    if kind == "gone_answer" and p["mode"] not in ("404", "row"):
        raise ValueError("fault gone_answer: mode must be '404' or 'row'")
    if kind == "api_down" and p["mode"] not in ("reset", "hang"):
        raise ValueError("fault api_down: mode must be 'reset' or 'hang'")
    if kind == "answer_lost" and p["mode"] not in LOST_MODES:
        raise ValueError(f"fault answer_lost: mode must be one of {', '.join(LOST_MODES)}")


def endpoint_matches(pattern: str, method: str, path: str, route: str | None) -> bool:
    """fnmatch ``pattern`` against "METHOD /path", "/path" and the route pattern."""
    candidates = [f"{method} {path}", path]
    if route:
        candidates += [route, route.split(" ", 1)[-1]]
    return any(fnmatch.fnmatchcase(c, pattern) for c in candidates)


@dataclass
class FaultPlan:
    """Every fault of one simulator. Thread-safe."""

    seed: int = 0
    faults: list[Fault] = field(default_factory=list)
    _serial: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, **params: Any) -> Fault:
        """Validate and register a fault; returns it (see the module docstring)."""
        targeting = {k: params.pop(k) for k in TARGETING if k in params}
        if targeting and kind not in INSTANCE_KINDS:
            raise ValueError(f"fault {kind}: targeting {sorted(targeting)} is for instance faults")
        checked = _validate(kind, params)
        with self._lock:
            self._serial += 1
            fault = Fault(
                kind=kind,
                params=checked,
                serial=self._serial,
                rng=random.Random(f"vastai-sim-fault-{self.seed}-{self._serial}"),
                label_pattern=targeting.get("label_pattern"),
                next_n=_opt_int(targeting.get("next_n")),
                instance_id=_opt_int(targeting.get("instance_id")),
                count=_opt_int(checked.get("count")),
            )
            if kind == "api_down":
                fault.down_from = time.monotonic() + float(checked["after_seconds"])
                fault.down_until = fault.down_from + float(checked["seconds"])
            if fault.instance_id is None:  # else the caller hands it to that instance
                self.faults.append(fault)
        return fault

    def clear(self) -> None:
        """Forget every fault not yet attached to an instance."""
        with self._lock:
            self.faults.clear()

    def describe(self) -> list[dict[str, Any]]:
        with self._lock:
            return [f.describe() for f in self.faults]

    # ----- instance faults

    def for_new_instance(self, label: str | None) -> list[Fault]:
        """Faults for an instance being created (consumes ``next_n``)."""
        picked = []
        with self._lock:
            for f in self.faults:
                if f.kind not in INSTANCE_KINDS or f.instance_id is not None:
                    continue
                if not glob_match(f.label_pattern, label):
                    continue
                if f.next_n is not None:
                    if f.next_n <= 0:
                        continue
                    f.next_n -= 1
                picked.append(f)
            self.faults = [f for f in self.faults if f.next_n is None or f.next_n > 0]
        return picked

    # ----- service faults

    def take_offer(self, offer_id: int) -> bool:
        """Whether this create must find its offer taken (consumes ``offer_taken``)."""
        with self._lock:
            for f in self.faults:
                if f.kind != "offer_taken" or (f.count is not None and f.count <= 0):
                    continue
                wanted = f.params["offer_id"]
                if wanted is not None and int(wanted) != offer_id:
                    continue
                if f.count is not None:
                    f.count -= 1
                return True
        return False

    def refuse_create(self, offer_id: int) -> int | None:
        """The status a ``create_refused`` fault answers this create with, if one hits
        (consumes its count)."""
        with self._lock:
            for f in self.faults:
                if f.kind != "create_refused" or (f.count is not None and f.count <= 0):
                    continue
                wanted = f.params["offer_id"]
                if wanted is not None and int(wanted) != offer_id:
                    continue
                if f.rng.random() >= float(f.params["fraction"]):
                    continue
                if f.count is not None:
                    f.count -= 1
                return int(f.params["status"])
        return None

    def gone_answer(self) -> str | None:
        """How a show of a destroyed instance answers, if a ``gone_answer`` fault says
        (consumes its count); None: the null row."""
        with self._lock:
            for f in self.faults:
                if f.kind == "gone_answer" and (f.count is None or f.count > 0):
                    if f.count is not None:
                        f.count -= 1
                    return str(f.params["mode"])
        return None

    def api_effect(self, method: str, path: str, route: str | None) -> ApiEffect:
        """How the service faults treat one API request (consumes counts)."""
        effect = ApiEffect()
        now = time.monotonic()
        with self._lock:
            for f in self.faults:
                if f.kind == "api_down" and f.down_from <= now < f.down_until:
                    effect.down_until = max(effect.down_until, f.down_until)
                    effect.down_mode = f.params["mode"]
                elif f.kind in ("api_status", "api_latency") and self._hits(f, method, path, route):
                    if f.kind == "api_latency":
                        effect.latency += float(f.params["seconds"])
                    elif effect.status is None:
                        effect.status = int(f.params["code"])
                        ra = f.params["retry_after"]
                        effect.retry_after = None if ra is None else str(ra)
        return effect

    def lost_answer(self, method: str, path: str, route: str | None) -> tuple[str, float] | None:
        """After the work is done: how its answer is lost, if an ``answer_lost`` fault hits
        (consumes counts)."""
        with self._lock:
            for f in self.faults:
                if f.kind == "answer_lost" and self._hits(f, method, path, route):
                    return str(f.params["mode"]), float(f.params["seconds"])
        return None

    @staticmethod
    def _hits(f: Fault, method: str, path: str, route: str | None) -> bool:
        if f.count is not None and f.count <= 0:
            return False
        if not endpoint_matches(str(f.params["endpoint"]), method, path, route):
            return False
        if f.rng.random() >= float(f.params["fraction"]):
            return False
        if f.count is not None:
            f.count -= 1
        return True


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)
