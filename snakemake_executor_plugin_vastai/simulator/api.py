"""The REST API: HTTP server, routing, auth, rate limiting, service faults, request counts.

Routes (the SDK's paths; a trailing slash is optional everywhere):

==========  =======================================  =========================================
GET         /api/v0/users/current                    user object (credit falls with billing)
POST        /api/v0/bundles/                         search offers -> ``{"offers": [...]}``
PUT         /api/v0/search/asks/                     the same, body ``{"q": {...}}``
PUT         /api/v0/asks/{id}/                       rent -> ``{"success", "new_contract"}``
GET         /api/v0/instances/                       all live instances (v0, unpaged)
GET         /api/v1/instances/                       paged listing (``next_token``)
GET         /api/v0/instances/filters/               distinct status/gpu/verification combos
GET         /api/v0/instances/{id}/                  ``{"instances": row}`` or ``null``
PUT         /api/v0/instances/{id}/                  ``{"label": ...}`` (relabel)
DELETE      /api/v0/instances/{id}/                  destroy
PUT         /api/v0/instances/reboot/{id}/           reboot
PUT         /api/v0/instances/request_logs/{id}/     ``{"result_url": ...}`` (log snapshot)
POST        /api/v0/instances/{id}/ssh/              attach an SSH public key
GET/POST    /api/v0/ssh/                             account SSH keys (installed on new instances)
DELETE      /api/v0/ssh/{id}/                        remove an account key
GET         /_sim/logs/{token}                       the log text (no auth, like an S3 URL)
GET         /_sim/truth                              ground truth (no auth)
POST/DELETE /_sim/faults                             add a fault (JSON kwargs) / clear faults
POST        /_sim/foreign                            create a foreign instance ``{"label"}``
==========  =======================================  =========================================

Status codes, as Vast.ai's published description documents them (``vast-openapi.yaml``;
the contract test holds us to it): 401 ``{"success": false, "error": "auth_error", ...}``
for a missing or wrong key; create: 404 ``invalid_args`` with ``no_such_ask`` in ``msg``
and ``ask_id`` for an offer that is gone, 410 ``no_such_ask`` / 400 ``invalid_price`` (the
``create_refused`` fault), 400 ``invalid_args`` for a bad payload; an unknown or destroyed
instance: 404 ``not_found`` (destroy, ssh, relabel, reboot), ``no_such_instance`` (bid
change), ``invalid_id`` (logs); the v1 listing: 400 ``invalid_request`` / ``invalid_token``
(``listing.py``). Our own: 404 ``not_found`` for unknown paths, 405 for a wrong method,
500 ``server_error`` when a handler fails (logged, the server keeps serving), 503 while
the simulator stops. Throttling (``RateLimiter``): 429 with the endpoint's threshold,
``{"success": false, "error": "rate_limit_exceeded", "msg": ...}`` for destroys (single
and bulk) and ``{"detail": "API requests too frequent endpoint threshold=<s>"}`` for
every other endpoint, without Retry-After, as the description shows them.

Where the description is silent, our choices: ``GET /instances/{id}/`` of a destroyed
instance answers 200 ``{"instances": null}`` (what the SDK reads as gone; the
``gone_answer`` fault answers 404 or a row on its way out instead); bulk destroy
(``DELETE /instances/`` with ``instance_ids``, which the SDK sends but the description
does not list) answers ``{"success": true, "destroyed": [ids]}``, skips ids it does not
know, and shares the single destroy's 3.0 s interval in the realistic profile; endpoints
whose interval is not documented get 0.25 s there.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import secrets
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..vastai.query import QueryError
from .exchanges import Exchange, ExchangeLog, redacted_headers
from .faults import ApiEffect
from .market import OfferGone

log = logging.getLogger(__name__)

_SEGMENT = {"id": r"\d+", "token": r"[A-Za-z0-9_-]+"}
DROPPED = object()  # the request gets no answer: its connection is reset


class HttpError(Exception):
    """Answer with this status and JSON body."""

    def __init__(self, status: int, error: str, msg: str, **extra: Any) -> None:
        super().__init__(msg)
        self.status = status
        self.body = {"success": False, "error": error, "msg": msg, **extra}


@dataclass
class Request:
    method: str
    path: str
    route: str
    params: dict[str, str]
    query: dict[str, str]
    body: Any
    api_key: str | None


@dataclass
class Response:
    status: int = 200
    body: Any = None
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    def payload(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode()
        return json.dumps(self.body).encode()


Handler = Callable[[Request], Response | dict[str, Any]]


@dataclass
class Route:
    method: str
    pattern: str
    handler: Handler
    auth: bool = True
    regex: re.Pattern[str] = field(init=False)

    def __post_init__(self) -> None:
        expr = re.escape(self.pattern.rstrip("/"))
        expr = re.sub(r"\\\{(\w+)\\\}", lambda m: f"(?P<{m.group(1)}>{_SEGMENT[m.group(1)]})", expr)
        self.regex = re.compile(f"^{expr}/?$")

    @property
    def key(self) -> str:
        return f"{self.method} {self.pattern}"


# The intervals Vast.ai's description states in its 429 examples (``threshold=``), by route.
DOCUMENTED_INTERVALS: dict[str, float] = {
    "GET /api/v1/instances/": 1.0,
    "GET /api/v0/instances/{id}/": 2.0,
    "DELETE /api/v0/instances/{id}/": 3.0,
    "DELETE /api/v0/instances/": 3.0,  # bulk destroy: undocumented; as a single destroy
    "PUT /api/v0/asks/{id}/": 4.5,
    "PUT /api/v0/instances/bid_price/{id}/": 5.5,
}
# Short names for the command line (``--rate-interval create=4.5``).
ENDPOINT_NAMES: dict[str, str] = {
    "list": "GET /api/v1/instances/",
    "show": "GET /api/v0/instances/{id}/",
    "destroy": "DELETE /api/v0/instances/{id}/",
    "destroy_many": "DELETE /api/v0/instances/",
    "create": "PUT /api/v0/asks/{id}/",
    "bid": "PUT /api/v0/instances/bid_price/{id}/",
    "search": "POST /api/v0/bundles/",
    "user": "GET /api/v0/users/current",
    "logs": "PUT /api/v0/instances/request_logs/{id}/",
    "ssh": "POST /api/v0/instances/{id}/ssh/",
}
# The description shows this 429 body only for destroying; every other 429 has ``detail``.
ERROR_FORM_429 = frozenset({"DELETE /api/v0/instances/{id}/", "DELETE /api/v0/instances/"})


def throttled(endpoint: str | None, interval: float) -> Response:
    """A 429 in the endpoint's documented form, naming its threshold."""
    text = f"API requests too frequent endpoint threshold={interval:g}"
    if endpoint in ERROR_FORM_429:
        return Response(429, {"success": False, "error": "rate_limit_exceeded", "msg": text})
    return Response(429, {"detail": text})


