"""``snakemake-vastai plan``: what a run would rent and cost, renting
nothing.

Run it in the workflow directory with the options (and profile) of the real run::

    snakemake-vastai plan --jobs 4 --profile gpu [--json]

Why not ``snakemake --executor vastai --dry-run``: Snakemake 9 replaces the executor
with its built-in ``dryrun`` executor when ``--dry-run`` is given (``args_to_api`` in
``snakemake/cli.py``), so no executor plugin is ever created in a dry run and cannot
print anything. Instead, ``plan`` starts the real ``snakemake --executor vastai`` with
the given arguments and ``SNAKEMAKE_VASTAI_PLAN`` naming a fresh private directory
(with a nonce, see ``plan_safety.py``: a stray variable fails a real run instead of
turning it into a plan): Snakemake parses the profile and options and builds the DAG
exactly as for the run, creates our executor, and the executor (``__init__.py``) writes
the plan there and stops before :func:`~.startup.start_run` (so no journal run, no
reconcile, no instance). Snakemake then reports that stop as an error, which ``plan``
hides when the plan was written.

Per rule the plan shows the job count, the offers its jobs would get now (the same
query the run builds, rule overrides included), and a cost range: time per job is the
rule's ``runtime`` resource (else :data:`DEFAULT_RUNTIME_MINUTES`), plus the boot time
(the middle half of the boots measured by earlier runs in the journal) and the upload
time measured there (else stated defaults); money is that time at the offers'
``dph_total`` plus the upload's bytes (existing inputs and the uncompressed sources) at
their ``inet_down_cost``. Outputs and inputs that do not exist yet are not counted, nor
are jobs a checkpoint has not yet revealed (Snakemake itself does not know them before
the checkpoint runs).

Problems: a rule no offer matches, a rule whose settings are invalid, a balance below the
estimate, a file a rule's command names that git does not track and no rule declares
(it would be missing on the instance), and a price cap that leaves fewer offers than
``--jobs`` (jobs then wait for each other's machines). Exit code 1 when a problem would
stop the run, 2 when Snakemake failed before the plan was made, else 0.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..costs import ledger
from ..costs.ledger import BYTES_PER_GB
from .plan_safety import plan_directory, snakemake_argv

DEFAULT_RUNTIME_MINUTES = 10.0  # a rule without a runtime resource, for the estimate
DEFAULT_BOOT_SECONDS = (60.0, 300.0)  # Vast.ai boots take 1-5 min (image pull included)
DEFAULT_UPLOAD_RATE = 20e6  # bytes/s until a run has measured one
OFFERS_SHOWN = 3
SEARCH_LIMIT = 64
MIN_UPLOAD_MEASURE = 1024**2  # transfers smaller than this say nothing about the rate


@dataclass
class Problem:
    kind: str  # no_offer, settings, balance, untracked, price_cap, not_git
    message: str
    stops: bool  # would stop (or fail) the run
    rule: str | None = None


@dataclass
class RulePlan:
    rule: str
    jobs: int
    query: str = ""
    offers_matching: int = 0
    offers: list[dict] = field(default_factory=list)
    runtime_seconds: float = 0.0
    runtime_source: str = "default"
    upload_bytes: int = 0
    cost_low: float = 0.0
    cost_high: float = 0.0


# -- inside snakemake: building the plan --------------------------------------------------
def write_plan_and_stop(executor: Any) -> None:
    """Called by the Executor when SNAKEMAKE_VASTAI_PLAN is set: write the plan (only
    for a ``plan`` waiting for it, see plan_safety.py), then stop Snakemake."""
    from snakemake_interface_common.exceptions import WorkflowError

    from .plan_safety import NotAPlan, plan_target, write_new

    try:
        target = plan_target(os.environ)  # before anything else: a stray variable stops here
        plan = make_plan(executor.workflow, Path(os.getcwd()))
        write_new(target, json.dumps(plan, indent=2, default=str))
    except NotAPlan as exc:
        raise WorkflowError(str(exc)) from None
    raise WorkflowError("vastai plan written; nothing was rented (this stop is the plan's)")


def make_plan(workflow: Any, workdir: Path) -> dict:
    """Everything the plan says, as plain data (the ``--json`` output)."""
    from snakemake_interface_common.exceptions import WorkflowError

    from ..run.startup import run_settings
    from ..settings import resolve_api_key, resolve_api_url

    problems: list[Problem] = []
    settings = workflow.executor_settings
    container = getattr(getattr(workflow, "remote_execution_settings", None),
                        "container_image", None)
    nodes = int(getattr(workflow.resource_settings, "nodes", None) or 1)
    try:
        resolved = run_settings(settings, container)
    except WorkflowError as exc:
        problems.append(Problem("settings", str(exc), True))
        return _result([], problems, None, nodes, {}, resolved_url=None)
    start_checks(workflow, workdir, resolved, problems)
    jobs = needrun_jobs(workflow)
    measured = measured_times(workdir)
    try:
        key = resolve_api_key(settings)
    except WorkflowError as exc:
        problems.append(Problem("api_key", str(exc), True))
        api, balance = None, None
    else:
        api, balance = _account(key, resolve_api_url(settings), problems)
    sources = source_bytes(workflow, workdir)
    rules = []
    for rule, members in sorted(_by_rule(jobs).items()):
        rules.append(plan_rule(rule, members, resolved, api, nodes, measured, problems,
                               sources))
    problems.extend(untracked_problems(workflow, jobs, workdir))
    return _result(rules, problems, balance, nodes, measured, resolved_url=resolved.api_url)


def _result(rules: list[RulePlan], problems: list[Problem], balance: float | None,
            nodes: int, measured: dict, *, resolved_url: str | None) -> dict:
    from ..run.redaction import scrub

    low = sum(r.cost_low for r in rules)
    high = sum(r.cost_high for r in rules)
    if balance is not None and rules and balance < high:
        problems.append(Problem(
            "balance", f"account balance ${balance:.2f} is below the high estimate "
            f"${high:.2f}: the run may stop when the credit runs out (add credit at "
            "https://cloud.vast.ai/billing/)", True))
    return {
        "api_url": resolved_url, "jobs_limit": nodes, "balance": balance,
        "estimate": {"low": low, "high": high},
        "assumptions": {
            "default_runtime_minutes": DEFAULT_RUNTIME_MINUTES,
            "boot_seconds": measured.get("boot", list(DEFAULT_BOOT_SECONDS)),
            "boot_source": "measured" if "boot" in measured else "default",
            "upload_bytes_per_second": measured.get("upload_rate", DEFAULT_UPLOAD_RATE),
            "upload_source": "measured" if "upload_rate" in measured else "default",
        },
        "rules": [asdict(r) for r in rules],
        "problems": [{**asdict(p), "message": scrub(p.message)} for p in problems],
        "stops": any(p.stops for p in problems),
    }


class _Quiet:
    """A logger for check_git: its warning lists every untracked file, declared inputs
    too; the plan names only the untracked files a rule's command needs (see
    :func:`untracked_problems`). A workflow outside git is reported as the run reports
    it: what ships and what git would have added."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems

    def warning(self, event: str, **_kw: Any) -> None:
        from ..run.startup import NOT_GIT

        if NOT_GIT in event:
            self.problems.append(Problem("not_git", event, False))

    def info(self, event: str, **_kw: Any) -> None:
        pass


