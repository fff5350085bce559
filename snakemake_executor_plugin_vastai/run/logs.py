"""structlog for the plugin, routed into Snakemake's own logger.

A library must not call ``structlog.configure()``: that belongs to the
application (Snakemake, or whoever embeds it). We wrap Snakemake's logger with
our own processor chain instead, so ``--quiet`` and ``--verbose`` keep working
and the user's global logging is untouched. Events marked ``verbose=True``
(offer queries, transitions, API retries) go out at debug level and show with
``--verbose`` only.

Redaction (``redaction.py``) runs twice: on the event's fields first, and on
each sink's final text (after tracebacks are rendered), so a secret quoted
inside an exception message is masked too.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import structlog

from .redaction import SECRETS, redact, scrub
from .terminal import sanitise

__all__ = ["SECRETS", "PluginLogger"]

def redact_event(_logger: Any, _name: str, event_dict: dict) -> dict:
    """structlog processor: mask secret-looking keys and known secret values early, so
    even a sink that forgets the final scrub never sees them in structured fields."""
    out = {}
    for k, v in event_dict.items():
        if k == "exc_info":  # rendered (then scrubbed by the sink) by format_exc_info
            out[k] = v
        elif k == "event":
            out[k] = scrub(str(v))
        else:
            out[k] = redact({k: v})[k]
    return out


def _render(_logger: Any, method: str, event_dict: dict) -> str:
    """One readable line: the event, then key=value pairs (job first). A ``plain`` event
    (progress) reads as a sentence about its job: ``vastai: rule r, job 1c2d: ...``."""
    event = event_dict.pop("event", "")
    event_dict.pop("verbose", None)
    if event_dict.pop("plain", False):
        who = ", ".join(f"{k} {event_dict[k]}" for k in ("rule", "job")
                        if event_dict.get(k) is not None)
        return f"vastai: {who}: {event}" if who else f"vastai: {event}"
    order = ["rule", "job", "instance"]
    keys = [k for k in order if k in event_dict] + sorted(k for k in event_dict if k not in order)
    pairs = " ".join(f"{k}={event_dict[k]}" for k in keys if event_dict[k] is not None)
    return f"vastai: {event}" + (f" ({pairs})" if pairs else "")


class _SnakemakeSink:
    """Adapts Snakemake's executor logger to structlog's method calls."""

    def __init__(self, logger: Any) -> None:
        self._logger = logger

    def _emit(self, level: str, message: str) -> None:
        # The final text, traceback included, is what must hold no secret, and no byte a
        # host chose may drive the user's terminal (terminal.py).
        getattr(self._logger, level, self._logger.info)(scrub(sanitise(message)))

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


EVENT_FIELDS = ("job", "rule", "state", "instance")


class _JsonLinesSink:
    """Appends one JSON object per line to the run's event file (mode 0600)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._file = os.fdopen(fd, "a", buffering=1, encoding="utf-8")
        self._lock = threading.Lock()
        self.path = path

    def msg(self, line: str) -> None:
        line = scrub(line)  # after JSON encoding: escaped forms of a secret are known too
        with self._lock:
            if not self._file.closed:
                self._file.write(line + "\n")

    debug = info = warning = error = critical = exception = msg

    def close(self) -> None:
        with self._lock:
            self._file.close()


def _event_fields(_logger: Any, method: str, event_dict: dict) -> dict:
    """Every event carries job, rule, state, instance (None when not about a job) and time."""
    for name in EVENT_FIELDS:
        event_dict.setdefault(name, None)
    event_dict["level"] = method
    event_dict["ts"] = round(time.time(), 6)
    return event_dict


class _Sinks:
    """Shared by a logger and its bound children."""

    def __init__(self, snakemake_logger: Any) -> None:
        self.human = structlog.wrap_logger(
            _SnakemakeSink(snakemake_logger),
            processors=[redact_event, structlog.processors.format_exc_info, _render])
        self.events: Any = None
        self.file: _JsonLinesSink | None = None


class PluginLogger:
    """The object handed around: ``log.info("event", job=..., instance=...)``.

    Human lines go to Snakemake's logger; with :meth:`open_events`, every event
    also lands as JSON in the run's event file. ``verbose=True`` events are
    debug-level for humans (shown with ``--verbose``) and always in the file;
    ``facts={...}`` go to the file only (the human line already says them in words),
    and ``plain=True`` renders the line as a sentence about its job.
    """

    def __init__(self, snakemake_logger: Any, *, _sinks: _Sinks | None = None,
                 _context: dict | None = None) -> None:
        self._sinks = _sinks or _Sinks(snakemake_logger)
        self._context = dict(_context or {})

    def bind(self, **context: Any) -> PluginLogger:
        """A logger that adds ``context`` to every event (e.g. job=..., rule=...)."""
        return PluginLogger(None, _sinks=self._sinks, _context={**self._context, **context})

    def open_events(self, path: Path) -> None:
        """Start the JSON-lines event file of this run."""
        sink = _JsonLinesSink(path)
        self._sinks.file = sink
        self._sinks.events = structlog.wrap_logger(sink, processors=[
            _event_fields, redact_event, structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(default=str)])

    def close(self) -> None:
        if self._sinks.file is not None:
            self._sinks.events = None
            self._sinks.file.close()

    def _emit(self, method: str, event: str, kw: dict) -> None:
        kw = {**self._context, **kw}
        human = "debug" if kw.pop("verbose", False) and method == "info" else method
        facts = kw.pop("facts", None) or {}  # figures for the event file, not for people
        if self._sinks.events is not None:
            getattr(self._sinks.events, method)(event, **{**kw, **facts})
        getattr(self._sinks.human, human)(event, **kw)

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
