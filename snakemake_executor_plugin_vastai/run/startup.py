"""Turning Snakemake's executor object into a ready :class:`~.runtime.Run`.

Everything that can be wrong with the user's input is checked here, once,
before the first instance is rented: settings, every scheduled job's
resources, the API key and the API URL. Errors are Snakemake
``WorkflowError``s whose message names the option, rule or file at fault.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from snakemake_interface_common.exceptions import WorkflowError

from ..journal.store import RELATIVE_PATH, WORKFLOW_ID_FILE, Journal, JournalCorrupt, JournalError
from ..settings import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_IMAGE,
    DEFAULT_OFFER_WAIT,
    DEFAULT_ORPHAN_TIMEOUT,
    RunSettings,
    __version__,
    resolve_api_key,
    resolve_api_url,
)
from ..transports.progress import MIN_INTERVAL
from ..transports.storage.features import check_storage_features
from ..transports.storage.setup import (
    OutputProbe,
    StorageCheckFailed,
    StorageMode,
    StorageSetup,
    check_storage,
    credential_environment,
    deploy_command,
    storage_cli_args,
    storage_mode,
)
from ..vastai import bids
from ..vastai.api import VastAuthError, VastError
from ..vastai.offers import OfferSettings
from ..workflow import checkpoints
from ..workflow.deploy import Scope, apply_scope
from ..workflow.rule_settings import container_of, validate_rule_settings
from ..workflow.sources import (
    SourcesError,
    git_files,
    in_git,
    newline_paths,
    registered_sources,
    unshipped_files,
)
from ..workflow.sources import install as install_sources
from ..workflow.sources import layout as source_layout
from ..workflow.validation import (
    ConfigError,
    parse_image_reference,
    validate_job_resources,
    validate_settings,
)
from . import market_check, orphans
from .logs import SECRETS, PluginLogger
from .market_check import MarketCheckError
from .redaction import add_environment
from .runtime import Run, SnakemakeHooks


def resolve_image(settings: Any, container_image: str | None = None) -> str:
    """--vastai-image, else an explicitly given --container-image, else Vast.ai's PyTorch.

    Snakemake's own default container image (snakemake/snakemake) has neither CUDA
    nor the tools jobs expect, so it counts as not given (as in the 0.1.4 plugin).
    """
    image = getattr(settings, "image", None)
    if image:
        return str(image)
    if container_image and not str(container_image).startswith("snakemake/snakemake"):
        return parse_image_reference(container_image, "--container-image")
    return DEFAULT_IMAGE


def run_settings(settings: Any, container_image: str | None = None,
                 remote_settings: Any = None) -> RunSettings:
    """Validated, resolved settings; raises WorkflowError naming the bad option."""
    try:
        validate_settings(settings)
        offer_settings = OfferSettings.from_executor_settings(settings)
        image = resolve_image(settings, container_image)
        bid_settings = bids.settings_from(settings, remote_settings)
    except ConfigError as exc:
        raise WorkflowError(str(exc)) from None
    return RunSettings(
        api_url=resolve_api_url(settings), image=image, disk=float(settings.disk),
        boot_timeout=float(settings.boot_timeout), keep_instances=bool(settings.keep_instances),
        forward_credentials=not settings.no_forward_credentials,
        status_interval=float(settings.status_interval),
        offline_grace=float(settings.offline_grace), offer_settings=offer_settings,
        on_restart=str(getattr(settings, "on_restart", "resume")),
        max_spend=max_spend(settings), max_runtime=max_runtime(settings),
        max_download_bytes=max_download(settings),
        progress_interval=progress_interval(settings), bids=bid_settings,
        reuse=not bool(getattr(settings, "no_reuse", False)),
        idle_timeout=idle_timeout(settings), offer_wait=offer_wait(settings),
        orphan_timeout=orphan_timeout(settings), keep_warm=keep_warm(settings))


def progress_interval(settings: Any) -> float:
    """--vastai-progress-interval: 0 (no progress lines) or seconds >= 0.5 (shorter
    intervals flood the log; see progress.MIN_INTERVAL)."""
    value = getattr(settings, "progress_interval", 5.0)
    seconds = _number(5.0 if value is None else value)
    if not (seconds == 0 or MIN_INTERVAL <= seconds < float("inf")):
        raise WorkflowError(f"--vastai-progress-interval must be 0 (off) or a number of "
                            f"seconds >= {MIN_INTERVAL:g}, not {value!r}")
    return seconds


def _number(value: Any) -> float:
    """An option's value as a float; -1.0 (refused by every caller's bound) if it is none."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return -1.0