def start_checks(workflow: Any, workdir: Path, resolved: Any,
                 problems: list[Problem]) -> None:
    """The run's own start-up checks that need no API (:func:`~.startup.preflight`, the
    same function the run calls): what fails there stops the run before renting, so the
    plan reports it."""
    from ..run.startup import preflight

    def found(exc: Exception) -> None:
        problems.append(Problem("start", str(exc), True))

    quiet: Any = _Quiet(problems)
    preflight(workflow, workflow.executor_settings, resolved.forward_credentials, workdir,
              quiet, found)


def needrun_jobs(workflow: Any) -> list[Any]:
    """The single jobs Snakemake would run (group members one by one)."""
    jobs = []
    for job in workflow.dag.needrun_jobs():
        jobs.extend(job.jobs if job.is_group() else [job])
    return [j for j in jobs if not getattr(j, "is_local", False)]


def _by_rule(jobs: list[Any]) -> dict[str, list[Any]]:
    groups: dict[str, list[Any]] = defaultdict(list)
    for job in jobs:
        groups[str(job.rule.name)].append(job)
    return groups


def _account(key: str, url: str, problems: list[Problem]) -> tuple[Any, float | None]:
    """The API client and the account's credit (None, with a problem, if unreachable)."""
    from ..run.runtime import account_credit
    from ..vastai.api import VastAPI, VastError

    api = VastAPI(key, url)
    try:
        return api, account_credit(api.check_access())
    except VastError as exc:
        problems.append(Problem("api", f"Vast.ai API at {url}: {exc}", True))
        return None, None


