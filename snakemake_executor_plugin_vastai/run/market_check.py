"""Before anything is rented: can the market serve every rule of the run at all?

A rule whose request no offer matches (a misspelt GPU, ``gpu=64``) used to be found only
when its first job searched, after the jobs before it had been rented and paid for. At
the start of a run each distinct request of the jobs Snakemake will run is searched once
(rules asking the same share the search); a rule that nothing on the market and no live
instance of this workflow could serve stops the run, naming the rule, the closest offers
and, for a GPU name, the market's own names that come closest.

GPU names are matched the way a person reads them: ``rtx_4090``, ``RTX 4090`` and
``Rtx4090`` are the same GPU. When the request's spelling matches nothing but one of the
market's names is the same GPU, the run uses the market's spelling from then on
(:attr:`MarketCheck.gpu_names`, applied by ``vastai/market.OfferMarket.request_for``).
"""

from __future__ import annotations

import difflib
import json
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..vastai.offers import (
    OfferRequest,
    build_offer_request,
    gpu_key,
    requested_gpu_name,
    with_gpu_name,
)
from ..vastai.query import offer_misfit
from ..workflow.rule_settings import container_of, job_settings
from ..workflow.validation import ConfigError

CLOSEST_SHOWN = 3
NAMES_LIMIT = 500  # offers read to learn the market's GPU names (one search)
# Filters dropped to find the closest offers: what the job asks of the machine; the
# account-wide ones (verified, rentable, the price cap, the region) stay.
MACHINE_FIELDS = ("gpu_name", "num_gpus", "cpu_cores_effective", "cpu_ram", "disk_space",
                  "gpu_ram", "compute_cap", "cuda_max_good", "cuda_vers")


class MarketCheckError(RuntimeError):
    """A rule nothing on the market can serve; the message names the rule(s)."""


@dataclass
class RuleRequest:
    """One distinct request and the rules that ask it."""

    request: OfferRequest
    rules: list[str] = field(default_factory=list)


@dataclass
class MarketCheck:
    """What the check learnt: the market's spelling of GPU names the run asked for."""

    gpu_names: dict[str, str] = field(default_factory=dict)  # gpu_key -> market spelling
    searches: int = 0


def rule_requests(jobs: Iterable[Any], resolved: Any) -> dict[str, RuleRequest]:
    """The distinct offer requests of ``jobs`` (group members one by one), keyed by query.
    A job whose resources cannot be read yet (they depend on an upstream output) is left to
    its own search; a bad setting is the start checks' to report, not this one's."""
    found: dict[str, RuleRequest] = {}
    for job in jobs:
        rule = str(job.rule.name)
        try:
            resources = dict(job.resources)
            own = job_settings(image=resolved.image, max_runtime=resolved.max_runtime,
                               offer=resolved.offer_settings, resources=resources, rule=rule,
                               container_url=container_of(job))
            request = build_offer_request(own.offer, resources, int(job.threads or 1),
                                          rule=rule, limit=1)
        except ConfigError:
            continue
        except Exception:  # Snakemake internals (a resource that needs an upstream output)
            continue
        key = json.dumps([request.query, request.storage_gb], sort_keys=True, default=str)
        entry = found.setdefault(key, RuleRequest(request))
        if rule not in entry.rules:
            entry.rules.append(rule)
    return found


def needrun_jobs(workflow: Any) -> list[Any]:
    """The jobs Snakemake will run remotely (group members one by one)."""
    jobs: list[Any] = []
    for job in workflow.dag.needrun_jobs():
        jobs.extend(job.jobs if job.is_group() else [job])
    return [j for j in jobs if not getattr(j, "is_local", False)]


def held_offers(journal_rows: Iterable[dict]) -> list[dict]:
    """The offers (journaled facts) of this workflow's instances not known destroyed."""
    offers = []
    for row in journal_rows:
        try:
            offer = json.loads(row.get("offer") or "{}")
        except (TypeError, ValueError):
            offer = {}
        offers.append(offer if isinstance(offer, dict) else {})
    return offers


