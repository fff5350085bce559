"""Bid instances: the preemption rows of the job table and the pure bid rules (bids.py)."""

from __future__ import annotations

import pytest
from transitions.extensions import LockedMachine

from snakemake_executor_plugin_vastai.costs import ledger
from snakemake_executor_plugin_vastai.lifecycle.job_machine import (
    JobState,
    Progress,
    machine_kwargs,
)
from snakemake_executor_plugin_vastai.vastai import bids
from snakemake_executor_plugin_vastai.vastai.bids import BidSettings
from snakemake_executor_plugin_vastai.workflow.validation import ConfigError
from tests.unit.lifecycle.test_machine import Model


def machine() -> LockedMachine:
    return LockedMachine(model=None, send_event=True, before_state_change="journal_transition",
                         **machine_kwargs())


def walk(job: Model, triggers: list[str]) -> list[str]:
    log: list = job.journal
    for trigger in triggers:
        getattr(job, trigger)()
    return [d for _, d, _ in log]


@pytest.mark.parametrize("state", ["BOOTING", "UPLOADING", "RUNNING", "DOWNLOADING"])
def test_every_state_holding_a_booted_or_booting_instance_can_be_preempted(state):
    m, job = machine(), Model([])
    m.add_model(job, initial=JobState[state])
    job.preempted()
    assert job.state is JobState.PREEMPTED
    assert JobState.PREEMPTED.may_hold_instance and not JobState.PREEMPTED.is_terminal


@pytest.mark.parametrize(("progress", "dest"), [
    (Progress.FINISHED, "DOWNLOADING"),  # the job had ended: only its outputs are fetched
    (Progress.UPLOADED, "RUNNING"),  # inputs on the kept disk: run again without an upload
    (Progress.NOTHING, "UPLOADING"),  # preempted before the upload finished
])
def test_a_resumed_instance_boots_into_what_is_left_to_do(progress, dest):
    m, job = machine(), Model([])
    job.progress = progress
    m.add_model(job, initial=JobState.RUNNING)
    job.preempted()
    assert walk(job, ["resumed", "booted"])[-2:] == ["BOOTING", dest]


def test_a_first_boot_goes_to_uploading():
    """A first boot has nothing of the job on the instance: it uploads."""
    m, job = machine(), Model([])
    m.add_model(job, initial=JobState.BOOTING)
    job.booted()
    assert job.state is JobState.UPLOADING


def test_past_the_grace_the_job_searches_again_and_can_still_fail_or_cancel():
    """The abandoned instance is torn down in destroying, the one teardown state; then
    the job, whose work is not home, searches again."""
    m, job = machine(), Model([])
    m.add_model(job, initial=JobState.RUNNING)
    assert walk(job, ["preempted", "abandon", "rent_again"]) == ["PREEMPTED", "DESTROYING",
                                                                 "SEARCHING"]
    other = Model([])
    m.add_model(other, initial=JobState.PREEMPTED)
    other.cancel()
    assert other.state is JobState.DESTROYING


def test_bid_is_a_multiple_of_min_bid_capped_by_the_price_cap():
    offer = {"min_bid": 0.10, "storage_cost": 0.72, "dph_base": 0.30}  # 0.01 $/h for 10 GB
    assert bids.bid_price(offer, 1.5, None, 10) == pytest.approx(0.15)
    # the cap bounds bid + storage: 0.13 - 0.01
    assert bids.bid_price(offer, 1.5, 0.13, 10) == pytest.approx(0.12)
    assert bids.bid_price(offer, 1.5, 0.105, 10) is None  # min_bid + storage breaks the cap
    assert bids.bid_price({"dph_base": 0.3}, 1.5, None, 10) is None  # no bid market
    assert bids.on_demand_dph(offer, 10) == pytest.approx(0.31)


