"""The one redaction: secrets never reach a terminal, a log file, the events file or the journal.

Two rules, applied by every sink to its *final text* (after tracebacks and
exception messages are rendered, after JSON encoding):

- a registered secret value (the API key, forwarded credentials) is masked
  wherever it appears, also in the escaped forms an exception or a JSON
  encoder gives it (``repr`` of a header value with a newline, ``\\u`` escapes);
- in structured data, values under keys that look secret
  (``key|token|secret|passw(or)d|credential|auth``) are masked at any depth.

Secrets are registered before the first request that could carry them
(``startup.start_run`` registers the API key before anything else happens).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any

SECRET_KEY_RE = re.compile(r"key|token|secret|passw(or)?d|credential|auth", re.IGNORECASE)
MASK = "***"
NOT_SECRET_KEYS = frozenset({"label_prefix"})
MIN_SECRET_LENGTH = 8  # shorter values ("true", "json", a region) would mask ordinary text
MIN_PART_LENGTH = 12


def _variants(value: str) -> set[str]:
    """The forms a secret takes once printed: as is, stripped, repr-escaped, JSON-escaped,
    and each long whitespace-separated part (a key split by a stray newline)."""
    forms = {value, value.strip(), repr(value)[1:-1], json.dumps(value)[1:-1],
             json.dumps(value, ensure_ascii=False)[1:-1]}
    forms = {f for f in forms if len(f) >= MIN_SECRET_LENGTH}
    # Parts only when long: short ones would mask ordinary words in every message.
    forms.update(part for part in re.split(r"\s+", value) if len(part) >= MIN_PART_LENGTH)
    return forms


class SecretRegistry:
    """Values that must never be printed or stored."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._ordered: list[str] = []
        self._lock = threading.Lock()

    def add(self, values: Iterable[str | None]) -> None:
        with self._lock:
            for value in values:
                if value and len(value) >= MIN_SECRET_LENGTH:
                    self._values.update(_variants(value))
            self._ordered = sorted(self._values, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        """``text`` with every registered secret (in any printed form) masked."""
        with self._lock:
            values = self._ordered
        for value in values:
            if value in text:
                text = text.replace(value, MASK)
        return text

    def clear(self) -> None:
        """Forget every secret (tests only)."""
        with self._lock:
            self._values.clear()
            self._ordered = []


SECRETS = SecretRegistry()
CREDENTIAL_NAME_RE = re.compile(r"key|token|secret|passw(or)?d|credential|auth|connection_string"
                                r"|sas", re.IGNORECASE)


def add_environment(env: Mapping[str, str], declared: Iterable[str] = ()) -> None:
    """Register forwarded variables' values as secrets: those with credential-like names
    and those the workflow declared (``envvars:``, for tokens); not settings such as
    ``AWS_DEFAULT_OUTPUT=json`` whose value is ordinary text."""
    wanted = set(declared)
    SECRETS.add(value for name, value in env.items()
                if name in wanted or CREDENTIAL_NAME_RE.search(name))


def scrub(text: str) -> str:
    """The final-text rule, for any sink."""
    return SECRETS.scrub(text)


def redact(value: Any) -> Any:
    """A copy of ``value``: secret-looking keys' values masked at any depth, and every
    string scrubbed of registered secrets (None and booleans kept: they carry none)."""
    if isinstance(value, Mapping):
        return {str(k): _redact_item(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return scrub(value)
    return value


def _redact_item(key: str, value: Any) -> Any:
    if (SECRET_KEY_RE.search(key) and key not in NOT_SECRET_KEYS and value is not None
            and not isinstance(value, bool)):
        return MASK
    return redact(value)
