"""The one teardown: journal the intent, request the destroy, confirm it gone, journal that.

Every path that ends an instance uses it: a job's ``destroying`` step, the
reconcile at start, the end-of-run sweep, Ctrl-C/SIGTERM/atexit (through the
jobs' own destroying step) and ``journal cleanup``. So they share one set of
guarantees:

- the intent (``destroy_requested_at``) is journaled before the request, so a
  crash in between leaves unfinished work the next run finishes;
- a destroy whose answer was lost is simply asked again: Vast.ai answers an
  instance that is already gone with 404, which counts as gone;
- "gone" is only believed once the API says so, never because a request was
  accepted: its row is null, or its show answers a JSON 404 naming the instance
  missing, or its row's status says it is going or gone (:data:`GONE_STATES` in any
  of ``actual_status``, ``intended_status``, ``cur_state``, ``next_state``). A
  transient answer (5xx, 429, a timeout, a garbled body) never confirms anything;
- journal writes are best effort: a locked or full journal must not stop an
  instance from being destroyed (the failure is logged and counted);
- destroy requests that meet while one is in flight go out together in one
  bulk request (``vastai destroy instances``, which Vast.ai's description does not
  list), so cancelling 200 jobs under a per-endpoint rate limit costs a handful of
  requests, not 200; a lone destroy goes out at once, alone. The bulk request is
  only ever a shortcut: each id is confirmed gone on its own, an id not confirmed
  after a bulk request is asked again alone, and once the bulk endpoint refuses
  outright every destroy goes out singly;
- it never gives up silently: when the caller stops waiting (``give_up``) the
  instance stays journaled as pending and is listed in :attr:`Teardown.pending`,
  which the run turns into a non-zero exit naming the ids and the command that
  finishes the job (:func:`cleanup_command`: ``snakemake-vastai journal cleanup``, spelled
  by ``commands.py`` so that it runs as printed).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from ..journal.store import Journal, JournalError
from ..lifecycle import instance_life
from ..lifecycle.outcomes import crash_point
from ..vastai.api import VastAPI, VastAuthError, VastError, VastUnavailable
from .backoff import Backoff
from .commands import own_command

BACKOFF_START = 1.0
BACKOFF_MAX = 60.0
REQUEST_BUDGET = 30.0  # seconds of API retries per destroy request before looking up
# Statuses that say an instance is being destroyed or is gone (the description documents
# none for this; these are the words a state machine of the service would use).
GONE_STATES = frozenset({"destroyed", "destroying", "deleted", "deleting", "gone"})
STATUS_FIELDS = ("actual_status", "intended_status", "cur_state", "next_state")


def cleanup_command() -> str:
    """``snakemake-vastai journal cleanup``, as this machine runs it (``commands.py``)."""
    return f"{own_command()} journal cleanup"


def says_gone(row: dict | None) -> bool:
    """Whether a show answer confirms the instance gone (see the module docstring)."""
    if row is None:
        return True
    return any(str(row.get(name) or "").lower() in GONE_STATES for name in STATUS_FIELDS)


class Teardown:
    """Destroys instances for one process, with the guarantees in the module docstring."""

    def __init__(self, api: VastAPI, journal: Journal | None, log: Any, *,
                 sleep: Callable[[float], None] | None = None) -> None:
        self.api = api
        self.journal = journal
        self.log = log
        self.give_up = threading.Event()  # set when the caller stops waiting
        self.pending: dict[int, str] = {}  # instance id -> label, not confirmed gone
        self.pending_labels: set[str] = set()  # creates in doubt whose lookup kept failing
        self.journal_failures = 0
        self._lock = threading.Lock()
        self._sleep = sleep or self.give_up.wait
        self._requests = DestroyRequests(api)

    # -- the teardown ---------------------------------------------------------------------
    def destroy(self, instance_id: int, *, label: str | None = None,
                on_retry: Callable[[str], None] | None = None,
                deadline: float | None = None) -> bool:
        """Destroy and confirm; True once the API no longer knows the instance.

        Retries with backoff until confirmed, ``deadline`` (monotonic) passes or
        :attr:`give_up` is set; then the instance is recorded as pending.
        """
        with self._lock:
            self.pending[instance_id] = label or ""
        self._journal("destroy intent", lambda j: instance_life.destroy_requested(
            j, instance_id=instance_id))
        backoff = Backoff(start=BACKOFF_START, cap=BACKOFF_MAX)
        alone = False  # a retry goes out alone: a bulk request may not have covered it
        while True:
            budget = self._budget(deadline)
            try:
                self._requests.request(instance_id, budget, alone=alone)
                self._journal("destroy accepted",
                              lambda j: j.record_destroy_accepted(instance_id))
                crash_point("after_destroy_request")
                gone = says_gone(self.api.show_instance(instance_id, budget=budget))
                reason = "still listed after the destroy request"
            except VastAuthError as exc:  # waiting will not heal a refused key
                self.log.error("instance not destroyed: the API key was refused; it may "
                               "still bill", instance=instance_id, label=label, error=str(exc),
                               command=cleanup_command())
                return False
            except Exception as exc:  # VastError, or an answer nobody could parse
                gone, reason = False, f"{type(exc).__name__}: {exc}"
            if gone:
                self._journal("destroyed", lambda j: instance_life.destroyed(
                    j, instance_id=instance_id))
                with self._lock:
                    self.pending.pop(instance_id, None)
                return True
            if self.give_up.is_set() or (deadline is not None and time.monotonic() > deadline):
                self.log.error("instance not confirmed destroyed; it may still bill",
                               instance=instance_id, label=label, error=reason,
                               command=cleanup_command())
                return False
            if on_retry is not None:
                on_retry(reason)
            alone = True
            self._sleep(backoff.delay())

    def destroy_label(self, label: str, *, on_retry: Callable[[str], None] | None = None,
                      deadline: float | None = None) -> list[int]:
        """Destroy every instance carrying ``label`` (a create that may have rented although
        its id never came back); the ids destroyed. A failing lookup is retried: "not
        listed" is only believed from an answer."""
        backoff = Backoff(start=BACKOFF_START, cap=BACKOFF_MAX)
        while True:
            try:
                rows = self.api.find_all_by_label(label)
                break
            except Exception as exc:  # VastError, or an answer nobody could parse
                if self.give_up.is_set() or isinstance(exc, VastAuthError) or (
                        deadline is not None and time.monotonic() > deadline):
                    self.log.error("cannot look the instance up by its label; it may bill",
                                   label=label, error=str(exc), command=cleanup_command())
                    with self._lock:
                        self.pending_labels.add(label)
                    return []
                if on_retry is not None:
                    on_retry(str(exc))
                self._sleep(backoff.delay())
        destroyed = []
        for row in rows:
            iid = int(row["id"])
            self._journal("adopt", lambda j, iid=iid, row=row: self._own(j, label, iid, row))
            if self.destroy(iid, label=label, on_retry=on_retry, deadline=deadline):
                destroyed.append(iid)
        if not rows:
            self._journal("never created", lambda j: instance_life.destroyed(j, label=label))
        return destroyed

    def destroy_stray(self, listed: dict, reason: str, deadline: float | None = None) -> bool:
        """A listed instance of this workflow that no journal row owns: journal it, destroy."""
        iid = int(listed["id"])
        self.log.warning("destroying an instance of this workflow that no job owns",
                         instance=iid, label=listed.get("label"), reason=reason)
        self._journal("stray", lambda j: j.record_stray(
            iid, label=listed.get("label"), reason=reason, dph_total=listed.get("dph_total")))
        return self.destroy(iid, label=listed.get("label"), deadline=deadline)

    # -- helpers ------------------------------------------------------------------------
    @staticmethod
    def _budget(deadline: float | None) -> float:
        """One request's retry budget: short, so the deadline and give_up are seen."""
        if deadline is None:
            return REQUEST_BUDGET
        return max(min(REQUEST_BUDGET, deadline - time.monotonic()), 1.0)

    @staticmethod
    def _own(journal: Journal, label: str, iid: int, row: dict) -> None:
        """The first instance found for a label becomes its row's; any other is a stray."""
        try:
            instance_life.created(journal, label, iid)
        except JournalError:
            journal.record_stray(iid, label=label, reason=f"a second instance with label {label}",
                                 dph_total=row.get("dph_total"))

    def _journal(self, what: str, write: Callable[[Journal], Any]) -> None:
        """Best effort: a journal that cannot be written must not keep an instance alive."""
        if self.journal is None:
            return
        try:
            write(self.journal)
        except Exception as exc:  # JournalError, sqlite errors, a full disk
            self.journal_failures += 1
            self.log.warning("journal write failed during teardown; destroying anyway",
                             step=what, error=f"{type(exc).__name__}: {exc}")

    def pending_ids(self) -> list[int]:
        with self._lock:
            return sorted(self.pending)

    def pending_message(self) -> str | None:
        """The user-facing sentence for a run that ends with instances not confirmed gone."""
        with self._lock:
            ids = sorted(self.pending)
            labels = sorted(self.pending_labels)
        if not ids and not labels:
            return None
        what = ", ".join(str(i) for i in ids) or "none known by id"
        extra = f" (and creates in doubt for labels {', '.join(labels)})" if labels else ""
        todo = (f"Run '{cleanup_command()}' in this directory (or snakemake again) to finish")
        if self.api.key_refused.is_set():
            todo = ("Vast.ai refused the API key, so they could not be destroyed: set a valid "
                    f"key (--vastai-api-key / VAST_API_KEY), then run '{cleanup_command()}' in "
                    "this directory")
        return (f"Vast.ai did not confirm instance(s) {what}{extra} destroyed; they may still "
                f"bill. The journal keeps them as pending. {todo}, and check "
                "https://console.vast.ai/instances/")


