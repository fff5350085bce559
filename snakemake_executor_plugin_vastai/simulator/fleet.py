"""The simulated account: its instances and SSH keys, tied to the market and the faults.

Everything the REST routes do to instances goes through ``Fleet``: rent an offer, destroy,
reboot, attach a key, read logs, list. It owns instance ids (deterministic given the seed),
the per-instance directories under ``<state_dir>/instances/<id>/`` and logs under
``<state_dir>/logs/``, and the account's SSH keys (installed on instances created later,
as Vast does).
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import catalog, sandbox
from .faults import Fault, FaultPlan
from .instances import Instance, LaunchSpec
from .market import FOREIGN, Market, OfferGone

FOREIGN_IMAGE = "vastai/base-image:cuda-12.4.1-auto"


class FleetClosed(RuntimeError):
    """The simulator is stopping; nothing new may start."""


class CreateRefused(ValueError):
    """A create refused as the description documents it (410 no_such_ask, 400
    invalid_price); nothing was rented."""

    def __init__(self, offer_id: int, status: int, error: str, msg: str) -> None:
        super().__init__(msg)
        self.offer_id, self.status, self.error, self.msg = offer_id, status, error, msg


def refused(offer_id: int, status: int) -> CreateRefused:
    """The documented refusal for a ``create_refused`` fault's status."""
    if status == 410:
        return CreateRefused(offer_id, 410, "no_such_ask",
                             f"error 410/3907: no_such_ask Instance type {offer_id} is no "
                             "longer available.")
    return CreateRefused(offer_id, 400, "invalid_price",
                         f"error 400/3453: invalid_price for offer {offer_id}: the price "
                         "is not valid for this offer now.")