def plan_rule(rule: str, jobs: list[Any], resolved: Any, api: Any, nodes: int,
              measured: dict, problems: list[Problem], sources: int = 0) -> RulePlan:
    """One rule: its query, the offers it would get, the cost range of its jobs."""
    from ..vastai.api import VastError
    from ..vastai.offers import build_offer_request
    from ..workflow.rule_settings import container_of, job_settings
    from ..workflow.validation import ConfigError, validate_job_resources

    plan = RulePlan(rule=rule, jobs=len(jobs))
    first = jobs[0]
    resources = dict(first.resources)
    try:
        for job in jobs:
            validate_job_resources(rule, dict(job.resources), int(job.threads or 1))
        own = job_settings(image=resolved.image, max_runtime=resolved.max_runtime,
                           offer=resolved.offer_settings, resources=resources, rule=rule,
                           container_url=container_of(first))
        request = build_offer_request(own.offer, resources, int(first.threads or 1),
                                      rule=rule, limit=SEARCH_LIMIT)
    except ConfigError as exc:
        problems.append(Problem("settings", str(exc), True, rule))
        return plan
    plan.query = request.text
    plan.runtime_seconds, plan.runtime_source = runtime_of(resources)
    plan.upload_bytes = sum(input_bytes(job) + sources for job in jobs)
    if api is None:
        return plan
    try:
        offers = api.search_offers_unshared(request.query, request.order, SEARCH_LIMIT,
                                            request.storage_gb)
    except VastError as exc:
        problems.append(Problem("api", f"rule {rule}: the offer search failed: {exc}", True,
                                rule))
        return plan
    plan.offers_matching = len(offers)
    plan.offers = [offer_view(o) for o in offers[:OFFERS_SHOWN]]
    if not offers:
        problems.append(Problem("no_offer", f"rule {rule}: no Vast.ai offer matches "
                                f"{request.text}", True, rule))
        return plan
    wanted = min(len(jobs), nodes)
    if own.offer.max_price is not None and len(offers) < wanted:
        problems.append(Problem(
            "price_cap", f"rule {rule}: the price cap ${own.offer.max_price:g}/h leaves "
            f"{len(offers)} offer(s) for {wanted} jobs that --jobs {nodes} would run at "
            "once; the rest wait for a machine (and fail after repeated searches if none "
            "frees up): raise the cap or lower --jobs", False, rule))
    plan.cost_low, plan.cost_high = cost_range(plan, offers[:max(wanted, 1)], measured)
    return plan


def runtime_of(resources: dict) -> tuple[float, str]:
    """Seconds per job from the ``runtime`` resource (minutes), else the default."""
    minutes = resources.get("runtime")
    try:
        if minutes is not None and float(minutes) > 0:
            return float(minutes) * 60.0, "runtime resource"
    except (TypeError, ValueError):
        pass
    return DEFAULT_RUNTIME_MINUTES * 60.0, "default"


def source_bytes(workflow: Any, workdir: Path) -> int:
    """The workflow's sources, uncompressed: every SSH-mode job uploads their archive (an
    upper bound; the archive is compressed). The listing is the run's own, deploy scope
    included, as :func:`start_checks` installed it."""
    from ..transports.progress import planned_bytes

    try:
        return planned_bytes([(workdir / f, "") for f in workflow.dag.get_sources()])
    except Exception:  # Snakemake internals or git: the estimate just leaves them out
        return 0


def input_bytes(job: Any) -> int:
    """Bytes of the job's inputs that exist now (upstream outputs are not made yet)."""
    from ..transports.progress import planned_bytes

    return planned_bytes([(str(f), "") for f in job.input if os.path.exists(str(f))])


def cost_range(plan: RulePlan, offers: list[dict], measured: dict) -> tuple[float, float]:
    """Low: every job on the cheapest offer with a quick boot (the lower quartile of
    the measured boots); high: at the dearest of the offers the concurrent jobs would
    take, with a slow one (the upper quartile; see :func:`boot_range`)."""
    boot_low, boot_high = measured.get("boot", DEFAULT_BOOT_SECONDS)
    rate = measured.get("upload_rate", DEFAULT_UPLOAD_RATE)
    per_job_bytes = plan.upload_bytes / max(plan.jobs, 1)
    upload_seconds = per_job_bytes / rate

    def cost(offer: dict, boot: float) -> float:
        seconds = boot + plan.runtime_seconds + upload_seconds
        bandwidth = per_job_bytes * float(offer.get("inet_down_cost") or 0.0) / BYTES_PER_GB
        return plan.jobs * (ledger.dollars_at(offer.get("dph_total"), seconds) + bandwidth)

    cheapest = min(offers, key=lambda o: float(o.get("dph_total") or 0.0))
    dearest = max(offers, key=lambda o: cost(o, boot_high))
    return cost(cheapest, boot_low), cost(dearest, boot_high)


