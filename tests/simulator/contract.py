"""Holding recorded exchanges to Vast.ai's published OpenAPI description.

The description (``vast-openapi.yaml``, see ``shared/reference/README.md``) is found via
``SNAKEMAKE_VASTAI_OPENAPI``, else ``<repo>/../shared/reference/vast-openapi.yaml`` (a
checkout beside the team's shared folder, as CI's clean clone is), else
``/work/shared/reference/vast-openapi.yaml``. Without it the contract tests skip, saying
where they looked.

Every mismatch ``openapi-core`` finds is a :class:`Problem`. The description has slips of
its own; each one we accept is a :class:`Waiver` in :data:`WAIVERS`, the one list of them,
with the reason it is waived (where the description and the official ``vastai`` SDK
disagree, what the SDK sends and reads is what the real service speaks). Any problem no
waiver names fails the contract test.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from snakemake_executor_plugin_vastai.simulator.exchanges import Exchange

REPO = Path(__file__).resolve().parents[2]
ENV_VAR = "SNAKEMAKE_VASTAI_OPENAPI"
HOST = "https://console.vast.ai"  # the description's server; paths are matched below it


def candidates() -> list[Path]:
    """Where the description may be, in the order tried."""
    found = [Path(os.environ[ENV_VAR])] if os.environ.get(ENV_VAR) else []
    return [*found, REPO.parent / "shared" / "reference" / "vast-openapi.yaml",
            Path("/work/shared/reference/vast-openapi.yaml")]


def spec_path() -> Path | None:
    return next((p for p in candidates() if p.is_file()), None)


@cache
def openapi() -> Any:
    """The description, loaded once per test process (about 2 s)."""
    from openapi_core import OpenAPI

    path = spec_path()
    if path is None:
        raise FileNotFoundError(", ".join(str(p) for p in candidates()))
    return OpenAPI.from_file_path(str(path))


@dataclass(frozen=True)
class Problem:
    """One way an exchange departs from the description."""

    operation: str  # "PUT /api/v0/asks/{id}", or the raw path when undocumented
    side: str  # "request", "response", "path" (no such operation), "status" (undocumented)
    where: str  # the JSON path in the body ("instances.onstart"), or the status code
    message: str

    def __str__(self) -> str:
        return f"{self.operation} [{self.side} {self.where}]: {self.message}"


@dataclass(frozen=True)
class Waiver:
    """A slip of the description that we accept, and why."""

    operation: str  # fnmatch pattern on Problem.operation
    side: str
    where: str  # fnmatch pattern on Problem.where
    reason: str

    def covers(self, problem: Problem) -> bool:
        return (fnmatch.fnmatchcase(problem.operation, self.operation)
                and problem.side == self.side
                and fnmatch.fnmatchcase(problem.where, self.where))


_SDK_NULLS = ("the SDK's build_create_instance_payload sends every option it knows, unset "
              "ones as JSON null; the description types them without null")

# The one list of the description's slips that we accept. Besides these, paths are
# compared without their trailing slash: the SDK adds one to every path and the
# description lists none.
WAIVERS: tuple[Waiver, ...] = (
    Waiver("POST /api/v0/bundles", "request", "type",
           "the SDK sends type 'on-demand'; the description's enum says 'ondemand' while "
           "its own request example says 'on-demand'"),
    Waiver("POST /api/v0/bundles", "request", "order",
           "the description puts minItems/maxItems 2 on the list of orderings instead of on "
           "each [field, direction] pair; the SDK sends one pair or more"),
    Waiver("PUT /api/v0/asks/{id}", "request", "env",
           "the SDK sends env as an object of variables (it parses the Docker flag string "
           "itself); the description types it as the flag string"),
    Waiver("PUT /api/v0/asks/{id}", "request", "runtype",
           "the SDK's resolve_runtype makes 'ssh_direc ssh_proxy' (direct SSH plus the "
           "proxy), a combination the description's enum does not list"),
    *(Waiver("PUT /api/v0/asks/{id}", "request", name, _SDK_NULLS)
      for name in ("price", "onstart", "image_login", "jupyter_dir", "template_hash_id",
                   "user")),
    Waiver("DELETE /api/v0/instances", "path", "*",
           "bulk destroy (the SDK's destroy_instance with a list: DELETE /instances/ with "
           "instance_ids) is not in the description; our teardown confirms each id on its "
           "own and falls back to single destroys when it is refused"),
    Waiver("GET /api/v0/instances/{id}", "response", "instances",
           "a destroyed instance answers {\"instances\": null}: the description is silent, "
           "the SDK's show_instance returns None for it"),
    Waiver("GET /api/v0/instances/{id}", "response", "instances.extra_env*",
           "the Instance schema types extra_env as strings; the v1 listing's schema and the "
           "SDK's show_instance (which builds a dict from it) use [name, value] pairs"),
    Waiver("GET /api/v0/instances/{id}", "response", "instances.ports*",
           "the Instance schema types ports as a list of integers; the v1 listing's schema "
           "(object of port mappings, or null) is what the SDK and our plugin read"),
)


def unwaived(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if not any(w.covers(p) for w in WAIVERS)]


# --------------------------------------------------------------------------- checking


@cache
def _templates() -> list[tuple[re.Pattern[str], str]]:
    """The description's paths as regexes, literal ones first (most specific wins)."""
    paths = [str(p) for p in (openapi().spec / "paths").keys()]  # noqa: SIM118 (not a dict)
    ordered = sorted(paths, key=lambda p: (p.count("{"), -len(p)))
    return [(re.compile("^" + re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(p)) + "$"), p)
            for p in ordered]


