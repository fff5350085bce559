"""The one adapter around the official ``vastai`` SDK.

Everything the plugin asks of Vast.ai goes through :class:`VastAPI`, which adds
what the SDK leaves to its callers:

- Pacing: every call queues for a slot of its endpoint, one interval after the
  call before it, shared by all job threads (``ratelimit.py``). The interval is
  learned from the 429s (the real service sends no ``Retry-After``; its body
  names the threshold), so a burst of jobs does not collide on the endpoint.
- Retries with exponential backoff and jitter for transient answers (5xx,
  connection errors); a 429 is retried at the endpoint's next slot. A
  ``Retry-After`` header, when present, is honoured. The retry budget is
  time-based (``retry_budget`` seconds) so a job never fails on transient
  errors before the budget is spent.
- Identical offer searches of concurrent jobs share one request
  (``shared_search.py``).
- Error mapping: an offer refused for its own sake (404 ``no_such_ask``, 410, 400
  ``invalid_price``) is :class:`OfferGone` (the caller tries the next offer); a bad
  key is :class:`VastAuthError`; an unreachable URL past the budget is
  :class:`VastUnavailable`. Messages never contain the API key.
- One batched instance listing (paged by the SDK) serves the status of every
  job, instead of one request per job.

The SDK is imported lazily, so ``snakemake --dry-run`` does not pay for it.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..run.backoff import Backoff
from ..run.redaction import scrub
from ..settings import DEFAULT_URL
from .ratelimit import RateLimiter
from .shared_search import SharedSearches

TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
WAIT_REPORTED = 10.0  # seconds queued for an endpoint's slot that are worth telling the user
WAIT_REPORT_EVERY = 30.0  # seconds between two such reports for one endpoint
PAGE_SIZE = 25  # the v1 listing's maximum


_SERVERLESS = "vastai.serverless"


def skip_serverless_client() -> None:
    """Import the vastai SDK without its serverless client (saves ~1.8 s per run).

    The package's ``__init__`` imports that client (aiohttp and friends) inside
    a ``try`` that falls back on ImportError; we never use it. Only called in
    the Snakemake process that runs our executor (and our CLI), before the
    first ``import vastai``; a job's own process is never affected.
    """
    import sys

    if "vastai" not in sys.modules:
        sys.modules.setdefault(_SERVERLESS, None)  # type: ignore[arg-type]


def import_sdk() -> Any:
    """``vastai.VastAI`` (see skip_serverless_client)."""
    skip_serverless_client()
    from vastai import VastAI

    return VastAI


class VastError(Exception):
    """An answer from Vast.ai the plugin cannot turn into progress."""


class VastAuthError(VastError):
    """The API key was refused (401/403)."""


KEY_REFUSED_AGAIN = ("Vast.ai refused the API key earlier in this run; nothing more is "
                     "asked of it with that key (check --vastai-api-key / VAST_API_KEY)")


class VastUnavailable(VastError):
    """Transient failures outlasted the retry budget (or the URL never answered)."""


class OfferGone(VastError):
    """The offer cannot be rented by us now: someone else rented it between search and
    create, its machine cannot start it (410), or our bid no longer fits it."""


class CreateInDoubt(VastError):
    """A create request may have rented although no answer said so (timeout, 5xx, a dropped
    or garbled answer). Never retried blindly: the caller looks the label up first."""


class _Transient(Exception):
    """Internal: one attempt failed in a way worth retrying."""

    def __init__(self, reason: str, retry_after: float | None = None,
                 status: int | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after
        self.status = status


@dataclass
class CallStats:
    """Counts for logs and benchmarks: calls, retries and throttles per endpoint."""

    calls: dict[str, int] = field(default_factory=dict)
    retries: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bump(self, table: dict[str, int], endpoint: str) -> None:
        with self.lock:
            table[endpoint] = table.get(endpoint, 0) + 1


class VastAPI:
    """Vast.ai as the plugin needs it: search, create, status, destroy."""

    def __init__(self, api_key: str, url: str | None = None, *, retry_budget: float = 300.0,
                 request_timeout: float = 30.0,
                 on_retry: Callable[[str, str, float], None] | None = None,
                 on_wait: Callable[[str, float, float], None] | None = None,
                 wait_reported: float = WAIT_REPORTED,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.url = (url or DEFAULT_URL).rstrip("/")
        self.retry_budget = retry_budget
        self.request_timeout = request_timeout
        self._api_key = api_key
        # Set by the first 401/403: a refused key does not heal by waiting, so every later
        # call fails at once (the run stops renting and its teardown stops retrying).
        self.key_refused = threading.Event()
        self._on_retry = on_retry
        # A long queue for an endpoint's slot (50 creates at 4.5 s apart is nearly four
        # minutes) is reported as a wait, not as an error: (endpoint, waited, interval).
        self._on_wait = on_wait
        self._wait_reported = wait_reported
        self._wait_told: dict[str, float] = {}
        self._sleep = sleep
        self._sdk_obj: Any = None
        self._sdk_lock = threading.Lock()
        self.pacer = RateLimiter()
        self.searches = SharedSearches(self._search_now)
        # Bid offers (type "bid", see bids.py) are searched apart: same filters, other prices.
        self.bid_searches = SharedSearches(self._search_bid_now)
        self.stats = CallStats()

    def __repr__(self) -> str:
        return f"VastAPI(url={self.url!r})"

    # -- the SDK, lazily -------------------------------------------------------
    @property
    def _sdk(self) -> Any:
        with self._sdk_lock:
            if self._sdk_obj is None:
                VastAI = import_sdk()

                # retry=1: backoff is ours (shared pacing, time budget, logging).
                sdk = VastAI(api_key=self._api_key, server_url=self.url, retry=1, raw=True,
                             quiet=True)
                sdk.client.timeout = self.request_timeout
                self._sdk_obj = sdk
            return self._sdk_obj

    # -- the retry loop -------------------------------------------------------
    def _call(self, endpoint: str, fn: Callable[[], Any], *, budget: float | None = None,
              in_doubt: Callable[[_Transient], VastError | None] | None = None) -> Any:
        """Run one SDK call with pacing, retries and error mapping.

        ``in_doubt`` (for requests that are not idempotent) may turn a failed attempt
        into an error at once instead of a retry.
        """
        budget = self.retry_budget if budget is None else budget
        backoff = Backoff(start=0.75, cap=30.0, jitter=0.67)  # 0.25-0.75 s, doubling
        attempt = 0
        if self.key_refused.is_set():
            raise VastAuthError(KEY_REFUSED_AGAIN)
        while True:
            # This call's slot, one interval after the last; retries go first.
            asked = time.monotonic()
            released = self.pacer.wait(endpoint, retry=attempt > 0)
            if attempt == 0:  # queueing behind a burst is not failing: the budget starts now
                deadline = released + budget
                self._tell_wait(endpoint, released - asked)
            self.stats.bump(self.stats.calls, endpoint)
            try:
                result = _attempt(fn)
            except VastAuthError:
                self.key_refused.set()
                raise
            except _Transient as exc:
                attempt += 1
                doubt = in_doubt(exc) if in_doubt is not None else None
                if doubt is not None:
                    raise doubt from None
                if exc.status == 429:  # learn the interval; the next slot is the wait
                    self.pacer.refused(endpoint, str(exc), exc.retry_after, released)
                now = time.monotonic()
                if now >= deadline:
                    raise VastUnavailable(unavailable_message(self.url, endpoint, attempt,
                                                              budget, exc)) from None
                # After a 429 the limiter's next slot is the wait (ratelimit.py).
                delay = 0.0 if exc.status == 429 else min(backoff.delay(), deadline - now)
                if exc.retry_after is not None:
                    delay = min(max(delay, exc.retry_after), max(deadline - now, 0.0))
                self.stats.bump(self.stats.retries, endpoint)
                if self._on_retry:
                    self._on_retry(endpoint, str(exc), delay)
                self._sleep(delay)
                continue
            self.pacer.succeeded(endpoint)
            return result

    def _tell_wait(self, endpoint: str, waited: float) -> None:
        """Report a long queue for an endpoint's slot, at most every WAIT_REPORT_EVERY s."""
        if self._on_wait is None or waited < self._wait_reported:
            return
        now = time.monotonic()
        with self.stats.lock:
            if now - self._wait_told.get(endpoint, -WAIT_REPORT_EVERY) < WAIT_REPORT_EVERY:
                return
            self._wait_told[endpoint] = now
        self._on_wait(endpoint, waited, self.pacer.interval(endpoint))

    # -- operations -------------------------------------------------------------
    def check_access(self) -> dict:
        """Fail early (before renting) on a wrong key or an unreachable URL."""
        return self._call("users/current", lambda: self._sdk.show_user(), budget=20.0)

    def search_offers(self, query: dict, order: list, limit: int, storage_gb: float, *,
                      bid: bool = False) -> list[dict]:
        """Offers matching ``query``, best first per ``order``, from a search shared with
        the run's other jobs asking the same now (see shared_search; the run's offer claims
        decide who rents which). ``bid``: interruptible offers, priced at ``min_bid``."""
        searches = self.bid_searches if bid else self.searches
        return searches.search(query, order, limit, storage_gb)

    def search_offers_unshared(self, query: dict, order: list, limit: int,
                               storage_gb: float) -> list[dict]:
        """The market's answer as it is, best first: for ``plan``, which must show what
        each rule would get, never an answer shared with a job of a run."""
        return self._search_now(query, order, lambda: limit, storage_gb)

    def _search_now(self, query: dict, order: list, limit: Callable[[], int],
                    storage_gb: float, offer_type: str = "on-demand") -> list[dict]:
        """One search request; ``limit()`` is read as the request is built."""
        from vastai.api import offers

        def run() -> list[dict]:
            q = dict(query)
            return offers.search_offers(self._sdk.client, query=q, order=order, limit=limit(),
                                        storage=storage_gb, no_default=True,
                                        offer_type=offer_type)

        return self._call("bundles", run)

    def _search_bid_now(self, query: dict, order: list, limit: Callable[[], int],
                        storage_gb: float) -> list[dict]:
        return self._search_now(query, order, limit, storage_gb, offer_type="bid")

    def create_instance(self, offer_id: int, *, image: str, disk_gb: float, label: str,
                        onstart: str | None = None, env: dict[str, str] | None = None,
                        runtype: str = "ssh_direc ssh_proxy", args: list[str] | None = None,
                        price: float | None = None) -> int:
        """Rent ``offer_id``; return the new instance id. Raises OfferGone. A ``price``
        ($/h) rents it as an interruptible instance bidding that much (bids.py)."""
        from vastai.api import instances

        # cancel_unavail: if scheduling fails, say so instead of leaving a stopped
        # instance behind that bills for its disk.
        payload = instances.build_create_instance_payload(
            image=image, disk=disk_gb, env=dict(env or {}), label=label, onstart_cmd=onstart,
            runtype=runtype, args=args, cancel_unavail=True, price=price,
        )

        def run() -> int:
            answer = instances.create_instance_from_payload(self._sdk.client, offer_id,
                                                            dict(payload))
            if not isinstance(answer, dict):
                raise _Transient(f"garbled create answer: {_brief(answer)}")
            if "new_contract" in answer and not answer.get("success", True):
                # Vast.ai can refuse and still have made a (stopped) instance.
                raise _Transient(f"create answered {_brief(answer)} with a new contract")
            if answer.get("success") is False:  # a plain refusal: nothing was made
                raise VastError(f"creating an instance from offer {offer_id} failed: "
                                f"{_brief(answer)}")
            if "new_contract" not in answer:  # an answer of the wrong shape: it may have
                raise _Transient(f"garbled create answer: {_brief(answer)}")
            return int(answer["new_contract"])

        def in_doubt(exc: _Transient) -> VastError | None:
            # A 429 is refused before the server acts: safe to ask again. Anything else
            # (timeout, 5xx, a dropped or garbled answer) may have rented an instance.
            if exc.status == 429:
                return None
            return CreateInDoubt(f"creating an instance from offer {offer_id}: no clear "
                                 f"answer ({exc})")

        return self._call("asks", run, budget=min(self.retry_budget, 60.0), in_doubt=in_doubt)

    def change_bid(self, instance_id: int, price: float) -> None:
        """Set a bid instance's bid ($/h): ``PUT /instances/bid_price/{id}/`` (the SDK's
        ``change_bid``); a stopped instance whose new bid wins starts again."""
        from vastai.api import instances

        self._call("instances/bid_price",
                   lambda: instances.change_bid(self._sdk.client, instance_id, price=price))

    def attach_ssh_key(self, instance_id: int, public_line: str) -> None:
        """Let our per-run key log in to the instance."""
        self._call("instances/ssh", lambda: self._sdk.attach_ssh(instance_id, public_line))

    def list_instances(self, label_prefix: str | None = None) -> list[dict]:
        """Every instance of the account, optionally only those with our label prefix.

        Pages are fetched one by one, each with its own retries: the real API
        rate-limits back-to-back calls to one endpoint, and the SDK's own
        helper (which restarts from page one on any error) would then never
        finish an account with more than one page of instances.
        """
        from vastai.api import instances

        rows: list[dict] = []
        params: dict[str, Any] = {"select_filters": {}, "order_by": [{"col": "id", "dir": "asc"}],
                                  "limit": PAGE_SIZE}
        def fetch(p: dict) -> dict:
            page = instances.show_instances_v1(self._sdk.client, p)
            if not isinstance(page, dict) or not isinstance(page.get("instances", []), list):
                raise _Transient("garbled listing: not a page of instances")
            if any(not isinstance(r, dict) or r.get("id") is None
                   for r in page.get("instances") or []):
                raise _Transient("garbled listing: a row without an id")
            return page

        while True:
            page = self._call("instances/list", lambda p=dict(params): fetch(p))
            rows.extend(page.get("instances") or [])
            token = page.get("next_token")
            if not token:
                break
            params["after_token"] = token
        if label_prefix is None:
            return rows
        return [r for r in rows if str(r.get("label") or "").startswith(label_prefix)]

    def find_all_by_label(self, label: str) -> list[dict]:
        """Every instance carrying exactly this label, lowest id first (a lost create
        answer followed by a retry can leave two)."""
        rows = [r for r in self.list_instances(label) if r.get("label") == label]
        return sorted(rows, key=lambda r: int(r["id"]))

    def show_instance(self, instance_id: int, budget: float | None = None) -> dict | None:
        """One instance's row, or None once it is gone: the service answers a destroyed
        instance with a null row, or with a JSON 404 that names the instance missing
        (:data:`INSTANCE_MISSING`). A 404 of any other kind (an HTML page, a wrong URL's
        ``not_found`` without a message about the instance) is an error, never "gone"."""

        def run() -> dict | None:
            try:
                return self._sdk.show_instance(instance_id)
            except _http_error() as exc:
                if _status(exc) == 404 and _names_instance_missing(_answer_of(exc)):
                    return None
                raise

        return self._call("instances/show", run, budget=budget)

    def destroy_instance(self, instance_id: int, budget: float | None = None) -> None:
        """Destroy; an instance that is already gone counts as destroyed."""

        def run() -> None:
            try:
                self._sdk.destroy_instance(instance_id)
            except _http_error() as exc:
                if _status(exc) == 404:
                    return
                raise

        self._call("instances/destroy", run, budget=budget)

    def start_instance(self, instance_id: int, budget: float | None = None) -> None:
        """Start a stopped instance again (its disk kept); the status says when it runs."""
        self._call("instances/start", lambda: self._sdk.start_instance(instance_id),
                   budget=budget)

    def destroy_instances(self, instance_ids: list[int], budget: float | None = None) -> None:
        """Destroy several instances in one request (``vastai destroy instances``). The
        answer's shape is not documented: callers confirm each instance gone."""
        from vastai.api import instances

        ids = [int(i) for i in instance_ids]
        self._call("instances/destroy_many",
                   lambda: instances.destroy_instance(self._sdk.client, ids), budget=budget)

    def logs(self, instance_id: int, tail: int = 200) -> str:
        """The instance's container log (onstart/entrypoint output)."""
        return self._call("instances/logs",
                          lambda: self._sdk.logs(instance_id, tail=str(tail)), budget=30.0)


