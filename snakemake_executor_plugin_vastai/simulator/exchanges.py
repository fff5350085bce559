"""A record of what crossed the simulator's REST API, byte for byte, for contract tests.

The simulator is our edge: whatever the plugin (through the official SDK) sends and
whatever the simulator answers passes its HTTP layer. Recording it there, rather than
inside our adapter, lets a test hold both sides to Vast.ai's published API description
without trusting either side's own idea of what it sent. Off by default
(``SimConfig(record_exchanges=True)``); the API key never enters the record: the
``Authorization`` header is kept only as ``Bearer <redacted>``, so a test can still see
that a key was presented.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

REDACTED = "Bearer <redacted>"


@dataclass(frozen=True)
class Exchange:
    """One request to ``/api/...`` and the answer it got."""

    method: str
    target: str  # path with its query string, as sent
    request_headers: dict[str, str]
    request_body: bytes
    status: int
    content_type: str
    response_body: bytes


def redacted_headers(headers: dict[str, str]) -> dict[str, str]:
    """The request headers with any credential replaced by a marker."""
    out = {}
    for name, value in headers.items():
        if name.lower() == "authorization":
            out[name] = REDACTED if value.strip() else value
        else:
            out[name] = value
    return out


class ExchangeLog:
    """Exchanges in the order they were answered. Thread-safe."""

    def __init__(self) -> None:
        self._items: list[Exchange] = []
        self._lock = threading.Lock()

    def add(self, exchange: Exchange) -> None:
        with self._lock:
            self._items.append(exchange)

    def items(self) -> list[Exchange]:
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