def test_outbid_is_a_stopped_bid_instance_only():
    stopped = {"is_bid": True, "actual_status": "stopped", "intended_status": "stopped",
               "cur_state": "stopped", "next_state": "stopped"}
    assert bids.is_outbid(stopped)
    assert not bids.is_outbid({**stopped, "is_bid": False})
    assert not bids.is_outbid({**stopped, "actual_status": "exited"})
    assert not bids.is_outbid({"is_bid": True, "actual_status": "running",
                               "intended_status": "running", "cur_state": "running"})


class Chosen:
    def __init__(self, rules=(), all_=False):
        self.rules, self.all = frozenset(rules), all_


class Remote:
    def __init__(self, chosen=None, retries=None):
        self.preemptible_rules, self.preemptible_retries = chosen or Chosen(), retries


class Opts:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def test_preemptible_rules_and_the_resource_choose_bid_jobs():
    named = bids.settings_from(Opts(), Remote(Chosen({"train"}), retries=2))
    assert named.interruptible("train", {}) and not named.interruptible("prep", {})
    assert named.interruptible("prep", {"vastai_interruptible": "yes"})
    assert not named.interruptible("train", {"vastai_interruptible": False})
    assert named.fallback_after == 2 and named.fallback
    everything = bids.settings_from(Opts(no_bid_fallback=True), Remote(Chosen(all_=True)))
    assert everything.interruptible("anything", {})
    assert not everything.on_demand_now(99)  # fallback switched off
    assert BidSettings(fallback_after=1).on_demand_now(1)


@pytest.mark.parametrize(("opts", "remote", "culprit"), [
    (Opts(bid=0.5), Remote(), "--vastai-bid"),
    (Opts(preemption_grace=-1), Remote(), "--vastai-preemption-grace"),
    (Opts(), Remote(retries=-1), "--preemptible-retries"),
])
def test_bad_bid_options_name_the_option(opts, remote, culprit):
    with pytest.raises(ConfigError, match=culprit):
        bids.settings_from(opts, remote)


def test_a_bad_vastai_interruptible_names_the_rule():
    with pytest.raises(ConfigError, match=r"rule train.*vastai_interruptible"):
        bids.interruptible_resource({"vastai_interruptible": "maybe"}, "train")


def test_stopped_time_bills_storage_only():
    row = {"dph_total": 0.36, "storage_dph": 0.036, "stopped_seconds": 1800.0,
           "stopped_since": None, "created_at": 0.0, "destroyed_at": 3600.0}
    # one hour alive, half of it stopped: 0.5 h x 0.36 + 0.5 h x 0.036
    parts = ledger.components(row, 3600.0)
    assert parts["compute"] == pytest.approx(0.18)
    assert parts["storage"] == pytest.approx(0.018)


def test_a_stop_still_going_on_bills_storage_up_to_the_end_of_the_span():
    # started at 0, stopped since 2700 s, billed span 3600 s: 2700 s running, 900 s stopped
    row = {"dph_total": 0.36, "storage_dph": 0.036, "stopped_seconds": None,
           "stopped_since": 2700.0, "created_at": 0.0}
    parts = ledger.components(row, 3600.0)
    assert parts["compute"] == pytest.approx(0.27)
    assert parts["storage"] == pytest.approx(0.009)
    assert ledger.components({"dph_total": 0.36, "created_at": 0.0}, 3600.0)["storage"] == 0


def test_missing_preemptible_retries_default_to_retries_only_when_rules_are_chosen():
    class Workflow:
        def __init__(self, chosen, retries=None):
            self.remote_execution_settings = Remote(chosen, retries)
            self.execution_settings = Opts(retries=2)

    chosen = Workflow(Chosen(all_=True))
    assert bids.default_preemptible_retries(chosen) == 2
    assert chosen.remote_execution_settings.preemptible_retries == 2
    given = Workflow(Chosen({"train"}), retries=5)
    assert bids.default_preemptible_retries(given) is None
    assert given.remote_execution_settings.preemptible_retries == 5
    assert bids.default_preemptible_retries(Workflow(Chosen())) is None  # nothing chosen
