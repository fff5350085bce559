"""The life cycle of one Snakemake job on Vast.ai, as data.

This module holds no I/O. It names the job states and the transitions between
them; ``driver.py`` performs each state's side effect and then fires the
trigger this table allows. Every transition is journaled (in the machine's
``before_state_change`` hook, see ``driver.py``) *before* the side effect of
the state it enters, so a crash at any point leaves a journal that says what
may have happened.

Reading the table, top to bottom, is reading a job's life::

    searching -> renting -> booting -> uploading -> running -> downloading
              -> destroying -> succeeded | failed | cancelled

A job that finds no offer free (every match rented, by others or by this run's own
jobs) goes to ``waiting`` rather than failing: it searches again at a pace the API's
rate limits allow, sooner when one of the run's instances comes free, and fails only
after ``--vastai-offer-wait`` seconds (``driver.py``).

An interruptible (bid) instance that is outbid is stopped by Vast.ai, not destroyed
(``bids.py``): its job moves to ``preempted`` and, when the instance runs again within
``--vastai-preemption-grace``, back to ``booting`` on the same instance (its uploaded files
are still there); past the grace the job abandons it (``abandon``): ``destroying`` tears it down and
the job, whose work is neither home, failed nor cancelled, searches again
(``rent_again``).

How far the job's own work got on its instance is one typed field, not a handful of
flags: :class:`Progress` (``JobModel.progress``). The guards of ``resume`` and
``booted`` read it (a job re-attached or booted again goes on where its work got),
and only a job whose outputs are home (``outputs_home``) succeeds by giving its
instance back.

In storage mode (see ``storage.py``) the data moves through a bucket, so two
explicit rows skip the SSH states: booting -> running and running -> destroying.

With warm instances (``pool.py``, SSH mode) two more rows: ``leased`` takes an
idle instance of the run's pool (searching -> uploading: no renting, no
booting), and ``gave_back`` returns a healthy instance to the pool once the
job's outputs are home (downloading -> succeeded: nothing destroyed). The
instance's own life is in ``instance_machine.py``. A failed job's instance is
never given back: failure still leads through ``destroying``.

Every failure and every cancel goes through ``destroying``, and ``destroying``
is the one state that tears the job's instance down. Every path ends in a
terminal state: a destroy that Vast.ai does not confirm within the teardown wait
ends the job all the same (``destroy_unconfirmed``), while the instance stays
pending in the journal (its own machine keeps it ``destroying``) and the run asks
once more at its end; the run exits non-zero if it is still not gone.

How Vast.ai's ``actual_status`` of the job's instance maps onto these states
(the instance's facts are kept apart from the job's, in the journal's
``instances`` table):

- ``None``/``created``/``loading``: the job is ``booting``.
- ``running``: booting ends once SSH answers too; the job then uploads/runs.
- ``stopped`` on an outbid bid instance (``bids.is_outbid``), in any state that holds an
  instance: ``preempted``.
- ``exited``/``stopped``/``frozen`` while booting: fail fast (``fail``), so
  Snakemake's ``--retries`` resubmits the job on another machine.
- ``offline``/``unknown`` (lost host heartbeat): tolerated for a bounded grace
  period while booting or running, then ``fail``.
- ``rebooting``: treated like booting.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """Where a job is in its life on Vast.ai."""

    SEARCHING = "searching"
    WAITING = "waiting"  # no matching offer free: wait for one (nothing rented)
    RENTING = "renting"
    BOOTING = "booting"
    UPLOADING = "uploading"
    RUNNING = "running"
    DOWNLOADING = "downloading"
    DESTROYING = "destroying"
    PREEMPTED = "preempted"  # its bid instance was outbid: stopped, disk kept (bids.py)
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """True once nothing more will happen to the job (a destroy it asked for and
        Vast.ai did not confirm stays pending on the instance, see the module docstring)."""
        return self in TERMINAL_STATES

    @property
    def may_hold_instance(self) -> bool:
        """True in the states where an instance may exist for this job."""
        return self in HOLDING_STATES


class Progress(StrEnum):
    """How far the job's own work got on the instance it holds, in order.

    The one sub-state the guards read (``JobModel.progress``), what a job that boots
    again or re-attaches needs to know beside its state; it is not journaled: a job
    re-attached after a crash learns it from its instance (``resume``).
    """

    NOTHING = "nothing"  # nothing of the job on an instance yet: boot, then upload
    UPLOADED = "uploaded"  # its inputs are on the instance's disk: launch it
    STARTED = "started"  # a re-attach found its process launched: follow it, no launch
    FINISHED = "finished"  # it ended (exit_code known): bring its outputs and logs home
    HOME = "home"  # it exited 0 and every output is home (downloaded, or in the bucket)


S = JobState
TERMINAL_STATES = frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED})
HOLDING_STATES = frozenset({S.RENTING, S.BOOTING, S.UPLOADING, S.RUNNING, S.DOWNLOADING,
                            S.DESTROYING, S.PREEMPTED})
ACTIVE_STATES = [s for s in JobState if s not in TERMINAL_STATES]
BEFORE_DESTROYING = [s for s in ACTIVE_STATES if s is not S.DESTROYING]

# One dict per transition, in the order a job meets them. ``conditions`` name
# predicates on the job model (see models.JobModel); where several rows share
# a trigger and source, the first whose conditions hold wins.
TRANSITIONS: list[dict] = [
    # searching: ask the marketplace for offers matching the job's resources
    {"trigger": "offers_found", "source": S.SEARCHING, "dest": S.RENTING},
    # waiting: no matching offer is free; search again later (or lease an instance of
    # the run that came free), fail only past --vastai-offer-wait
    {"trigger": "no_offer_free", "source": [S.SEARCHING, S.RENTING], "dest": S.WAITING},
    {"trigger": "search_again", "source": S.WAITING, "dest": S.SEARCHING},
    # renting: create an instance from the cheapest unclaimed candidate
    {"trigger": "offer_taken", "source": S.RENTING, "dest": S.RENTING},
    {"trigger": "rented", "source": S.RENTING, "dest": S.BOOTING},
    # resume: a job re-attached to an instance that an earlier run rented
    {"trigger": "resume", "source": S.SEARCHING, "dest": S.DOWNLOADING,
     "conditions": "work_finished"},
    {"trigger": "resume", "source": S.SEARCHING, "dest": S.RUNNING,
     "conditions": "work_started"},
    {"trigger": "resume", "source": S.SEARCHING, "dest": S.BOOTING},
    # warm instances: an idle instance of this run's pool meets the job's needs
    {"trigger": "leased", "source": S.SEARCHING, "dest": S.UPLOADING},
    # booting: wait for actual_status running and an SSH answer, then go on where the
    # job's work got (an instance booted again after a preemption still holds it); in
    # storage mode the container starts the job itself and nothing is uploaded
    {"trigger": "booted", "source": S.BOOTING, "dest": S.DOWNLOADING,
     "conditions": "work_finished"},
    {"trigger": "booted", "source": S.BOOTING, "dest": S.RUNNING,
     "conditions": "inputs_uploaded"},
    {"trigger": "booted", "source": S.BOOTING, "dest": S.RUNNING,
     "conditions": "in_storage_mode"},
    {"trigger": "booted", "source": S.BOOTING, "dest": S.UPLOADING},
    # uploading: sources and declared inputs; transient SSH drops retry in place (also
    # while re-attaching to an earlier run's instance, still in searching)
    {"trigger": "retry", "source": [S.SEARCHING, S.BOOTING, S.UPLOADING, S.RUNNING,
                                    S.DOWNLOADING], "dest": "="},
    {"trigger": "uploaded", "source": S.UPLOADING, "dest": S.RUNNING},
    # running: the job runs detached; its end is seen over SSH (storage mode: in
    # the instance status and log; its outputs are in the bucket, none to download)
    {"trigger": "completed", "source": S.RUNNING, "dest": S.DESTROYING,
     "conditions": "in_storage_mode"},
    {"trigger": "completed", "source": S.RUNNING, "dest": S.DOWNLOADING},
    # downloading: declared outputs and logs come home
    {"trigger": "downloaded", "source": S.DOWNLOADING, "dest": S.DESTROYING},
    # warm instances: the job succeeded, its outputs are home; its instance serves the next
    {"trigger": "gave_back", "source": S.DOWNLOADING, "dest": S.SUCCEEDED,
     "conditions": "outputs_home"},
    # preemption (bids.py): an outbid bid instance is stopped with its disk kept; the job
    # waits up to --vastai-preemption-grace for it to run again (then boots it again),
    # past the grace abandons it (destroying), and rents anew once it is gone
    {"trigger": "preempted", "source": [S.BOOTING, S.UPLOADING, S.RUNNING, S.DOWNLOADING],
     "dest": S.PREEMPTED},
    {"trigger": "resumed", "source": S.PREEMPTED, "dest": S.BOOTING},
    {"trigger": "abandon", "source": S.PREEMPTED, "dest": S.DESTROYING},
    # failure and cancel, from anywhere before destroying
    {"trigger": "fail", "source": BEFORE_DESTROYING, "dest": S.DESTROYING},
    {"trigger": "cancel", "source": BEFORE_DESTROYING, "dest": S.DESTROYING},
    # destroying: the job's one teardown, retried until the API confirms the instance
    # gone; then the job ends in its outcome, or (its instance lost before its work came
    # home) rents anew. Not confirmed within the teardown wait: the job ends all the
    # same; the instance stays pending and the run asks once more at its end.
    {"trigger": "destroy_retry", "source": S.DESTROYING, "dest": "="},
    {"trigger": "rent_again", "source": S.DESTROYING, "dest": S.SEARCHING,
     "conditions": "needs_an_instance"},
    {"trigger": "destroyed", "source": S.DESTROYING, "dest": S.CANCELLED,
     "conditions": "was_cancelled"},
    {"trigger": "destroyed", "source": S.DESTROYING, "dest": S.FAILED,
     "conditions": "has_failed"},
    {"trigger": "destroyed", "source": S.DESTROYING, "dest": S.SUCCEEDED},
    {"trigger": "destroy_unconfirmed", "source": S.DESTROYING, "dest": S.CANCELLED,
     "conditions": "was_cancelled"},
    {"trigger": "destroy_unconfirmed", "source": S.DESTROYING, "dest": S.FAILED,
     "conditions": "has_failed"},
    {"trigger": "destroy_unconfirmed", "source": S.DESTROYING, "dest": S.SUCCEEDED},
]

CONDITIONS = ("work_finished", "work_started", "inputs_uploaded", "in_storage_mode",
              "outputs_home", "needs_an_instance", "was_cancelled", "has_failed")


def machine_kwargs() -> dict:
    """Arguments shared by every ``transitions`` machine built from this table."""
    return {
        "states": JobState,
        "transitions": TRANSITIONS,
        "initial": S.SEARCHING,
        "auto_transitions": False,
        "ignore_invalid_triggers": False,
    }
