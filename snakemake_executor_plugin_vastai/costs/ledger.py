"""The cost ledger: what an instance costs, component by component, and the bytes it moved.

Vast.ai bills an instance for its time (``dph_total`` per hour), for the bytes
it moves (``inet_up_cost``/``inet_down_cost``, $/GB, per direction as the host
sees it) and for its disk while stopped. Each component is one entry of
:data:`COMPONENTS`: a name and a function of the journaled instance row, so a
new kind of charge is one line here, and ``journal cost``, the run summary and
``--vastai-max-spend`` all count it.

Directions: our *upload* is data the instance receives, billed at the offer's
``inet_down_cost``; our *download* (outputs, logs, command output) is data it
sends, billed at ``inet_up_cost``. Bytes are counted at the SSH channel payload
(what ``transports/ssh/`` sends and receives), per instance, by a :class:`ByteMeter`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

BYTES_PER_GB = 1024**3  # Vast.ai's $/GB (its CLI shows $/TB as the $/GB price x 1024)


@dataclass(frozen=True)
class Component:
    """One kind of charge: ``dollars(row, seconds)`` from an instance row and its billed
    seconds (see :func:`billed`)."""

    name: str
    dollars: Callable[[Mapping[str, Any], float], float]


def offer_prices(row: Mapping[str, Any]) -> dict[str, Any]:
    """The offer facts journaled with the instance (JSON), or {} if unreadable."""
    try:
        offer = json.loads(row.get("offer") or "{}")
    except (TypeError, ValueError):
        return {}
    return offer if isinstance(offer, dict) else {}


def _price(value: Any) -> float:
    try:
        return max(float(value or 0.0), 0.0)
    except (TypeError, ValueError):
        return 0.0


def stopped_seconds(row: Mapping[str, Any], seconds: float) -> float:
    """Of an instance's ``seconds`` billed so far, those it spent stopped by preemptions
    (bid instances, see bids.py): the journaled total plus a stop still going on, which
    runs to the end of the billed span (its start plus ``seconds``)."""
    stopped = float(row.get("stopped_seconds") or 0.0)
    since = row.get("stopped_since")
    if since is not None:
        start = row.get("started_at") if row.get("started_at") is not None \
            else row.get("created_at")
        end = float(start) + seconds if start is not None else float(since)
        stopped += max(0.0, end - float(since))
    return min(max(stopped, 0.0), seconds)


def compute_dollars(row: Mapping[str, Any], seconds: float) -> float:
    """The hourly price while the instance runs (a bid instance's ``dph_total`` is its bid
    plus storage; stopped time is billed by :func:`storage_dollars` instead)."""
    return (seconds - stopped_seconds(row, seconds)) / 3600.0 * _price(row.get("dph_total"))


def storage_dollars(row: Mapping[str, Any], seconds: float) -> float:
    """A stopped (outbid) instance keeps its disk and bills only its storage."""
    return stopped_seconds(row, seconds) / 3600.0 * _price(row.get("storage_dph"))


def bandwidth_dollars(row: Mapping[str, Any], _seconds: float) -> float:
    """Uploaded bytes at inet_down_cost plus downloaded bytes at inet_up_cost."""
    offer = offer_prices(row)
    uploaded = int(row.get("bytes_uploaded") or 0)
    downloaded = int(row.get("bytes_downloaded") or 0)
    return (uploaded * _price(offer.get("inet_down_cost"))
            + downloaded * _price(offer.get("inet_up_cost"))) / BYTES_PER_GB


COMPONENTS: list[Component] = [
    Component("compute", compute_dollars),
    Component("bandwidth", bandwidth_dollars),
    Component("storage", storage_dollars),
]


def components(row: Mapping[str, Any], seconds: float) -> dict[str, float]:
    """Dollars per component for one instance row."""
    return {c.name: c.dollars(row, seconds) for c in COMPONENTS}


def billed(row: Mapping[str, Any], now: float) -> tuple[float, float]:
    """An instance's billed (seconds, dollars) so far: from Vast.ai's ``start_date`` where
    known, else our create, to the accepted destroy, else the confirmed one, else ``now``
    (see ``instances`` in docs/journal-schema.md); every component counted."""
    if row.get("created_at") is None and row.get("started_at") is None:
        return 0.0, 0.0  # never created
    start = _first(row.get("started_at"), row.get("created_at"))
    end = _first(row.get("destroy_accepted_at"), row.get("destroyed_at"), now)
    seconds = max(0.0, float(end) - float(start))
    return seconds, sum(components(row, seconds).values())


def dollars_at(dph: Any, seconds: float) -> float:
    """``seconds`` at ``dph`` $/h (a price the journal or the market gave; bad values: 0)."""
    return max(seconds, 0.0) / 3600.0 * _price(dph)


def _first(*values: Any) -> Any:
    return next(v for v in values if v is not None)


class ByteMeter:
    """Bytes one instance's SSH channels moved, for the ledger and for progress.

    ``take()`` hands out what was counted since the last call (the journal adds
    deltas, so a reconnect or a second job on the same instance just adds on).
    ``listener``, when set, sees every count as it happens (see progress.py).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.uploaded = 0
        self.downloaded = 0
        self._taken = (0, 0)
        self.listener: Callable[[int, int], None] | None = None

    def sent(self, n: int) -> None:
        self._count(n, 0)

    def received(self, n: int) -> None:
        self._count(0, n)

    def _count(self, up: int, down: int) -> None:
        if up <= 0 and down <= 0:
            return
        with self._lock:
            self.uploaded += up
            self.downloaded += down
        listener = self.listener
        if listener is not None:
            listener(up, down)

    def take(self) -> tuple[int, int]:
        """(uploaded, downloaded) since the previous take."""
        with self._lock:
            now = (self.uploaded, self.downloaded)
            before, self._taken = self._taken, now
        return now[0] - before[0], now[1] - before[1]

    def untake(self, uploaded: int, downloaded: int) -> None:
        """Hand a take back (its journal write failed): the next take includes it again."""
        with self._lock:
            self._taken = (self._taken[0] - uploaded, self._taken[1] - downloaded)