def offer_view(offer: dict) -> dict:
    return {
        "id": offer.get("id"), "gpu": f"{offer.get('num_gpus') or 1}x {offer.get('gpu_name')}",
        "dph_total": offer.get("dph_total"), "geolocation": offer.get("geolocation"),
        "reliability": offer.get("reliability2", offer.get("reliability")),
        "inet_down_cost": offer.get("inet_down_cost"), "inet_up_cost": offer.get("inet_up_cost"),
    }


def measured_times(workdir: Path) -> dict:
    """Boot seconds (:func:`boot_range`) and upload rate (median) from earlier runs in
    the journal; {} when there is no journal or nothing measured yet."""
    from ..journal.store import RELATIVE_PATH, Journal

    path = workdir / RELATIVE_PATH
    if not path.exists():
        return {}
    try:
        journal = Journal(path)
    except Exception:  # a damaged journal must not stop a plan; defaults apply
        return {}
    try:
        instances = journal.instances()
        transfers = journal.transfers()
    finally:
        journal.close()
    out: dict = {}
    boots = [float(r["contacted_at"]) - float(r["requested_at"]) for r in instances
             if r.get("contacted_at") and r.get("requested_at")]
    if boots:
        out["boot"] = boot_range(boots)
    rates = [t["bytes_done"] / (t["updated_at"] - t["started_at"]) for t in transfers
             if t["direction"] == "upload" and t["ended_at"]
             and t["bytes_done"] >= MIN_UPLOAD_MEASURE and t["updated_at"] > t["started_at"]]
    if rates:
        out["upload_rate"] = statistics.median(rates)
    return out


def boot_range(boots: list[float]) -> list[float]:
    """The middle half of the measured boots: lower to upper quartile.

    Not the fastest and slowest ever: one boot that took half an hour (a slow image
    pull, a host that hung) would make every later high estimate pay for it, and a
    balance warning out of it. Among five or more boots, one outlier on either side
    does not move the quartiles; a single boot is both ends.
    """
    if len(boots) < 2:
        return [boots[0], boots[0]]
    low, _median, high = statistics.quantiles(boots, n=4, method="inclusive")
    return [low, high]


def untracked_problems(workflow: Any, jobs: list[Any], workdir: Path) -> list[Problem]:
    """Files a rule's command names that git does not track and no rule declares: the
    instance gets git-tracked sources and declared inputs only, so they would be missing."""
    from ..workflow.sources import SourcesError, git_files, registered_sources

    try:
        untracked = [f for f in git_files(workdir, "--others", "--exclude-standard")
                     if not f.startswith(".snakemake/")]
    except SourcesError:
        return []
    if not untracked:
        return []
    declared = {os.path.normpath(str(f)) for job in jobs for f in job.input}
    try:
        shipped = {os.path.normpath(f) for f in registered_sources(workflow)}
    except Exception:  # Snakemake internals: never block a plan on them
        shipped = set()
    loose = [f for f in untracked if os.path.normpath(f) not in declared
             and os.path.normpath(f) not in shipped]
    problems, seen = [], set()
    for job in jobs:
        text = " ".join(str(x) for x in (getattr(job.rule, "shellcmd", None) or "",
                                         *dict(getattr(job, "params", {}) or {}).values()))
        for f in loose:
            if names_path(text, f) and (job.rule.name, f) not in seen:
                seen.add((job.rule.name, f))
                problems.append(Problem(
                    "untracked", f"rule {job.rule.name} names {f}, which git does not track "
                    "and no rule declares as input: it will be missing on the instance "
                    f"('git add {f}' or declare it as an input)", True, str(job.rule.name)))
    return problems


def names_path(text: str, path: str) -> bool:
    """Whether ``text`` names ``path`` as a whole path, not inside a longer one: ``a.txt``
    is not named by ``data.txt``, ``a.txt.gz`` or ``x/a.txt``; it is by ``./a.txt``,
    ``'a.txt'`` and ``{workflow.basedir}/a.txt``."""
    before = r"(?:(?<![\w.\-/~$])|(?<=\}/))(?:\./)?"
    after = r"(?![\w\-/]|\.\w)"
    return re.search(before + re.escape(path) + after, text) is not None