def max_spend(settings: Any) -> float | None:
    """--vastai-max-spend, which must be a positive number of dollars if given."""
    value = getattr(settings, "max_spend", None)
    if value is None:
        return None
    cap = _number(value)
    if not cap > 0:
        raise WorkflowError(f"--vastai-max-spend must be a positive number of dollars, "
                            f"not {value!r}")
    return cap


def max_download(settings: Any) -> int | None:
    """--vastai-max-download: a whole number of bytes >= 0 (0: no cap); unset: None, the
    job's rented disk (settings.download_cap)."""
    value = getattr(settings, "max_download", None)
    if value is None:
        return None
    number = _number(value)
    if not (number >= 0 and number == int(number)):
        raise WorkflowError(f"--vastai-max-download must be a whole number of bytes (0 = no "
                            f"cap), not {value!r}")
    return int(number)


def orphan_timeout(settings: Any) -> float:
    """--vastai-orphan-timeout: seconds without heartbeat before an instance's watchdog
    acts (>= 0; unset: the default)."""
    return _seconds(settings, "orphan_timeout", DEFAULT_ORPHAN_TIMEOUT, "0 = no watchdog")


def keep_warm(settings: Any) -> float:
    """--vastai-keep-warm: seconds idle instances outlive the run. Only with a watchdog to
    end them (no process of ours is alive then) and with warm instances on."""
    seconds = _seconds(settings, "keep_warm", 0.0, "0 = destroy idle instances at the end")
    if seconds and orphan_timeout(settings) == 0:
        raise WorkflowError("--vastai-keep-warm needs the instance watchdog to end the kept "
                            "instances on time: give --vastai-orphan-timeout > 0 (nothing "
                            "was rented)")
    if seconds and (getattr(settings, "no_reuse", False)
                    or getattr(settings, "keep_instances", False)):
        raise WorkflowError("--vastai-keep-warm keeps idle warm instances: it does not go "
                            "with --vastai-no-reuse or --vastai-keep-instances (nothing was "
                            "rented)")
    return seconds


def idle_timeout(settings: Any) -> float:
    """--vastai-idle-timeout: seconds an idle warm instance waits (>= 0; unset: the default)."""
    return _seconds(settings, "idle_timeout", DEFAULT_IDLE_TIMEOUT,
                    "0 = destroy an instance as soon as its job is done")


def offer_wait(settings: Any) -> float:
    """--vastai-offer-wait: seconds a job waits for a matching offer to come free."""
    return _seconds(settings, "offer_wait", DEFAULT_OFFER_WAIT,
                    "0 = fail at once when no matching offer is free")


def _seconds(settings: Any, name: str, default: float, zero: str) -> float:
    """A finite number of seconds >= 0 (unset: ``default``), or an error naming the option."""
    value = getattr(settings, name, None)
    if value is None:
        return default
    seconds = _number(value)
    if not seconds >= 0:  # NaN and negatives; inf: no limit
        option = "--vastai-" + name.replace("_", "-")
        raise WorkflowError(f"{option} must be a number of seconds >= 0 ({zero}), not "
                            f"{value!r}")
    return seconds


def max_runtime(settings: Any) -> float:
    """--vastai-max-runtime: seconds (0 or unset = no cap), never negative."""
    value = getattr(settings, "max_runtime", None)
    if value is None:
        return 0.0
    cap = _number(value)
    if not cap >= 0:
        raise WorkflowError(f"--vastai-max-runtime must be a number of seconds >= 0 "
                            f"(0 = no cap), not {value!r}")
    return cap