class DestroyRequests:
    """Destroy requests, batched only when they meet: while one request is in flight,
    the ones that arrive wait and then go out together in one bulk request."""

    def __init__(self, api: VastAPI) -> None:
        self._api = api
        self._cond = threading.Condition()
        self._waiting: set[int] = set()
        self._results: dict[int, BaseException | None] = {}
        self._in_flight = False
        self._bulk = True  # off for good once the bulk endpoint refuses outright

    def request(self, instance_id: int, budget: float, *, alone: bool = False) -> None:
        """Return once the API accepted a destroy covering ``instance_id``; raise its error.
        ``alone``: a single destroy for this id, whatever else is waiting."""
        if alone:
            self._api.destroy_instance(instance_id, budget=budget)
            return
        with self._cond:
            self._waiting.add(instance_id)
            while instance_id not in self._results and self._in_flight:
                self._cond.wait()
            ids = None
            if instance_id not in self._results:  # nothing in flight: this call sends
                ids, self._waiting = sorted(self._waiting), set()
                self._in_flight = True
        if ids is not None:
            outcome = self._send(ids, budget)
            with self._cond:
                self._results.update(dict.fromkeys(ids, outcome))
                self._in_flight = False
                self._cond.notify_all()
        with self._cond:
            outcome = self._results.pop(instance_id, None)
        if outcome is not None:
            raise outcome

    def _send(self, ids: list[int], budget: float) -> BaseException | None:
        try:
            if len(ids) == 1 or not self._bulk:
                errors = []
                for iid in ids:
                    try:
                        self._api.destroy_instance(iid, budget=budget)
                    except Exception as exc:  # one id's error is everyone's retry
                        errors.append(exc)
                return errors[0] if errors else None
            self._api.destroy_instances(ids, budget=budget)
        except VastUnavailable as exc:
            return exc
        except VastError as exc:  # the bulk endpoint refused outright: singles from now
            self._bulk = False
            return exc
        except Exception as exc:
            return exc
        return None
