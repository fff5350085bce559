"""An API error that ends a job reaches the user as what it is, not as an internal error.

A job step that meets a :class:`VastError` it does not handle itself (an answer the
plugin cannot turn into progress, or an API that stayed unavailable past the retry
budget) fails the job with the error's own message, which names the endpoint and
says what to do; nothing is rented and nothing is left.
"""

from __future__ import annotations

import pytest

from snakemake_executor_plugin_vastai.vastai.api import VastAPI, VastAuthError, VastUnavailable
from tests.harness.e2e import alive, run_snakemake, write_workflow

ONE_RULE = 'rule one:\n    output: "one.txt"\n    shell: "echo ok > {output}"\n'
QUERY = {"rentable": {"eq": True}}
ORDER = [["dph_total", "asc"]]


@pytest.mark.e2e
def test_an_api_error_while_searching_fails_the_job_with_its_own_message(tmp_path, simulator):
    simulator.add_fault("api_status", code=400, endpoint="*/bundles/*")
    wf = write_workflow(tmp_path / "wf", {"Snakefile": ONE_RULE})
    result = run_snakemake(wf, simulator.url, simulator.api_key, timeout=120)
    assert result.returncode != 0
    assert "internal error" not in result.stderr
    assert "rule one: Vast.ai answered HTTP 400" in result.stderr, result.stderr[-3000:]
    truth = simulator.truth()
    assert truth["created_count"] == 0
    assert alive(truth) == []


def test_a_throttle_that_never_lets_up_names_the_endpoint_and_the_shared_key(simulator):
    simulator.add_fault("api_status", code=429, endpoint="*/bundles/*")
    api = VastAPI(simulator.api_key, simulator.url, retry_budget=1.0)
    with pytest.raises(VastUnavailable) as caught:
        api.search_offers(QUERY, ORDER, 5, 10.0)
    message = str(caught.value)
    assert "endpoint 'bundles'" in message
    assert "429" in message and "other program" in message
    assert "rerun" in message and "journal" in message
    assert simulator.api_key not in message


def test_an_api_that_stays_down_names_the_endpoint_and_what_to_do(simulator):
    simulator.add_fault("api_status", code=503, endpoint="*/bundles/*")
    api = VastAPI(simulator.api_key, simulator.url, retry_budget=1.0)
    with pytest.raises(VastUnavailable) as caught:
        api.search_offers(QUERY, ORDER, 5, 10.0)
    message = str(caught.value)
    assert "endpoint 'bundles'" in message and "HTTP 503" in message
    assert "Vast.ai is up" in message and "rerun" in message


def test_a_refused_key_is_not_asked_again_in_the_run(simulator):
    """A 401 does not heal by waiting: after the first, every call fails at once, without a
    request (the run stops renting and its teardown stops retrying)."""
    api = VastAPI(simulator.api_key, simulator.url, retry_budget=30.0)
    simulator.add_fault("api_status", code=401)
    with pytest.raises(VastAuthError):
        api.search_offers_unshared(QUERY, ORDER, 5, 10.0)
    simulator.clear_faults()  # even a key that works again: this run does not guess
    calls = sum(api.stats.calls.values())
    with pytest.raises(VastAuthError, match="refused the API key earlier"):
        api.show_instance(1)
    assert sum(api.stats.calls.values()) == calls
    assert api.key_refused.is_set()