def storage_preflight(workflow: Any, forward_credentials: bool
                      ) -> tuple[StorageMode | None, dict[str, str]]:
    """Storage mode's checks (bucket, credentials) and the credentials files to forward.

    All of it before renting: a wrong prefix or a missing key must cost nothing.
    """
    try:
        credential_env = credential_environment(os.environ) if forward_credentials else {}
        mode = storage_mode(workflow)
        if mode is not None:
            problem = check_storage_features(workflow)
            if problem:
                raise StorageCheckFailed(problem)
            check_storage(workflow, mode)
    except StorageCheckFailed as exc:
        raise WorkflowError(str(exc)) from None
    add_environment(credential_env)
    return mode, credential_env


def deploy_sources(workflow: Any, mode: StorageMode, workdir_rel: str = "") -> StorageSetup:
    """Snakemake uploads the run's source archive to the bucket, once per run."""
    try:
        workflow.upload_sources()
        command = deploy_command(workflow)
        storage_args = storage_cli_args(workflow)
        local_prefix = checkpoints.remote_local_prefix(workflow, mode.provider)
    except Exception as exc:
        raise WorkflowError(f"uploading the workflow's sources to {mode.prefix} failed: "
                            f"{type(exc).__name__}: {exc}") from None

    def checkpoint_fetch(job: Any) -> str:
        if not checkpoints.may_consult(job):
            return ""
        return checkpoints.fetch_command(checkpoints.created_queries(workflow), local_prefix,
                                         storage_args)

    return StorageSetup(mode=mode, deploy_command=command, outputs=OutputProbe(),
                        checkpoint_fetch=checkpoint_fetch, workdir_rel=workdir_rel)


def validate_scheduled_jobs(workflow: Any) -> None:
    """Check every job Snakemake plans to run, before anything is rented."""
    dag = getattr(workflow, "dag", None)
    if dag is None:
        return
    try:
        jobs = list(dag.needrun_jobs())
    except Exception:  # the DAG interface is Snakemake-internal; never block on it
        return
    for job in jobs:
        for single in (job.jobs if job.is_group() else [job]):
            try:
                validate_job_resources(single.rule.name, dict(single.resources),
                                       int(single.threads or 1))
                validate_rule_settings(single.rule.name, dict(single.resources),
                                       container_of(single))
            except ConfigError as exc:
                raise WorkflowError(str(exc)) from None
            check_job_paths(single)
        if job.is_group():
            try:
                container_of(job)
            except ConfigError as exc:
                raise WorkflowError(str(exc)) from None


def check_job_paths(job: Any) -> None:
    """A newline in a declared path cannot cross a command line safely: refuse it early."""
    declared = [*job.input, *job.output, *job.log]
    benchmark = getattr(job, "benchmark", None)
    if benchmark:
        declared.append(benchmark)
    bad = newline_paths(str(p) for p in declared)
    if bad:
        raise WorkflowError(
            f"rule {job.rule.name}: the path {bad[0]!r} contains a newline, which the vastai "
            "executor cannot pass to the remote Snakemake; rename it (nothing was rented)")
    for path in [*job.output, *job.log]:
        blocked = unwritable_parent(str(path))
        if blocked is not None:
            raise WorkflowError(
                f"rule {job.rule.name}: output {str(path)!r} cannot be brought home: the "
                f"local {blocked!r} is {_what_blocks(blocked)}, not a directory (fix or "
                "remove it; nothing was rented)")
    for name, value in dict(getattr(job, "wildcards_dict", None) or {}).items():
        if "," in str(value):
            raise WorkflowError(
                f"rule {job.rule.name}: wildcard {name}={str(value)!r} contains a comma, which "
                "Snakemake's remote job arguments (--target-jobs) cannot carry; avoid commas "
                "in wildcard values (nothing was rented)")


def unwritable_parent(path: str) -> str | None:
    """The first existing folder on the way to ``path`` that cannot hold it: a file, or a
    symlink that leads nowhere or to a file (a symlink to a directory is the user's own
    layout and is written through). None when the way is clear."""
    parent = os.path.dirname(os.path.normpath(path))
    parts = [p for p in parent.split(os.sep) if p] if parent else []
    current = os.sep if os.path.isabs(path) else ""
    for part in parts:
        current = os.path.join(current, part) if current else part
        if not os.path.lexists(current):
            return None
        if not os.path.isdir(current):  # follows links: a link to a directory is fine
            return current
    return None


