"""The one teardown against the simulator: which answers confirm a destroy, which never do.

A destroyed instance may be shown as a null row (the simulator's default), a documented
404, or a row on its way out; each confirms it gone. A transient answer (5xx, 429)
confirms nothing, however long it lasts: the instance stays pending.
"""

from __future__ import annotations

import logging
import time

import pytest

from snakemake_executor_plugin_vastai.run.logs import PluginLogger
from snakemake_executor_plugin_vastai.run.teardown import Teardown, says_gone
from snakemake_executor_plugin_vastai.vastai.api import VastAPI, _names_instance_missing
from tests.simulator.helpers import rent, sdk

pytestmark = pytest.mark.timeout(60)


def teardown_for(sim) -> Teardown:
    api = VastAPI(sim.api_key, sim.url, retry_budget=5, request_timeout=5)
    return Teardown(api, None, PluginLogger(logging.getLogger("test-teardown")),
                    sleep=lambda s: time.sleep(min(s, 0.2)))


@pytest.mark.parametrize("answer", ["null", "404", "row"])
def test_a_destroy_is_confirmed_by_each_answer_for_a_gone_instance(simulator, answer):
    iid = rent(sdk(simulator), label=f"gone-{answer}")
    if answer != "null":
        simulator.add_fault("gone_answer", mode=answer)
    teardown = teardown_for(simulator)
    assert teardown.destroy(iid, deadline=time.monotonic() + 4) is True
    assert teardown.pending_ids() == []
    shows = simulator.truth()["requests"]["GET /api/v0/instances/{id}/"]
    assert shows == 1, "confirmed from the first answer after the destroy"


@pytest.mark.parametrize("code", [503, 429])
def test_a_transient_answer_never_confirms_a_destroy(simulator, code):
    iid = rent(sdk(simulator), label=f"transient-{code}")
    simulator.add_fault("api_status", code=code, endpoint="GET /api/v0/instances/*")
    teardown = teardown_for(simulator)
    assert teardown.destroy(iid, deadline=time.monotonic() + 2.5) is False
    assert teardown.pending_ids() == [iid]


def test_only_a_row_that_says_going_or_gone_confirms():
    assert says_gone(None)
    assert says_gone({"id": 1, "actual_status": "exited", "cur_state": "destroyed"})
    assert says_gone({"id": 1, "actual_status": "destroying"})
    for status in ("running", "exited", "offline", "unknown", "stopped", None):
        assert not says_gone({"id": 1, "actual_status": status, "cur_state": "stopped"})


def test_a_404_about_the_path_is_not_an_instance_gone():
    assert _names_instance_missing({"error": "not_found", "msg": "Instance not found"})
    assert _names_instance_missing({"error": "invalid_id", "msg": "Invalid instance id."})
    assert not _names_instance_missing(
        {"error": "not_found", "msg": "no such endpoint: /api/v0/instances/7/"})
    assert not _names_instance_missing({})