# -- outside snakemake: the command ---------------------------------------------------------
USAGE = """usage: snakemake-vastai plan [--json] [SNAKEMAKE ARGS...]

Show, per rule, the offers its jobs would get now, the job count and an estimated cost
range, the account balance, and the problems that would stop the run. Nothing is rented.
Give the options (and --profile) of the real run; '--executor vastai' is implied.
Arguments that would make Snakemake do anything but run (another --executor, --dry-run,
--touch, --unlock, --delete-all-output, ...) are refused.
Exit code 1 when a problem would stop the run, 2 when Snakemake failed before planning
or an argument was refused.
"""


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0
    as_json = "--json" in argv
    args = [a for a in argv if a != "--json"]
    stop = _refused(args)
    if stop is not None:
        return stop
    with plan_directory() as (target, plan_env):
        done = subprocess.run([sys.executable, *snakemake_argv(args)],
                              env={**os.environ, **plan_env}, capture_output=True, text=True)
        try:
            plan = json.loads(target.read_text())
        except (OSError, ValueError):
            sys.stderr.write(done.stderr[-6000:] or done.stdout[-6000:])
            print("\nplan: snakemake stopped before the plan was made (see above); "
                  "nothing was rented", file=sys.stderr)
            return 2
    print(json.dumps(plan, indent=2) if as_json else render(plan))
    return 1 if plan["stops"] else 0


def _refused(args: list[str]) -> int | None:
    """Exit code 2 with the reason when the arguments would not make a plain run."""
    from .plan_safety import ArgumentsUnreadable, refusal

    try:
        reason = refusal(args)
    except ArgumentsUnreadable as exc:
        said = str(exc)
        errors = [ln for ln in said.splitlines() if "error:" in ln]  # not argparse's usage
        sys.stderr.write("\n".join(errors) + "\n" if errors else said[-3000:])
        print("\nplan: snakemake stopped before the plan was made (see above); "
              "nothing was rented", file=sys.stderr)
        return 2
    if reason is None:
        return None
    print(f"plan: {reason}. Nothing was run or rented.", file=sys.stderr)
    return 2


def render(plan: dict) -> str:
    """The plan as people read it: one block per rule, then totals and problems."""
    from . import tables

    a = plan["assumptions"]
    lines = [f"vastai plan ({plan['api_url']}; --jobs {plan['jobs_limit']}); nothing rented",
             ""]
    for r in plan["rules"]:
        runtime = f"{r['runtime_seconds'] / 60:g} min ({r['runtime_source']})"
        lines.append(f"rule {r['rule']}: {r['jobs']} job(s), {r['offers_matching']} matching "
                     f"offer(s), runtime {runtime}, uploads {_mb(r['upload_bytes'])}, "
                     f"est. ${r['cost_low']:.4f} - ${r['cost_high']:.4f}")
        if r["offers"]:
            rows = [[o["id"], o["gpu"], f"${float(o['dph_total'] or 0):.3f}",
                     o["geolocation"], f"{float(o['reliability'] or 0):.3f}",
                     f"${float(o['inet_down_cost'] or 0):.4f}"] for o in r["offers"]]
            table = tables.render(["  OFFER", "GPU", "$/H", "REGION", "RELIABILITY",
                                   "$/GB IN"], rows, right={2, 4, 5})
            lines.extend("  " + ln for ln in table.splitlines())
        lines.append("")
    balance = "unknown" if plan["balance"] is None else f"${plan['balance']:.2f}"
    boot = a["boot_seconds"]
    lines.append(f"estimate: ${plan['estimate']['low']:.4f} - ${plan['estimate']['high']:.4f}"
                 f"; balance {balance}")
    lines.append(f"assumed: boot {boot[0]:.0f}-{boot[1]:.0f} s ({a['boot_source']}), upload "
                 f"{_mb(a['upload_bytes_per_second'])}/s ({a['upload_source']}), "
                 f"{a['default_runtime_minutes']:g} min per job without a runtime resource; "
                 "outputs and inputs not yet made are not counted")
    if plan["problems"]:
        lines.append("")
        for p in plan["problems"]:
            lines.append(f"{'ERROR' if p['stops'] else 'warning'}: {p['message']}")
    else:
        lines.append("no problems found")
    return "\n".join(lines)


def _mb(n: float) -> str:
    from ..transports.progress import human_bytes

    return human_bytes(n)
