"""structlog for the plugin, routed into Snakemake's own logger.

A library must not call ``structlog.configure()``: that belongs to the
application (Snakemake, or whoever embeds it). We wrap Snakemake's logger with
our own processor chain instead, so ``--quiet`` and ``--verbose`` keep working
and the user's global logging is untouched. Events marked ``verbose=True``
(offer queries, transitions, API retries) go out at debug level and show with
``--verbose`` only.

Every event passes :func:`redact` first: values of keys that look secret, and
any registered secret value found anywhere in the event, become ``***``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from typing import Any

import structlog

SECRET_KEY_RE = re.compile(r"key|token|secret|password|passwd|credential|auth", re.IGNORECASE)
MASK = "***"


class SecretRegistry:
    """Values that must never be printed (the API key, forwarded credentials)."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._lock = threading.Lock()

    def add(self, values: Iterable[str | None]) -> None:
        with self._lock:
            self._values.update(v for v in values if v and len(v) >= 4)

    def scrub(self, text: str) -> str:
        with self._lock:
            values = sorted(self._values, key=len, reverse=True)
        for value in values:
            if value in text:
                text = text.replace(value, MASK)
        return text


SECRETS = SecretRegistry()


def _scrub_value(key: str, value: Any) -> Any:
    if SECRET_KEY_RE.search(key) and value is not None and key not in ("label_prefix",):
        return MASK
    if isinstance(value, str):
        return SECRETS.scrub(value)
    if isinstance(value, dict):
        return {k: _scrub_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub_value("", v) for v in value]
    return value


def redact(_logger: Any, _name: str, event_dict: dict) -> dict:
    """structlog processor: mask secret-looking keys and known secret values."""
    return {k: (_scrub_value(k, v) if k != "event" else SECRETS.scrub(str(v)))
            for k, v in event_dict.items()}


def _render(_logger: Any, method: str, event_dict: dict) -> str:
    """One readable line: the event, then key=value pairs (job first)."""
    event = event_dict.pop("event", "")
    event_dict.pop("verbose", None)
    order = ["rule", "job", "instance"]
    keys = [k for k in order if k in event_dict] + sorted(k for k in event_dict if k not in order)
    pairs = " ".join(f"{k}={event_dict[k]}" for k in keys if event_dict[k] is not None)
    return f"vastai: {event}" + (f" ({pairs})" if pairs else "")


class _SnakemakeSink:
    """Adapts Snakemake's executor logger to structlog's method calls."""

    def __init__(self, logger: Any) -> None:
        self._logger = logger

    def _emit(self, level: str, message: str) -> None:
        getattr(self._logger, level, self._logger.info)(message)

    def debug(self, message: str) -> None:
        self._emit("debug", message)

    def info(self, message: str) -> None:
        self._emit("info", message)

    def warning(self, message: str) -> None:
        self._emit("warning", message)

    def error(self, message: str) -> None:
        self._emit("error", message)

    def exception(self, message: str) -> None:
        self._emit("error", message)

    critical = error
    msg = info


class PluginLogger:
    """The object handed around: ``log.info("event", job=..., instance=...)``."""

    def __init__(self, snakemake_logger: Any) -> None:
        sink = _SnakemakeSink(snakemake_logger)
        self._sink = sink
        self._log = structlog.wrap_logger(
            sink, processors=[redact, structlog.processors.format_exc_info, _render],
        )

    def _emit(self, method: str, event: str, kw: dict) -> None:
        if kw.pop("verbose", False) and method == "info":
            method = "debug"
        getattr(self._log, method)(event, **kw)

    def debug(self, event: str, **kw: Any) -> None:
        self._emit("debug", event, kw)

    def info(self, event: str, **kw: Any) -> None:
        self._emit("info", event, kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._emit("warning", event, kw)

    def error(self, event: str, **kw: Any) -> None:
        self._emit("error", event, kw)

    def exception(self, event: str, **kw: Any) -> None:
        kw.setdefault("exc_info", True)
        self._emit("error", event, kw)