def _what_blocks(path: str) -> str:
    if os.path.islink(path):
        return "a symlink that leads to nothing" if not os.path.exists(path) \
            else "a symlink to a file"
    return "a file"


def scope_sources(workflow: Any, settings: Any, log: PluginLogger) -> Scope:
    """Narrow the source archive to the deploy paths (see deploy.py), checked before renting."""

    def report(shipped: int, total: int, scope: Scope) -> None:
        log.info(f"shipping {shipped} of {total} source files (deploy: "
                 f"{', '.join(scope.patterns)}; plus the Snakefile, includes, config and "
                 "script files)")

    try:
        return apply_scope(workflow, getattr(settings, "deploy_paths", None), report)
    except ConfigError as exc:
        raise WorkflowError(str(exc)) from None


UNTRACKED_SHOWN = 10


NOT_GIT = "is not in a git repository"  # the plan reports this warning (cli/plan.py)


def declared_inputs(workflow: Any) -> set[str]:
    """The input paths the workflow's jobs declare (uploaded as inputs, tracked or not)."""
    try:
        jobs = list(workflow.dag.jobs)
    except (AttributeError, TypeError):  # no DAG built (a test's stand-in workflow)
        return set()
    return {os.path.normpath(str(path)) for job in jobs for path in job.input}


def check_git(workflow: Any, workdir: Path, log: PluginLogger,
              declared: set[str] | frozenset = frozenset()) -> None:
    """Git-tracked files are what is shipped beside what Snakemake knows to be sources.

    Outside git (or without git), the run ships only what Snakemake itself knows (the
    Snakefile and its includes, config files, ``script:``/``notebook:`` files and their
    folders, conda files), as Snakemake's own remote execution does, and says so once,
    naming the files git would have added. Inside git, files git does not track are listed
    in a warning, because a script that is neither tracked nor declared as an input is
    silently missing remotely; ``declared`` inputs are uploaded with their jobs, so they
    are not listed.
    """
    tree = source_layout(workflow, workdir).tree
    if not in_git(tree):
        left = [f for f in unshipped_files(tree, registered_sources(workflow), workdir)
                if os.path.normpath(f) not in declared]  # inputs travel with their jobs
        shown = ", ".join(left[:UNTRACKED_SHOWN])
        more = f" and {len(left) - UNTRACKED_SHOWN} more" if len(left) > UNTRACKED_SHOWN else ""
        named = (f"; {len(left)} other files below it do not ship unless a rule declares "
                 f"them as input: {shown}{more}") if left else ""
        log.warning(f"{tree} {NOT_GIT}: shipping only what Snakemake knows to be sources "
                    "(the Snakefile and its includes, config, script and conda files)"
                    f"{named}; 'git init' and 'git add' files to ship them too")
        return
    try:
        bad = newline_paths(git_files(workdir))
        untracked = [f for f in git_files(workdir, "--others", "--exclude-standard")
                     if not f.startswith(".snakemake/") and os.path.normpath(f) not in declared]
    except SourcesError as exc:
        raise WorkflowError(str(exc)) from None
    if bad:
        raise WorkflowError(
            f"the git-tracked file {bad[0]!r} has a newline in its name, which the vastai "
            "executor cannot ship; rename it or 'git rm --cached' it (nothing was rented)")
    if untracked:
        shown = ", ".join(untracked[:UNTRACKED_SHOWN])
        more = f" and {len(untracked) - UNTRACKED_SHOWN} more" if len(untracked) > 10 else ""
        log.warning(f"{len(untracked)} files in the workflow directory are not tracked by git "
                    f"and will not be shipped unless a rule declares them as input: {shown}"
                    f"{more} ('git add' them if jobs need them)")


def deployment_methods(workflow: Any) -> set[str]:
    """Snakemake's --software-deployment-method values, lower case ("conda", "apptainer")."""
    settings = getattr(workflow, "deployment_settings", None)
    methods = getattr(settings, "deployment_method", None) or ()
    return {str(getattr(m, "name", m)).lower() for m in methods}


