"""An instance's life run on a ``transitions`` machine drawn from instance_machine.py's table.

The job's life has had a machine from the start; the instance's was a hand-written lookup,
and five of its moves happened inside the journal's ``record_*`` methods, where no chart
showed them. Here every move of an instance goes through one machine with the same
write-ahead hook as the job's: ``before_state_change`` commits the move to the journal (a
guarded compare-and-set on the row's state plus an append-only ``instance_transitions``
row) before anything acts on the new state. The journal only stores what the machine
decided; it does not know the table.

An instance row is shared by threads and processes (a warm instance is leased by whichever
job asks first), so the machine holds no long-lived model: each move loads the row's state,
fires the trigger on a throw-away model, and the journal's guard refuses the move
(``StaleTransition``) if another thread or process moved the row meanwhile.

The facts that come with a move (the destroy's intent, its confirmation, the id a create
answered with) are written by the caller's journal call right before the move; the
functions below (``created``, ``destroy_requested``, ``destroyed``) pair the two so that a
caller names what happened, not which trigger of the table it means.
"""

from __future__ import annotations

from typing import Any, Protocol

from transitions import MachineError
from transitions.extensions import LockedMachine

from ..journal.errors import StaleTransition, UnknownInstance
from .instance_machine import HOLDING, InstanceState, machine_kwargs

HOLDING_VALUES = frozenset(s.value for s in HOLDING)
RACE_RETRIES = 3  # a move that lost a race is re-read and tried again this often


class InstanceJournal(Protocol):
    """What the machine needs of the journal (journal/instances.py implements it)."""

    def instance_row(self, *, label: str | None = None,
                     instance_id: int | None = None) -> dict | None: ...

    def move_instance(self, label: str, *, source: str, dest: str, trigger: str,
                      job_id: str | None = None, detail: Any = None,
                      stamps: tuple[str, ...] = (), at: float | None = None,
                      **columns: Any) -> None: ...

    def record_instance_created(self, label: str, instance_id: int, **facts: Any) -> None: ...

    def record_destroy_requested(self, *, label: str | None = None,
                                 instance_id: int | None = None) -> None: ...

    def record_instance_destroyed(self, *, label: str | None = None,
                                  instance_id: int | None = None,
                                  at: float | None = None) -> None: ...


class InstanceLife:
    """The model of one move: an instance row at the state the journal last said."""

    state: InstanceState

    def __init__(self, journal: InstanceJournal, label: str, job_id: str | None) -> None:
        self.journal = journal
        self.label = label
        self.job_id = job_id

    def journal_transition(self, event: Any) -> None:
        """Write-ahead: the journal's guarded update, before the new state is entered."""
        kwargs = dict(event.kwargs)
        self.journal.move_instance(
            self.label, source=InstanceState[event.transition.source].value,
            dest=InstanceState[event.transition.dest].value, trigger=event.event.name,
            job_id=self.job_id, detail=kwargs.pop("detail", None),
            stamps=kwargs.pop("stamps", ()), at=kwargs.pop("at", None), **kwargs)


MACHINE = LockedMachine(model=None, send_event=True, before_state_change="journal_transition",
                        **{k: v for k, v in machine_kwargs().items() if k != "initial"})


def fire(journal: InstanceJournal, label: str, trigger: str, *, job_id: str | None = None,
         **kwargs: Any) -> InstanceState:
    """Move instance ``label`` by ``trigger`` from the state the journal holds; the new state.

    StaleTransition (nothing changed) if the table has no such move from that state or
    another thread or process moved the row first; UnknownInstance if there is no row.
    ``kwargs``: ``detail``, ``stamps`` (columns set to the journal's clock unless already
    set), ``at``, and the columns a move may set (``leased_by``, ``idle_since``, ``served``).
    """
    row = journal.instance_row(label=label)
    if row is None:
        raise UnknownInstance(f"instance {label} is not in journal {_path(journal)}",
                              _path(journal))
    return _fire_at(journal, row, trigger, job_id=job_id, **kwargs)