class RateLimiter:
    """A minimum interval between calls per endpoint and identity, like the real service:
    ``intervals`` per route key, ``interval`` for every other endpoint (0: no limit)."""

    def __init__(self, interval: float, intervals: dict[str, float] | None = None) -> None:
        self.interval = interval
        self.intervals = dict(intervals or {})
        self._last: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def interval_for(self, endpoint: str | None) -> float:
        return self.intervals.get(endpoint or "", self.interval)

    def allow(self, identity: str, endpoint: str) -> bool:
        """Record an accepted call; False if it comes too soon after the last one."""
        interval = self.interval_for(endpoint)
        if interval <= 0:
            return True
        now = time.monotonic()
        with self._lock:
            last = self._last.get((identity, endpoint))
            if last is not None and now - last < interval:
                return False
            self._last[(identity, endpoint)] = now
            return True


@dataclass
class Stats:
    """Request counts for the ground truth."""

    requests: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, table: Counter[str], key: str) -> None:
        with self.lock:
            table[key] += 1

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            rejected = {"429": 0, "5xx": 0, **self.rejected}
            return {
                "requests": dict(self.requests),
                "requests_total": sum(self.requests.values()),
                "rejected": rejected,
            }


class LogStore:
    """Log snapshots behind unguessable URLs; each answers 404 until it is 'uploaded'."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self._items: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()

    def put(self, text: str) -> str:
        token = secrets.token_urlsafe(18)
        with self._lock:
            if len(self._items) > 2000:  # bounded: drop the oldest
                self._items.pop(next(iter(self._items)))
            self._items[token] = (time.monotonic() + self.delay, text)
        return token

    def get(self, token: str) -> str | None:
        with self._lock:
            item = self._items.get(token)
        if item is None or time.monotonic() < item[0]:
            return None
        return item[1]


def gateway_page(status: int) -> str:
    """What a proxy in front of the API answers for 502/503/504: HTML, not JSON."""
    reason = {
        502: "Bad Gateway",
        503: "Service Temporarily Unavailable",
        504: "Gateway Time-out",
    }.get(status, "Error")
    return (
        f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
        f"<center><h1>{status} {reason}</h1></center>\r\n</body>\r\n</html>\r\n"
    )


def injected(effect: ApiEffect, interval: float, endpoint: str | None = None) -> Response:
    """The answer of an ``api_status`` fault."""
    status = int(effect.status or 500)
    headers = {"Retry-After": effect.retry_after} if effect.retry_after is not None else {}
    if status == 429:
        # Without a configured interval the fault models occasional throttling: the body
        # states a short threshold (a client that learns from it must not crawl).
        response = throttled(endpoint, interval or 0.2)
        response.headers.update(headers)
        return response
    if status in (502, 503, 504):
        return Response(status, gateway_page(status), "text/html", headers)
    return Response(
        status,
        {"success": False, "error": "server_error", "msg": "Internal Server Error"},
        headers=headers,
    )


# --------------------------------------------------------------------------- server


class SimHTTPServer(ThreadingHTTPServer):
    """Threaded HTTP server whose handler threads are joined on close."""

    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: App) -> None:
        self.app = app
        self._resets: set[socket.socket] = set()
        self._active: set[socket.socket] = set()
        self._resets_lock = threading.Lock()
        super().__init__(address, SimRequestHandler)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self._resets_lock:
            self._active.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._resets_lock:
                self._active.discard(request)

    def close(self) -> None:
        """Stop serving: unblock handlers still reading a request, then join them."""
        self.shutdown()
        with self._resets_lock:
            active = list(self._active)
        for sock in active:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.server_close()

    def mark_reset(self, sock: socket.socket) -> None:
        """Close this connection with a TCP RST instead of an orderly shutdown."""
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with self._resets_lock:
            self._resets.add(sock)

    def shutdown_request(self, request: Any) -> None:
        with self._resets_lock:
            reset = request in self._resets
            self._resets.discard(request)
        if reset:
            self.close_request(request)
        else:
            super().shutdown_request(request)


class SimRequestHandler(BaseHTTPRequestHandler):
    """Parses the request and hands it to the App; never lets an exception escape."""

    server: SimHTTPServer
    timeout = 30

    def version_string(self) -> str:
        return "nginx"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self.server.app.handle(self)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_GET

    raw_body: bytes = b""

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        self.raw_body = self.rfile.read(length) if length > 0 else b""
        return self.raw_body

    def send(self, response: Response) -> None:
        data = response.payload()
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def drop(self) -> None:
        """Answer nothing: reset the connection."""
        self.close_connection = True
        self.server.mark_reset(self.connection)


# What an instance's own key (CONTAINER_API_KEY) may call, on that instance only.
SCOPED_ROUTES = frozenset({"GET /api/v0/instances/{id}/", "PUT /api/v0/instances/{id}/",
                           "DELETE /api/v0/instances/{id}/"})


class App:
    """Routing and the cross-cutting rules (auth, throttling, faults, counting)."""

    def __init__(
        self,
        *,
        api_key: str,
        routes: list[Route],
        control: list[Route],
        effect: Callable[[str, str, str | None], ApiEffect],
        rate_limiter: RateLimiter,
        stats: Stats,
        stopping: threading.Event,
        lost_answer: Callable[[str, str, str | None], tuple[str, float] | None] | None = None,
        exchanges: ExchangeLog | None = None,
        scoped: Callable[[str], int | None] = lambda key: None,
    ) -> None:
        self.api_key = api_key
        self.scoped = scoped  # an instance's own key (CONTAINER_API_KEY) -> its id
        self.routes = routes
        self.control = control  # /_sim/ routes: no auth, no faults, not counted
        self.effect = effect
        self.lost_answer = lost_answer
        self.rate_limiter = rate_limiter
        self.stats = stats
        self.stopping = stopping
        self.exchanges = exchanges

    def handle(self, h: SimRequestHandler) -> None:
        try:
            response = self._handle(h)
        except HttpError as exc:
            response = Response(exc.status, exc.body)
        except Exception:
            log.exception("simulator API handler failed: %s %s", h.command, h.path)
            response = Response(
                500, {"success": False, "error": "server_error", "msg": "Internal Server Error"}
            )
        if response is None:
            h.drop()
            return
        if response.status >= 500:
            self.stats.count(self.stats.rejected, "5xx")
        if response.status < 400 and self._lose(h, response):
            return
        self._record(h, response)  # before sending: the client may look as soon as it has it
        with contextlib.suppress(OSError):
            h.send(response)

    def _record(self, h: SimRequestHandler, response: Response) -> None:
        """Keep an answered ``/api/`` exchange for the contract tests (exchanges.py)."""
        if self.exchanges is None or not urlsplit(h.path).path.startswith("/api/"):
            return
        self.exchanges.add(Exchange(
            method=h.command,
            target=h.path,
            request_headers=redacted_headers(dict(h.headers.items())),
            request_body=h.raw_body,
            status=response.status,
            content_type=response.content_type,
            response_body=response.payload(),
        ))

    def _lose(self, h: SimRequestHandler, response: Response) -> bool:
        """The ``answer_lost`` fault: the work is done; its answer goes astray."""
        path = urlsplit(h.path).path
        if self.lost_answer is None or not path.startswith("/api/"):
            return False
        route, _ = _match(self.routes, h.command, path)
        how = self.lost_answer(h.command, path, route.key if route else None)
        if how is None:
            return False
        mode, seconds = how
        self.stats.count(self.stats.rejected, "answer_lost")
        if mode == "slow":
            self.stopping.wait(seconds)
            return False
        if mode == "html":
            with contextlib.suppress(OSError):
                h.send(Response(200, gateway_page(502), content_type="text/html"))
            return True
        if mode == "garbage":  # valid JSON, not what the endpoint answers
            with contextlib.suppress(OSError):
                h.send(Response(200, {"garbled": True, "instances": "none"}))
            return True
        if mode == "truncate":
            data = response.payload()
            with contextlib.suppress(OSError):
                h.send_response(200)
                h.send_header("Content-Type", response.content_type)
                h.send_header("Content-Length", str(len(data)))
                h.end_headers()
                h.wfile.write(data[: len(data) // 2])
                h.wfile.flush()
        h.drop()
        return True

    def _handle(self, h: SimRequestHandler) -> Response | None:
        """Route one request; None means: answer nothing (drop the connection)."""
        url = urlsplit(h.path)
        path, method = url.path, h.command
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        route, params = _match(self.control, method, path)
        if route is not None:
            if route.pattern.startswith("/_sim/logs/"):  # the SDK's data, not control
                self.stats.count(self.stats.requests, route.key)
            return self._call(route, _request(h, route, params, query, None))
        route, params = _match(self.routes, method, path)
        self.stats.count(self.stats.requests, route.key if route else f"{method} <unknown>")
        if path.startswith("/api/"):
            early = self._gateway(h, method, path, route)
            if early is not None:
                return early if isinstance(early, Response) else None
        if route is None:
            return self._not_found(method, path)
        key = _bearer(h.headers.get("Authorization")) or query.get("api_key")
        refused = (self._admit(route, key or h.client_address[0], key, params)
                   if route.auth else None)
        return refused or self._call(route, _request(h, route, params, query, key))

    def _admit(self, route: Route, identity: str, key: str | None,
               params: dict[str, str] | None = None) -> Response | None:
        """Throttle, then check the key: a refusal, or None to go on."""
        if not self.rate_limiter.allow(identity, route.key):
            self.stats.count(self.stats.rejected, "429")
            return throttled(route.key, self.rate_limiter.interval_for(route.key))
        if key is not None and key != self.api_key:
            own = self.scoped(key)
            if own is not None:
                return self._scoped_admit(route, own, params or {})
        if key != self.api_key:
            self.stats.count(self.stats.rejected, "401")
            return Response(
                401, {"success": False, "error": "auth_error", "msg": "Invalid user key"}
            )
        return None

    def _scoped_admit(self, route: Route, own: int, params: dict[str, str]) -> Response | None:
        """An instance's own key: show, stop/start and destroy that instance; anything
        else is refused (401 for another endpoint, 403 for another instance)."""
        if route.key not in SCOPED_ROUTES:
            self.stats.count(self.stats.rejected, "401")
            return Response(401, {"success": False, "error": "auth_error",
                                  "msg": "this key may only manage its own instance"})
        if params.get("id") != str(own):
            self.stats.count(self.stats.rejected, "403")
            return Response(403, {"success": False, "error": "forbidden",
                                  "msg": "this key may only manage its own instance"})
        return None

    def _gateway(
        self, h: SimRequestHandler, method: str, path: str, route: Route | None
    ) -> Response | object | None:
        """Apply the service faults: an answer, DROPPED (no answer at all), or None."""
        effect = self.effect(method, path, route.key if route else None)
        if effect.down_until > time.monotonic():
            self.stats.count(self.stats.rejected, "down")
            if effect.down_mode == "hang":
                self.stopping.wait(max(effect.down_until - time.monotonic(), 0.0))
            return DROPPED
        if effect.latency > 0:
            self.stopping.wait(effect.latency)
        if effect.status is not None:
            if effect.status == 429:
                self.stats.count(self.stats.rejected, "429")
            key = route.key if route else None
            return injected(effect, self.rate_limiter.interval_for(key), key)
        return None

    def _not_found(self, method: str, path: str) -> Response:
        if any(r.regex.match(path) for r in self.routes):
            return Response(
                405,
                {
                    "success": False,
                    "error": "method_not_allowed",
                    "msg": f"{method} not allowed on {path}",
                },
            )
        return Response(
            404, {"success": False, "error": "not_found", "msg": f"no such endpoint: {path}"}
        )

    def _call(self, route: Route, req: Request) -> Response:
        if isinstance(req.body, _BadJson):
            raise HttpError(400, "invalid_args", f"malformed JSON body: {req.body.reason}")
        try:
            out = route.handler(req)
        except OfferGone:
            ask = req.params.get("id")
            raise HttpError(
                404,
                "invalid_args",
                f"error 404/3603: no_such_ask Instance type by id {ask} is not available.",
                ask_id=int(ask) if ask and ask.isdigit() else None,
            ) from None
        except QueryError as exc:
            raise HttpError(400, "invalid_args", str(exc)) from None
        return out if isinstance(out, Response) else Response(200, out)


def _match(routes: list[Route], method: str, path: str) -> tuple[Route | None, dict[str, str]]:
    for route in routes:
        m = route.regex.match(path)
        if m and route.method == method:
            return route, m.groupdict()
    return None, {}


def _request(
    h: SimRequestHandler,
    route: Route,
    params: dict[str, str],
    query: dict[str, str],
    key: str | None,
) -> Request:
    return Request(
        h.command, urlsplit(h.path).path, route.key, params, query, _parse_body(h.read_body()), key
    )


class _BadJson:
    def __init__(self, reason: str) -> None:
        self.reason = reason


def _parse_body(raw: bytes) -> Any:
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except ValueError as exc:
        return _BadJson(str(exc))


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None