def check_apptainer(workflow: Any) -> None:
    """Apptainer cannot run inside a Vast.ai (Docker) instance: say so before renting.

    A rule's ``container: "docker://..."`` becomes its instance image instead, so the
    job runs in that image without Apptainer.
    """
    if "apptainer" not in deployment_methods(workflow):
        return
    try:
        jobs = list(workflow.dag.needrun_jobs())
    except Exception:  # the DAG interface is Snakemake-internal; never block on it
        return
    for job in jobs:
        for single in (job.jobs if job.is_group() else [job]):
            if getattr(single, "container_img_url", None) and not single.is_local:
                raise WorkflowError(
                    f"rule {single.rule.name}: --software-deployment-method apptainer cannot "
                    "work on Vast.ai, whose instances are Docker containers; drop apptainer "
                    "from --software-deployment-method: the rule's container: docker://... "
                    "image becomes its instance image and the job runs in it directly "
                    "(nothing was rented)")


def uses_conda(workflow: Any) -> bool:
    """Whether Snakemake was asked to deploy conda environments (built on the instance)."""
    return "conda" in deployment_methods(workflow)


def open_journal(workdir: Path, log: PluginLogger) -> Journal:
    """The workflow's journal; a corrupt one is moved aside (never overwritten) with a
    warning, and so is one copied along with its workflow directory (see
    :func:`leave_copied_journal`)."""
    # Two runs starting together in a fresh copy must not both set the journal aside:
    # the check, the move and the new home happen under one lock.
    with _home_lock(workdir):
        journal = _open_journal(workdir, log)
        here = str(workdir.resolve())
        home = journal.copied_from(workdir)
        if home is not None:
            journal.close()
            moved = leave_copied_journal(workdir)
            log.warning(f"this workflow directory is a copy of {home} (same journal and label "
                        "prefix): it gets a fresh label prefix, so the two never touch each "
                        f"other's instances; the copied journal is kept at {moved}")
            journal = _open_journal(workdir, log)
        if journal.home() != here:
            journal.set_home(here)
    return journal