def unavailable_message(url: str, endpoint: str, attempts: int, budget: float,
                        last: Exception) -> str:
    """Why a call gave up, naming the endpoint, and what the user can do about it."""
    if getattr(last, "status", None) == 429:
        cause = ("it kept answering 429 (too many requests): this API key's rate limit is "
                 "shared with every other program using the key; stop those or use another "
                 "key")
    else:
        cause = "check that Vast.ai is up and that this machine reaches it"
    return (f"Vast.ai API at {url} kept failing for endpoint {endpoint!r} ({attempts} attempts "
            f"over the {budget:.0f} s retry budget; last: {last}); {cause}, then rerun the "
            "workflow: the journal keeps track of every instance this run rented")


def _http_error() -> type[Exception]:
    import requests

    return requests.HTTPError


def _status(exc: Exception) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _brief(answer: Any) -> str:
    """A short, key-free rendering of an API answer for error messages."""
    if isinstance(answer, dict):
        parts = [f"{k}={answer[k]}" for k in ("error", "msg", "detail") if k in answer]
        return ", ".join(parts) or str(sorted(answer))[:200]
    return str(answer)[:200]


def _answer_of(exc: Exception) -> dict:
    response = getattr(exc, "response", None)
    try:
        data = response.json() if response is not None else {}
    except ValueError:
        data = {}
    return data if isinstance(data, dict) else {}


