"""pytest fixtures for the simulator (registered for all tests via ``tests/conftest.py``).

- ``simulator``: a started ``Simulator`` with fast defaults on a free port.
- ``simulator_factory``: ``simulator_factory(seed=3, boot_delay=1.0)`` starts one per call
  with those ``SimConfig`` fields.

Both stop every simulator at teardown, also when the test failed, and then assert that no
instance process and no SSH port was left behind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .server import SimConfig, Simulator


def _stop_and_check(sims: list[Simulator]) -> None:
    """Stop all, then fail if anything outlived them (after stopping every one)."""
    problems = []
    for sim in sims:
        sim.stop()
    for sim in sims:
        left = sim.leftovers()
        if left["pids"] or left["ports"]:
            problems.append(f"simulator {sim.sim_id} left behind {left}")
    assert not problems, "; ".join(problems)


@pytest.fixture
def simulator_factory() -> Iterator[Callable[..., Simulator]]:
    """Start simulators with the given SimConfig fields; all stopped at teardown."""
    sims: list[Simulator] = []

    def make(**config: Any) -> Simulator:
        sim = Simulator(SimConfig(**config))
        sims.append(sim)
        sim.start()
        return sim

    try:
        yield make
    finally:
        _stop_and_check(sims)


@pytest.fixture
def simulator(simulator_factory: Callable[..., Simulator]) -> Simulator:
    """A started simulator with fast defaults (0.3 s boots, no rate limit)."""
    return simulator_factory()
