"""The life cycle of one rented Vast.ai instance, as data (beside the job's in machine.py).

With warm instances (``pool.py``) an instance outlives the job that rented it:
it is given back to the run's pool when its job succeeds and leased by the next
job whose needs it meets. Its life is therefore its own, and this table is it.
No I/O here: ``instance_life.py`` runs this table on a ``transitions`` machine
whose write-ahead hook commits every move to the journal (a guarded update plus
an append-only row in ``instance_transitions``) *before* the side effect of the
state it enters, as for jobs. Reading the table top to bottom is reading an instance's life::

    renting -> booting -> leased <-> idle -> destroying -> gone
                                     idle <-> kept (past the run's end, --vastai-keep-warm)

- ``renting``: the label is journaled, the create call may be in flight.
- ``booting``: Vast.ai answered with an id; the renting job waits for SSH.
- ``leased``: one job (``leased_by``) uses it; first the job that rented it.
- ``idle``: its last job succeeded and its outputs are home; it waits up to
  ``--vastai-idle-timeout`` seconds for the next job (``idle_since``).
- ``kept``: idle when its run ended, left alive for ``--vastai-keep-warm`` seconds for
  the next run of the workflow, which adopts it (back to ``idle``, in its pool); its
  watchdog destroys it when the window closes with no run to feed it.
- ``destroying``: the one teardown (``teardown.py``) was asked to end it.
- ``gone``: Vast.ai no longer lists it (or the create never rented anything).

A job that fails or is cancelled never gives its instance back: ``fail`` leads
from every state that holds an instance into ``destroying``, so a broken host
never serves a second job.
"""

from __future__ import annotations

from enum import StrEnum


class InstanceState(StrEnum):
    """Where a rented instance is in its life."""

    RENTING = "renting"
    BOOTING = "booting"
    LEASED = "leased"
    IDLE = "idle"
    KEPT = "kept"
    DESTROYING = "destroying"
    GONE = "gone"

    @property
    def is_terminal(self) -> bool:
        return self is InstanceState.GONE


I = InstanceState  # noqa: E741 - the table reads better with a one-letter alias
HOLDING = [I.RENTING, I.BOOTING, I.LEASED, I.IDLE, I.KEPT]

# One dict per transition, in the order an instance meets them (``transitions``'
# format, so the chart is drawn by the same code as the job's).
TRANSITIONS: list[dict] = [
    # renting: the create call answered with an id (or a lookup by label found it)
    {"trigger": "created", "source": I.RENTING, "dest": I.BOOTING},
    # booting: running and answering SSH; the job that rented it holds it
    {"trigger": "booted", "source": I.BOOTING, "dest": I.LEASED},
    # leased: its job succeeded and brought its outputs home; it serves the next one
    {"trigger": "given_back", "source": I.LEASED, "dest": I.IDLE},
    # idle: a job whose needs it meets takes it (skips searching, renting, booting)
    {"trigger": "leased", "source": I.IDLE, "dest": I.LEASED},
    # idle too long (--vastai-idle-timeout), the run ends, Ctrl-C, a failed run
    {"trigger": "expired", "source": I.IDLE, "dest": I.DESTROYING},
    # the run ended with --vastai-keep-warm: it waits for the next run (its watchdog
    # ends it when the window closes); the next run's reconcile adopts it into its pool
    {"trigger": "kept_warm", "source": I.IDLE, "dest": I.KEPT},
    {"trigger": "adopted", "source": I.KEPT, "dest": I.IDLE},
    # its job failed or was cancelled, or a teardown not driven by a job (recovery)
    {"trigger": "fail", "source": HOLDING, "dest": I.DESTROYING},
    # destroying: the one teardown confirms it gone
    {"trigger": "destroyed", "source": I.DESTROYING, "dest": I.GONE},
    # a create that never rented anything (the label is not listed)
    {"trigger": "never_created", "source": I.RENTING, "dest": I.GONE},
]


def machine_kwargs() -> dict:
    """Arguments for a ``transitions`` machine drawn from this table (the statechart)."""
    return {
        "states": InstanceState,
        "transitions": TRANSITIONS,
        "initial": I.RENTING,
        "auto_transitions": False,
        "ignore_invalid_triggers": False,
    }