def _attempt(fn: Callable[[], Any]) -> Any:
    """One SDK call, with exceptions sorted into transient, gone, auth and fatal."""
    import requests

    try:
        return fn()
    except requests.HTTPError as exc:
        code = _status(exc)
        answer = _answer_of(exc)
        if code in TRANSIENT_STATUS:
            retry_after = _retry_after(exc)
            raise _Transient(f"HTTP {code} {_brief(answer)}", retry_after, code) from None
        if code in (401, 403):
            raise VastAuthError(
                f"Vast.ai refused the API key (HTTP {code}); check --vastai-api-key / "
                "VAST_API_KEY") from None
        if _offer_refused(code, answer):
            raise OfferGone(_brief(answer)) from None
        raise VastError(f"Vast.ai answered HTTP {code}: {_brief(answer)}") from None
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise _Transient(f"connection problem: {type(exc).__name__}") from None
    except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError,
            requests.exceptions.JSONDecodeError) as exc:
        # A truncated body, or a proxy's HTML page with status 200: the answer is lost.
        raise _Transient(f"garbled answer: {type(exc).__name__}") from None
    except TimeoutError as exc:  # the SDK's log polling
        raise _Transient(str(exc)) from None
    except requests.RequestException as exc:  # e.g. InvalidHeader: its text may quote a key
        raise VastError(f"request failed: {type(exc).__name__}: {scrub(str(exc))}") from None
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        # The SDK parsing an answer of the wrong shape (JSON, but not what it expects).
        raise _Transient(f"garbled answer: {type(exc).__name__}") from None