class Fleet:
    """All instances of the account. Thread-safe."""

    def __init__(
        self,
        *,
        market: Market,
        plan: FaultPlan,
        state_dir: Path,
        sim_tag: str,
        seed: int,
        boot_delay_for: Callable[[int], float],
        first_id: int | None = None,
    ) -> None:
        self.market = market
        self.plan = plan
        self.state_dir = state_dir
        self.sim_tag = sim_tag
        self._boot_delay_for = boot_delay_for
        self._lock = threading.Lock()
        self._instances: dict[int, Instance] = {}
        self._ids = random.Random(f"vastai-sim-ids-{seed}")
        # Ids grow with wall-clock time, like the real service's, so a workflow
        # journal that outlives one simulator never meets a reused id in the next.
        self._next_id = 20_000_000 + int(time.time() * 1000) % 900_000_000
        if first_id is not None:  # a test that must meet an id journaled elsewhere
            self._next_id = first_id
        self._keys: dict[int, dict[str, Any]] = {}
        self._next_key = 100_000 + seed % 1000
        self._closed = False

    # ----- instances

    def _allocate_id(self) -> int:
        with self._lock:
            if self._closed:
                raise FleetClosed("the simulator is stopping")
            self._next_id += self._ids.randrange(1, 40)
            return self._next_id

    def create(self, offer_id: int, payload: dict[str, Any]) -> int:
        """Rent ``offer_id``. Raises OfferGone, ValueError (bad payload) or FleetClosed."""
        spec = LaunchSpec.from_payload(payload)
        if self.plan.take_offer(offer_id):
            self.market.snatch(offer_id)
            raise OfferGone(offer_id)
        status = self.plan.refuse_create(offer_id)
        if status is not None:
            raise refused(offer_id, status)
        self._check_bid(offer_id, spec)
        iid = self._allocate_id()
        offer = self.market.take(offer_id, iid)
        if spec.disk > float(offer.get("disk_space") or 0.0):
            self.market.release(offer_id)
            raise ValueError(
                f"disk {spec.disk:g} GB exceeds the offer's "
                f"{float(offer.get('disk_space') or 0):g} GB"
            )
        faults = self.plan.for_new_instance(spec.label)
        inst = self._build(iid, offer, spec, faults, foreign=False)
        inst.start()
        return iid

    def _check_bid(self, offer_id: int, spec: LaunchSpec) -> None:
        """A bid (``price``) below the machine's ``min_bid`` is refused (ValueError: 400)."""
        if spec.price is None:
            return
        offer = self.market.offer(offer_id)
        minimum = float((offer or {}).get("min_bid") or 0.0)
        if offer is not None and spec.price < minimum:
            raise CreateRefused(offer_id, 400, "invalid_price",
                                f"bid price {spec.price:g} is below min_bid {minimum:g} "
                                f"of offer {offer_id}")

    def create_foreign(self, label: str) -> int:
        """A running instance on the account that no workflow started."""
        offer_id = self.market.first_available()
        if offer_id is None:
            raise OfferGone("no offer left for a foreign instance")
        iid = self._allocate_id()
        offer = self.market.take(offer_id, FOREIGN)
        spec = LaunchSpec(image=FOREIGN_IMAGE, label=label, disk=16.0)
        inst = self._build(iid, offer, spec, [], foreign=True)
        inst.start_running_now()
        return iid

    def _build(
        self,
        iid: int,
        offer: dict[str, Any],
        spec: LaunchSpec,
        faults: list[Fault],
        *,
        foreign: bool,
    ) -> Instance:
        box = self.state_dir / "instances" / str(iid)
        shutil.rmtree(box, ignore_errors=True)  # a reused state dir: never share a sandbox
        priced = catalog.price(offer, spec.disk)
        if spec.price is not None:  # a bid instance bills its bid plus storage
            priced["dph_total"] = round(spec.price + float(priced["storage_total_cost"]), 6)
            priced["is_bid"] = True
        inst = Instance(
            iid=iid,
            offer=priced,
            spec=spec,
            tag=f"sim{self.sim_tag}-i{iid}",
            sandbox_dir=box,
            log_path=self.state_dir / "logs" / f"{iid}.log",
            boot_delay=self._boot_delay_for(iid),
            faults=faults,
            keys=[k["public_key"] for k in self.account_keys()],
            on_vanish=self._vanished,
            foreign=foreign,
        )
        with self._lock:
            if self._closed:
                self.market.release(int(offer["id"]))
                raise FleetClosed("the simulator is stopping")
            self._instances[iid] = inst
        return inst

    def _vanished(self, inst: Instance) -> None:
        """A vanish fault fired: the machine is gone for good."""
        self.market.retire(int(inst.offer["id"]))
        inst.teardown()

    def get(self, iid: int) -> Instance | None:
        """A live instance of the account (destroyed and vanished ones are gone)."""
        with self._lock:
            inst = self._instances.get(iid)
        return inst if inst is not None and inst.alive else None

    def ended(self, iid: int) -> Instance | None:
        """An instance of the account that was destroyed or vanished."""
        with self._lock:
            inst = self._instances.get(iid)
        return inst if inst is not None and not inst.alive and not inst.foreign else None

    def owner_of_key(self, key: str) -> int | None:
        """The live instance whose own key (CONTAINER_API_KEY) this is, if any."""
        with self._lock:
            for inst in self._instances.values():
                if inst.alive and secrets.compare_digest(inst.api_key, key):
                    return inst.id
        return None

    def visible(self) -> list[Instance]:
        """Live instances, by id."""
        with self._lock:
            return [i for _, i in sorted(self._instances.items()) if i.alive]

    def everything(self) -> list[Instance]:
        """Every instance ever created (for the ground truth)."""
        with self._lock:
            return [i for _, i in sorted(self._instances.items())]

    def destroy(self, iid: int) -> bool:
        """Destroy: gone from the API, SSH down, processes killed, offer back on sale."""
        inst = self.get(iid)
        if inst is None or not inst.end():
            return False
        self.market.release(int(inst.offer["id"]))
        inst.teardown()
        return True

    def add_fault(self, fault: Fault) -> None:
        """A fault aimed at one existing instance."""
        inst = self.get(int(fault.instance_id or 0))
        if inst is None:
            raise ValueError(f"no live instance {fault.instance_id}")
        inst.add_fault(fault)

    # ----- account SSH keys

    def account_keys(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(k) for k in self._keys.values()]

    def add_account_key(self, public_key: str) -> dict[str, Any]:
        with self._lock:
            self._next_key += 1
            key = {
                "id": self._next_key,
                "public_key": public_key.strip(),
                "created_at": time.time(),
                "deleted_at": None,
            }
            self._keys[key["id"]] = key
            return dict(key)

    def remove_account_key(self, key_id: int) -> bool:
        with self._lock:
            return self._keys.pop(key_id, None) is not None

    # ----- stopping and checking

    def close(self) -> None:
        """Stop every instance's SSH server and processes (in parallel). Idempotent.

        Instances the client did not destroy stay ``alive`` in the truth (a leak stays
        visible), but their billing clock stops with the simulator.
        """
        with self._lock:
            self._closed = True
            instances = list(self._instances.values())
        for inst in instances:
            inst.freeze()
        threads = [threading.Thread(target=i.teardown, daemon=True) for i in instances]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30.0)

    def leftovers(self) -> dict[str, list[int]]:
        """Processes and listening SSH ports of this simulator that still exist."""
        pids: list[int] = []
        ports: list[int] = []
        running = [i for i in self.everything() if i.alive and not self._closed]
        in_use = {i.ssh_port for i in running}
        for inst in self.everything():
            if inst in running:
                continue
            pids += sandbox.tagged_pids(inst.tag)
            port = inst.ssh_port
            if port and port not in in_use and _listening(port):
                ports.append(port)
        return {"pids": sorted(pids), "ports": sorted(ports)}


def _listening(port: int) -> bool:
    """Whether THIS process still listens on ``port``.

    Connecting to the port would not do: once freed, a port may be taken by
    another process (another simulator of a parallel test run) at once.
    """
    return port in _own_listening_ports()


def _own_listening_ports() -> set[int]:
    """TCP ports this process listens on, from /proc (socket inodes of our fds)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports
