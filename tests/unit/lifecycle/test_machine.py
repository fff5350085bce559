"""The transition table: reachability, cleanup paths, and the journal-first order."""

from __future__ import annotations

from collections import deque

import pytest
from transitions.extensions import LockedMachine

from snakemake_executor_plugin_vastai.lifecycle.job_machine import (
    CONDITIONS,
    TERMINAL_STATES,
    TRANSITIONS,
    JobState,
    Progress,
    machine_kwargs,
)
from snakemake_executor_plugin_vastai.lifecycle.models import JobModel


def edges() -> list[tuple[JobState, JobState, str]]:
    out = []
    for row in TRANSITIONS:
        sources = row["source"] if isinstance(row["source"], list) else [row["source"]]
        for src in sources:
            dest = src if row["dest"] == "=" else row["dest"]
            out.append((JobState(src), JobState(dest), row["trigger"]))
    return out


def reachable(start: JobState) -> set[JobState]:
    seen = {start}
    queue = deque([start])
    while queue:
        state = queue.popleft()
        for src, dest, _ in edges():
            if src is state and dest not in seen:
                seen.add(dest)
                queue.append(dest)
    return seen


def test_every_state_is_reachable_from_the_initial_state():
    assert reachable(JobState.SEARCHING) == set(JobState)


@pytest.mark.parametrize("state", [s for s in JobState if s not in TERMINAL_STATES])
def test_every_active_state_has_a_path_to_destroying(state):
    assert JobState.DESTROYING in reachable(state)


@pytest.mark.parametrize("state", [s for s in JobState if s not in TERMINAL_STATES])
def test_every_active_state_can_fail_or_cancel_into_destroying(state):
    """Cleanup is one step away from anywhere: fail and cancel lead to destroying."""
    if state is JobState.DESTROYING:
        return
    triggers = {t for src, dest, t in edges() if src is state and dest is JobState.DESTROYING}
    assert {"fail", "cancel"} <= triggers


def test_terminal_states_have_no_way_out():
    assert not [e for e in edges() if e[0] in TERMINAL_STATES]


def test_every_trigger_from_destroying_ends_the_job_or_searches_again():
    """No path stops in destroying: each way out of it (confirmed or not) reaches a
    terminal state, or searching for an instance lost before the work came home."""
    out = {(dest, t) for src, dest, t in edges() if src is JobState.DESTROYING
           and dest is not JobState.DESTROYING}
    for trigger in ("destroyed", "destroy_unconfirmed"):
        assert {d for d, t in out if t == trigger} == TERMINAL_STATES
    assert {d for d, t in out if d not in TERMINAL_STATES} == {JobState.SEARCHING}


def test_terminal_states_are_entered_only_from_destroying_or_by_giving_back():
    """Only a success may skip destroying, and only by giving its instance back to the
    pool (warm instances): failed and cancelled are entered from destroying alone."""
    into = {(src, dest, t) for src, dest, t in edges() if dest in TERMINAL_STATES}
    skipping = {e for e in into if e[0] is not JobState.DESTROYING}
    assert skipping == {(JobState.DOWNLOADING, JobState.SUCCEEDED, "gave_back")}
    assert {dest for src, dest, _ in into if src is JobState.DESTROYING} == TERMINAL_STATES


def test_conditions_named_in_the_table_are_declared():
    named = set()
    for row in TRANSITIONS:
        cond = row.get("conditions")
        if cond:
            named.update([cond] if isinstance(cond, str) else cond)
    assert named == set(CONDITIONS)


class Model:
    """A job without ports: JobModel's own guards over the facts they read, and a list
    for a journal."""

    work_finished = JobModel.work_finished
    work_started = JobModel.work_started
    inputs_uploaded = JobModel.inputs_uploaded
    in_storage_mode = JobModel.in_storage_mode
    outputs_home = JobModel.outputs_home
    was_cancelled = JobModel.was_cancelled
    has_failed = JobModel.has_failed
    needs_an_instance = JobModel.needs_an_instance

    def __init__(self, journal: list, fail_journal: bool = False):
        self.journal = journal
        self.fail_journal = fail_journal
        self.progress = Progress.NOTHING
        self.failure: str | None = None
        self.cancel_requested = False
        self.storage = False

    def journal_transition(self, event):
        if self.fail_journal:
            raise OSError("disk full")
        self.journal.append((event.transition.source, event.transition.dest, event.event.name))