# The ``error`` of a 404 that says the instance does not exist (documented per endpoint:
# ``not_found`` for destroy, ``no_such_instance`` for a bid change, ``invalid_id`` for logs).
INSTANCE_MISSING = frozenset({"not_found", "no_such_instance", "invalid_id"})
_INSTANCE_WORD = re.compile(r"\binstance\b", re.IGNORECASE)  # not "/instances/" of a path


def _names_instance_missing(answer: dict) -> bool:
    """A JSON 404 about the instance, not about the path (``no such endpoint``)."""
    msg = str(answer.get("msg", ""))
    return answer.get("error") in INSTANCE_MISSING and _INSTANCE_WORD.search(msg) is not None


def _offer_refused(code: int | None, answer: dict) -> bool:
    """A create refused for the offer's sake, not ours: the offer is gone (404
    ``no_such_ask``), cannot start now (410), or our price no longer fits it
    (``invalid_price``). Each means: try the next offer."""
    return (code == 410 or answer.get("error") in ("no_such_ask", "invalid_price")
            or "no_such_ask" in str(answer.get("msg", "")))


def _retry_after(exc: Exception) -> float | None:
    response = getattr(exc, "response", None)
    value = getattr(response, "headers", {}).get("Retry-After") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def by_id(rows: Iterable[dict]) -> dict[int, dict]:
    """Index instance rows by id."""
    return {int(r["id"]): r for r in rows if r.get("id") is not None}