def operation_of(method: str, path: str) -> str:
    """``"METHOD /template"`` for a concrete path (the raw path when undocumented)."""
    for regex, template in _templates():
        if regex.match(path):
            return f"{method.upper()} {template}"
    return f"{method.upper()} {path}"


def as_request(ex: Exchange) -> Any:
    from openapi_core.testing import MockRequest

    url = urlsplit(ex.target)
    path = url.path.rstrip("/") or "/"
    content_type = ex.request_headers.get("Content-Type", "application/json")
    return MockRequest(HOST, ex.method, path, args=dict(parse_qsl(url.query)),
                       headers=ex.request_headers, data=ex.request_body or None,
                       content_type=content_type.split(";")[0])


def as_response(ex: Exchange) -> Any:
    from openapi_core.testing import MockResponse

    return MockResponse(ex.response_body, status_code=ex.status,
                        content_type=ex.content_type.split(";")[0])


def problems(ex: Exchange) -> list[Problem]:
    """Every mismatch of one exchange with the description."""
    api = openapi()
    request = as_request(ex)
    op = operation_of(ex.method, request.path)
    found: list[Problem] = []
    for error in api.unmarshal_request(request).errors:
        found += _explain(op, "request", error)
    if any(p.side == "path" for p in found):
        return found
    for error in api.unmarshal_response(request, as_response(ex)).errors:
        found += _explain(op, "response", error)
    return found


def _explain(op: str, side: str, error: BaseException) -> list[Problem]:
    """Flatten openapi-core's error into problems with a JSON path each."""
    name = type(error).__name__
    if name in ("PathNotFound", "OperationNotFound", "ServerNotFound"):
        return [Problem(op, "path", "*", f"{name}: {error}")]
    if name == "ResponseNotFound":
        return [Problem(op, "status", "*", str(error))]
    schema_errors = _schema_errors(error)
    if not schema_errors:
        return [Problem(op, side, "*", f"{name}: {error}")]
    out = []
    for se in schema_errors:
        where = ".".join(str(p) for p in se.absolute_path) or "(body)"
        out.append(Problem(op, side, where, se.message))
    return out


def _schema_errors(error: BaseException) -> list[Any]:
    seen: BaseException | None = error
    while seen is not None:
        errs = getattr(seen, "schema_errors", None)
        if errs:
            return list(errs)
        seen = seen.__cause__ or seen.__context__
    return []


def body(ex: Exchange) -> Any:
    try:
        return json.loads(ex.response_body)
    except ValueError:
        return None