def machine() -> LockedMachine:
    return LockedMachine(model=None, send_event=True, before_state_change="journal_transition",
                         **machine_kwargs())


def test_happy_path_is_journaled_in_order():
    log: list = []
    m, job = machine(), Model(log)
    m.add_model(job)
    for trigger in ["offers_found", "rented", "booted", "uploaded", "completed", "downloaded",
                    "destroyed"]:
        getattr(job, trigger)()
    assert job.state is JobState.SUCCEEDED
    assert [d for _, d, _ in log] == ["RENTING", "BOOTING", "UPLOADING", "RUNNING",
                                      "DOWNLOADING", "DESTROYING", "SUCCEEDED"]


def test_storage_mode_skips_the_ssh_states_by_explicit_rows():
    """Storage mode: no upload, no download; the rest of the life is the same."""
    log: list = []
    m, job = machine(), Model(log)
    job.storage = True
    m.add_model(job)
    for trigger in ["offers_found", "rented", "booted", "completed", "destroyed"]:
        getattr(job, trigger)()
    assert job.state is JobState.SUCCEEDED
    assert [d for _, d, _ in log] == ["RENTING", "BOOTING", "RUNNING", "DESTROYING",
                                      "SUCCEEDED"]
    assert {"uploaded", "downloaded"}.isdisjoint(t for _, _, t in log)


def test_a_failed_journal_write_leaves_the_state_unchanged():
    """Write-ahead: if the transition cannot be journaled, it does not happen."""
    m, job = machine(), Model([], fail_journal=True)
    m.add_model(job, initial=JobState.BOOTING)
    with pytest.raises(OSError):
        job.booted()
    assert job.state is JobState.BOOTING


@pytest.mark.parametrize(("progress", "dest"), [
    (Progress.FINISHED, JobState.DOWNLOADING),
    (Progress.STARTED, JobState.RUNNING),
    (Progress.NOTHING, JobState.BOOTING),
])
def test_resume_enters_the_state_the_remote_job_is_in(progress, dest):
    m, job = machine(), Model([])
    job.progress = progress
    m.add_model(job)
    job.resume()
    assert job.state is dest


@pytest.mark.parametrize("trigger", ["destroyed", "destroy_unconfirmed"])
@pytest.mark.parametrize(("failure", "cancelled", "dest"), [
    (None, False, JobState.SUCCEEDED),
    ("boom", False, JobState.FAILED),
    (None, True, JobState.CANCELLED),
    ("boom", True, JobState.FAILED),
])
def test_leaving_destroying_ends_in_the_outcome_of_the_job(trigger, failure, cancelled, dest):
    """Confirmed gone or not, the job ends in its own outcome (a destroy not confirmed
    stays pending on the instance, not on the job)."""
    m, job = machine(), Model([])
    job.progress = Progress.HOME if failure is None else Progress.FINISHED
    job.failure, job.cancel_requested = failure, cancelled
    m.add_model(job, initial=JobState.DESTROYING)
    getattr(job, trigger)()
    assert job.state is dest


def test_only_a_job_whose_work_is_not_done_failed_or_cancelled_rents_again():
    m, job = machine(), Model([])
    job.progress = Progress.FINISHED  # outbid while downloading, never back
    m.add_model(job, initial=JobState.DESTROYING)
    assert job.needs_an_instance()
    job.rent_again()
    assert job.state is JobState.SEARCHING
    for done in ({"progress": Progress.HOME}, {"failure": "boom"}, {"cancel_requested": True}):
        other = Model([])
        other.__dict__.update(done)
        m.add_model(other, initial=JobState.DESTROYING)
        assert not other.rent_again()  # the guard refuses: it stays to be destroyed
        assert other.state is JobState.DESTROYING


def test_triggers_not_in_the_table_are_refused():
    from transitions.core import MachineError

    m, job = machine(), Model([])
    m.add_model(job, initial=JobState.SUCCEEDED)
    with pytest.raises(MachineError):
        job.fail()


def test_job_model_attributes_do_not_shadow_triggers():
    """transitions silently skips binding a trigger that a model attribute shadows."""
    from snakemake_executor_plugin_vastai.lifecycle.models import JobModel

    triggers = {row["trigger"] for row in TRANSITIONS}
    attributes = set(JobModel.__dataclass_fields__) | set(dir(JobModel))
    assert not triggers & attributes