@contextlib.contextmanager
def _home_lock(workdir: Path) -> Iterator[None]:
    """An exclusive lock file beside the journal (released when the process dies)."""
    import fcntl

    directory = workdir / RELATIVE_PATH.parent
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(directory / "open.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _open_journal(workdir: Path, log: PluginLogger) -> Journal:
    try:
        return Journal.for_workdir(workdir)
    except JournalCorrupt as exc:
        moved = Journal.move_aside(exc.path)
        log.warning(f"the journal {exc.path} is corrupt ({exc}); it was moved to {moved} and a "
                    "new one started. Instances it recorded are still found by their label "
                    "prefix at start.")
        return Journal.for_workdir(workdir)
    except JournalError as exc:
        raise WorkflowError(str(exc)) from None


def leave_copied_journal(workdir: Path) -> Path:
    """Set a copied journal and its workflow id aside, so a fresh id (and prefix) is made."""
    path = workdir / RELATIVE_PATH
    (path.parent / WORKFLOW_ID_FILE).unlink(missing_ok=True)
    return Journal.move_aside(path, why="copied")


def preflight(workflow: Any, settings: Any, forward_credentials: bool, workdir: Path,
              log: PluginLogger, on_error: Callable[[WorkflowError], None] | None = None
              ) -> tuple[StorageMode | None, dict[str, str]]:
    """Every start-up check that needs no API, in order; the run and ``plan`` both call
    this, so the plan reports exactly what would stop the run.

    Without ``on_error`` the first failure raises. With it (the plan), each failure is
    handed over and the checks go on, except those that build on a failed one (the
    source listing needs git).
    """
    stages: list[list[Callable[[], Any]]] = [
        [lambda: validate_scheduled_jobs(workflow)],
        [lambda: check_apptainer(workflow)],
        [lambda: check_git(workflow, workdir, log, declared_inputs(workflow)),
         lambda: install_sources(workflow, workdir, log.warning),  # before the scope wraps it
         lambda: scope_sources(workflow, settings, log)],
        [lambda: storage_preflight(workflow, forward_credentials)],
    ]
    result: Any = None
    for stage in stages:
        for check in stage:
            try:
                result = check()
            except WorkflowError as exc:
                if on_error is None:
                    raise
                on_error(exc)
                result = None
                break
    return result or (None, {})


def needrun_reader(workflow: Any) -> Callable[[], Iterable[Any]]:
    """The DAG's unfinished jobs, read fresh at each call (see work_ahead.py, which
    takes any failure here, a Snakemake without this method included, as "cannot tell")."""
    return lambda: workflow.dag.needrun_jobs()


def check_the_market(run: Run, workflow: Any, resolved: Any) -> None:
    """Before anything is rented, every rule's request against the market (see
    market_check.py); the market's spelling of GPU names goes to the run's offers."""
    requests = market_check.rule_requests(market_check.needrun_jobs(workflow), resolved)
    if not requests:
        return
    held = market_check.held_offers(run.journal.instances_possibly_alive())
    try:
        found = market_check.check_market(requests, run.api.search_offers_unshared, held)
    except VastAuthError:
        raise
    except VastError as exc:  # an early warning, not a gate: each job searches again
        run.log.warning("could not check the market before renting; each job's own search "
                        "will", error=str(exc))
        return
    for key, name in found.gpu_names.items():
        run.log.info("GPU name matched as the market spells it", gpu_name=name,
                     asked=key)
    run.market.gpu_names.update(found.gpu_names)


def start_run(executor: Any) -> Run:
    """Everything checked, then the run's journal, key, API client and watcher."""
    import snakemake

    log = PluginLogger(executor.logger)
    settings = executor.workflow.executor_settings
    api_key = resolve_api_key(settings)
    SECRETS.add([api_key])
    remote_settings = getattr(executor.workflow, "remote_execution_settings", None)
    container_image = getattr(remote_settings, "container_image", None)
    resolved = run_settings(settings, container_image, remote_settings)
    bids.default_preemptible_retries(executor.workflow)  # else a failed job crashes Snakemake
    workdir = Path(os.getcwd())
    mode, credential_env = preflight(executor.workflow, settings, resolved.forward_credentials,
                                     workdir, log)
    hooks = SnakemakeHooks(
        job_command=executor.format_job_exec,
        declared_envvars=executor.envvars,
        write_source_archive=getattr(executor.workflow, "write_source_archive", None),
        snakemake_version=snakemake.__version__,
        credential_env=credential_env,
        uses_conda=uses_conda(executor.workflow),
        workdir_rel=source_layout(executor.workflow, workdir).workdir_rel,
        needrun_jobs=needrun_reader(executor.workflow),
    )
    journal = open_journal(workdir, log)
    run = Run(workdir=workdir, settings=resolved, api_key=api_key, hooks=hooks, log=log,
              journal=journal, plugin_version=__version__)
    try:
        run.record_balance_before(run.api.check_access())
    except VastAuthError as exc:
        run.close("refused")
        raise WorkflowError(str(exc)) from None
    except VastError as exc:
        run.close("unreachable")
        raise WorkflowError(f"Vast.ai API at {resolved.api_url} is not reachable "
                            f"(--vastai-api-url / VAST_URL): {exc}") from None
    try:
        check_the_market(run, executor.workflow, resolved)
    except (MarketCheckError, VastError) as exc:
        run.close("no offer can serve a rule" if isinstance(exc, MarketCheckError)
                  else "unreachable")
        raise WorkflowError(str(exc)) from None
    if mode is not None:
        try:
            run.storage = deploy_sources(executor.workflow, mode, hooks.workdir_rel)
        except WorkflowError:
            run.close("storage unavailable")
            raise
    run.reconcile(executor.workflow)
    try:
        orphans.report(run.api.list_instances, run.journal.label_prefix, log.warning)
    except VastError as exc:  # a report, not a gate
        log.warning("could not look for other workflows' instances", error=str(exc))
    log.info("run started", run=run.run_id, api=resolved.api_url, image=resolved.image,
             mode="storage" if mode else "ssh", storage=mode.prefix if mode else None)
    return run
