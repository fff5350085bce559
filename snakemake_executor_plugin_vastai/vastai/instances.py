"""Vast.ai instances as a job step sees them: create, watch, read logs, tear down.

One object per run. It narrows the API adapter (``vastai/api.py``), the batched status
listing (``watcher.py``) and the one teardown (``teardown.py``) to what a job's
steps use, and runs the teardowns no job drives (strays, leftovers of dead runs)
in the background so the run can wait for them at its end.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from ..run.keys import RunKey
from ..run.teardown import Teardown
from ..run.watcher import InstanceWatcher
from .api import VastAPI


class Instances:
    """The instances port of one run."""

    def __init__(self, api: VastAPI, watcher: InstanceWatcher, teardown: Teardown,
                 key: RunKey, *, teardown_wait: float) -> None:
        self.api = api
        self.watcher = watcher
        self.teardown = teardown
        self.key = key
        self.teardown_wait = teardown_wait
        self._background: list[threading.Thread] = []
        self._lock = threading.Lock()

    @property
    def retry_budget(self) -> float:
        return self.api.retry_budget

    def create(self, offer_id: int, *, label: str, **launch: Any) -> int:
        """Rent ``offer_id`` under ``label`` (journaled by the caller before this call)."""
        return self.api.create_instance(offer_id, label=label, **launch)

    def attach_key(self, instance_id: int) -> None:
        """Let this run's SSH key log in (SSH mode)."""
        self.api.attach_ssh_key(instance_id, self.key.public_line)

    def find_all_by_label(self, label: str) -> list[dict]:
        return self.api.find_all_by_label(label)

    def start(self, instance_id: int, budget: float | None = None) -> None:
        """Ask for a stopped instance to start; ``budget``: seconds of retries."""
        self.api.start_instance(instance_id, budget=budget)

    def log(self, instance_id: int, tail: int) -> str:
        return self.api.logs(instance_id, tail=tail)

    def destroy_in_background(self, instance_id: int, label: str | None = None,
                              stray: dict | None = None, reason: str = "") -> None:
        """Tear down an instance no job drives; :meth:`join` waits for it."""

        def destroy() -> None:
            if stray is not None:
                self.teardown.destroy_stray(stray, reason)
            else:
                self.teardown.destroy(instance_id, label=label)

        thread = threading.Thread(target=destroy, name=f"vastai-destroy-{instance_id}",
                                  daemon=True)
        with self._lock:
            self._background.append(thread)
        thread.start()

    def join(self, wait: float) -> None:
        """Wait for background teardowns; past ``wait`` they give up (pending)."""
        deadline = time.monotonic() + wait
        with self._lock:
            threads = list(self._background)
        for thread in threads:
            thread.join(timeout=max(deadline - time.monotonic(), 0.0))
        if any(t.is_alive() for t in threads):
            self.teardown.give_up.set()