def _fire_at(journal: InstanceJournal, row: dict, trigger: str, *, job_id: str | None = None,
             **kwargs: Any) -> InstanceState:
    source = row.get("state")
    if source is None:  # a row older than instance states: it has no life to move
        raise StaleTransition(f"instance {row['label']} has no life-cycle state in journal "
                              f"{_path(journal)}", _path(journal),
                              job_id=job_id or "", expected=(), actual=None)
    life = InstanceLife(journal, row["label"], job_id)
    MACHINE.add_model(life, initial=InstanceState(source))
    try:
        life.trigger(trigger, **kwargs)  # type: ignore[attr-defined]
        return life.state
    except MachineError as exc:
        raise StaleTransition(f"instance {row['label']}: no move {trigger!r} from {source!r}"
                              f" ({exc.value}; journal {_path(journal)})", _path(journal),
                              job_id=job_id or "", expected=(),
                              actual=source) from None
    finally:
        MACHINE.remove_model(life)


def _path(journal: InstanceJournal) -> Any:
    return getattr(journal, "path", None)


def lease(journal: InstanceJournal, label: str, job_id: str, detail: str | None = None) -> bool:
    """idle -> leased by ``job_id``; False when another job or the idle reaper was first (the
    journal's guard), so two threads or processes never lease one instance."""
    row = journal.instance_row(label=label)
    if row is None or row.get("state") != InstanceState.IDLE.value \
            or row.get("destroy_requested_at") is not None:
        return False
    try:
        _fire_at(journal, row, "leased", job_id=job_id, detail=detail, leased_by=job_id,
                 idle_since=None, served=int(row.get("served") or 0) + 1)
    except StaleTransition:
        return False
    return True


def created(journal: InstanceJournal, label: str, instance_id: int, **facts: Any) -> None:
    """The create answered (or a lookup by label found it): its id, then renting -> booting."""
    journal.record_instance_created(label, instance_id, **facts)
    _move_each(journal, {"label": label}, lambda row: [("created", {
        "detail": {"instance": instance_id}})] if row.get("state") == "renting" else [])


def destroy_requested(journal: InstanceJournal, *, label: str | None = None,
                      instance_id: int | None = None) -> None:
    """Write-ahead for the destroy call: a holding instance moves to destroying (the intent's
    time in the same transaction); a stray, an older row or one already destroying only
    gets the intent's time."""
    def moves(row: dict) -> list[tuple[str, dict]]:
        if row.get("state") not in HOLDING_VALUES:
            return []
        trigger = "expired" if row["state"] == InstanceState.IDLE.value else "fail"
        return [(trigger, {"stamps": ("destroy_requested_at",)})]

    if not _move_each(journal, {"label": label, "instance_id": instance_id}, moves):
        journal.record_destroy_requested(label=label, instance_id=instance_id)


def destroyed(journal: InstanceJournal, *, label: str | None = None,
              instance_id: int | None = None, at: float | None = None) -> None:
    """Known gone (or, for a label never created, never existed). An instance that vanished
    on its own passes through destroying, so its history reads as the table allows."""
    gone = {"stamps": ("destroyed_at",), "at": at}

    def moves(row: dict) -> list[tuple[str, dict]]:
        state = row.get("state")
        if state == InstanceState.RENTING.value and row.get("instance_id") is None:
            return [("never_created", gone)]
        if state in HOLDING_VALUES:
            return [("fail", {"detail": "not listed any more"}), ("destroyed", gone)]
        if state == InstanceState.DESTROYING.value:
            return [("destroyed", gone)]
        return []

    if not _move_each(journal, {"label": label, "instance_id": instance_id}, moves):
        journal.record_instance_destroyed(label=label, instance_id=instance_id, at=at)


def _move_each(journal: InstanceJournal, where: dict, plan: Any) -> bool:
    """Fire the moves ``plan(row)`` names for the row ``where`` finds, re-reading the row
    when a move lost a race; False when there was nothing to move (no row, or no move)."""
    for _ in range(RACE_RETRIES):
        row = journal.instance_row(**where)
        steps = plan(row) if row is not None else []
        if not steps:
            return False
        try:
            for trigger, kwargs in steps:
                _fire_at(journal, row, trigger, **kwargs)
                row = journal.instance_row(label=row["label"]) or row
            return True
        except StaleTransition:
            continue
    return False
