"""The watcher must not call a new instance vanished because of a listing taken before it
existed (seen in storage-mode runs renting several instances at once: "instance N vanished
while booting" a moment after its create succeeded)."""

from __future__ import annotations

import threading

from snakemake_executor_plugin_vastai.run.watcher import InstanceWatcher


class GatedListing:
    """Each list_instances call answers what existed when it arrived, once let through."""

    def __init__(self) -> None:
        self.instances: list[dict] = [{"id": 1, "label": "p-1", "actual_status": "running"}]
        self.arrived = [threading.Event() for _ in range(50)]
        self.gates = [threading.Event() for _ in range(50)]
        self.calls = 0

    def list_instances(self, prefix: str) -> list[dict]:
        n = self.calls
        self.calls += 1
        snapshot = [dict(row) for row in self.instances]
        self.arrived[n].set()
        assert self.gates[n].wait(10)
        return snapshot

    def open_all(self) -> None:
        for gate in self.gates:
            gate.set()


def test_a_listing_taken_before_the_instance_existed_does_not_count():
    api = GatedListing()
    watcher = InstanceWatcher(api, "p-", interval=0.01)
    watcher.watch(1)
    watcher.start()
    try:
        assert api.arrived[0].wait(10)  # listing 1 is out; instance 2 does not exist yet
        api.instances.append({"id": 2, "label": "p-2", "actual_status": "loading"})
        watcher.watch(2)  # created, then watched, while listing 1 is in flight
        api.gates[0].set()
        assert watcher.wait_next(0, timeout=10) == 1
        assert api.arrived[1].wait(10)  # listing 2 is out and held: generation stays 1
        assert watcher.sighting(1) is not None  # instance 1 was watched before: it counts
        assert watcher.sighting(2) is None  # listing 1 predates instance 2: no word yet
        api.gates[1].set()
        assert watcher.wait_next(1, timeout=10) == 2
        seen = watcher.sighting(2)
        assert seen is not None and seen.row is not None
        assert seen.row["actual_status"] == "loading"
    finally:
        api.open_all()
        watcher.stop()