def check_market(requests: dict[str, RuleRequest], search: Callable[..., list[dict]],
                 held_offers: Iterable[dict]) -> MarketCheck:
    """Search each request once; raise MarketCheckError for the ones nothing can serve.

    ``search(query, order, limit, storage_gb)`` asks the market; ``held_offers`` are the
    offers of this workflow's live instances (a restart may re-attach to one that holds
    the only matching machine).
    """
    result = MarketCheck()
    held = list(held_offers)
    problems: list[str] = []
    by_rule: dict[str, list[str]] = defaultdict(list)
    for entry in requests.values():
        request = entry.request
        if _answers(search, request, result):
            continue
        if any(offer_misfit(o, request.query, unknown_fits=True) is None for o in held):
            continue
        around = _relaxed(search, request, result)  # one search serves both below
        if _market_spelling(search, request, result, around) is not None:
            continue
        problem = _diagnose(request, around)
        for rule in entry.rules:
            by_rule[rule].append(problem)
    for rule, found in sorted(by_rule.items()):
        problems.extend(f"rule {rule}: {text}" for text in found)
    if problems:
        raise MarketCheckError(
            "no Vast.ai offer can serve these rules, so nothing was rented:\n  "
            + "\n  ".join(problems))
    return result


def _answers(search: Callable[..., list[dict]], request: OfferRequest,
             result: MarketCheck) -> bool:
    result.searches += 1
    return bool(search(request.query, request.order, 1, request.storage_gb))


def _market_spelling(search: Callable[..., list[dict]], request: OfferRequest,
                     result: MarketCheck, around: list[dict]) -> str | None:
    """The request's GPU under the market's spelling, if that one matches (None: no)."""
    wanted = requested_gpu_name(request)
    if wanted is None:
        return None
    names = _names(around)
    same = [n for n in names if gpu_key(n) == gpu_key(wanted) and n != wanted]
    for name in same:
        renamed = with_gpu_name(request, name)
        if _answers(search, renamed, result):
            result.gpu_names[gpu_key(wanted)] = name
            return name
    return None


def _diagnose(request: OfferRequest, around: list[dict]) -> str:
    """No offer matches: say what was asked, the closest offers and, for a GPU name, the
    market's names that come closest (``around``: the market without the machine filters,
    best first)."""
    text = f"no Vast.ai offer matches {request.text}"
    wanted = requested_gpu_name(request)
    if wanted is not None:
        names = _names(around)
        close = difflib.get_close_matches(gpu_key(wanted), {gpu_key(n): n for n in names},
                                          3, 0.6)
        spelled = {gpu_key(n): n for n in names}
        if close:
            text += "; did you mean " + " or ".join(repr(spelled[c]) for c in close) + "?"
        elif names:
            text += f"; the market offers {', '.join(sorted(names)[:12])}"
    closest = around[:CLOSEST_SHOWN]
    if closest:
        text += "; closest offers: " + ", ".join(_brief(o) for o in closest)
    else:
        text += ("; no offer at all passes the run's other filters (--vastai-max-price, "
                 "--vastai-geolocation, --vastai-reliability, --vastai-search-query)")
    return text + (" (loosen the rule's resources, --vastai-max-price, --vastai-gpu-name or "
                   "--vastai-geolocation)")


def _names(offers: list[dict]) -> list[str]:
    return sorted({str(o["gpu_name"]) for o in offers if o.get("gpu_name")})


def _relaxed(search: Callable[..., list[dict]], request: OfferRequest,
             result: MarketCheck) -> list[dict]:
    """The request without what it asks of the machine: the market around it, best first."""
    query = {k: v for k, v in request.query.items() if k not in MACHINE_FIELDS}
    result.searches += 1
    return list(search(query, request.order, NAMES_LIMIT, 0.0))


def _brief(offer: dict) -> str:
    return (f"{offer.get('num_gpus', '?')}x {offer.get('gpu_name', '?')} at "
            f"${float(offer.get('dph_total') or 0.0):.3f}/h")
