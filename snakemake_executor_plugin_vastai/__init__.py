"""Snakemake executor plugin: every job on the cheapest matching Vast.ai GPU instance.

This module is what Snakemake imports: the settings dataclass, the common
settings, and a thin :class:`Executor` that wires the parts together. It is
imported on every ``snakemake`` start (plugins register their CLI options), so
it imports nothing heavy; the SDK, paramiko and SQLite come in on first use.

Where to find things: ``machine.py`` (job states and transitions, as data),
``driver.py`` (the steps every mode shares), ``ports.py`` (what a step may
touch: ``market.py``, ``instances.py``, ``jobspec.py``, ``transports/``),
``teardown.py`` (the one teardown), ``recovery.py`` / ``leases.py`` /
``listing.py`` (restart after a crash), ``journal.py`` (SQLite journal),
``offers.py`` (resources -> offer search), ``validation.py`` (early checks),
``vast.py`` (the SDK adapter), ``remote.py`` (the paramiko adapter),
``payload.py`` (what travels to and from an instance), ``sources.py`` (the
source files), ``jobargs.py`` (the remote job arguments), ``rule_settings.py``
(per-rule overrides), ``storage.py`` (storage mode: data through a bucket),
``runtime.py`` (one run, start to end), ``pool.py`` / ``instance_machine.py``
(warm instances: an instance serves several jobs), ``simulator/`` (the local Vast.ai).
"""

import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from snakemake_interface_executor_plugins.executors.base import SubmittedJobInfo
from snakemake_interface_executor_plugins.executors.remote import RemoteExecutor
from snakemake_interface_executor_plugins.jobs import JobExecutorInterface
from snakemake_interface_executor_plugins.settings import (
    CommonSettings,
    ExecutorSettingsBase,
)

if TYPE_CHECKING:
    from .run.runtime import Run

__version__ = "0.2.0"
DEFAULT_IMAGE = "vastai/pytorch:@vastai-automatic-tag"


@dataclass
class ExecutorSettings(ExecutorSettingsBase):
    """Options shown as ``--vastai-<name>``; also settable in a profile config.yaml.

    Snakemake turns these type hints into argparse types, so they must be real
    types at runtime (hence ``Optional[...]`` and no postponed annotations).
    """

    api_key: Optional[str] = field(default=None, metadata={
        "help": "Vast.ai API key (else SNAKEMAKE_VASTAI_API_KEY or VAST_API_KEY). Prefer the "
                "environment: a key on the command line is visible in the process list.",
        "env_var": True, "required": False})
    api_url: Optional[str] = field(default=None, metadata={
        "help": "Vast.ai API base URL (default: the real service; VAST_URL is honoured). "
                "Point it at the bundled simulator to try the plugin for free.",
        "env_var": False, "required": False})
    gpu_name: Optional[str] = field(default=None, metadata={
        "help": "Default GPU model for jobs without a gpu_model resource, e.g. RTX_4090.",
        "env_var": False, "required": False})
    max_price: Optional[float] = field(default=None, metadata={
        "help": "Highest price per instance in $/h (dph_total).",
        "env_var": False, "required": False})
    geolocation: Optional[str] = field(default=None, metadata={
        "help": "Region shortcut (EU, NA, AS, AF, LC, OC) or country codes like PL,DE,CZ.",
        "env_var": False, "required": False})
    disk: float = field(default=40, metadata={
        "help": "Disk to rent per instance, in GB.", "env_var": False, "required": False})
    image: Optional[str] = field(default=None, metadata={
        "help": f"Docker image jobs run in (needs python on PATH). Default: an explicitly "
                f"given --container-image, else {DEFAULT_IMAGE}.",
        "env_var": False, "required": False})
    reliability: float = field(default=0.98, metadata={
        "help": "Lowest host reliability accepted (0 turns the filter off).",
        "env_var": False, "required": False})
    no_datacenter: bool = field(default=False, metadata={
        "help": "Also rent from non-datacenter (hobbyist) hosts.",
        "env_var": False, "required": False})
    order: str = field(default="dph_total", metadata={
        "help": "How offers are ranked, vastai syntax (e.g. dlperf_usd- for perf per $).",
        "env_var": False, "required": False})
    search_query: Optional[str] = field(default=None, metadata={
        "help": "Extra offer filters in vastai query syntax, e.g. 'cuda_vers>=12.4'.",
        "env_var": False, "required": False})
    boot_timeout: int = field(default=1800, metadata={
        "help": "Seconds an instance may take to reach running before the job fails.",
        "env_var": False, "required": False})
    no_forward_credentials: bool = field(default=False, metadata={
        "help": "Do not forward local AWS_*/AZURE_STORAGE_* credentials to jobs.",
        "env_var": False, "required": False})
    keep_instances: bool = field(default=False, metadata={
        "help": "Do not destroy instances after their job (debugging; they keep billing!).",
        "env_var": False, "required": False})
    status_interval: float = field(default=5.0, metadata={
        "help": "Seconds between instance status listings (one API call serves all jobs).",
        "env_var": False, "required": False})
    max_spend: Optional[float] = field(default=None, metadata={
        "help": "Dollars this run may spend on instances (time and bandwidth, see 'journal "
                "cost'); once reached, no new instance is "
                "rented, running jobs finish, and the run fails.",
        "env_var": False, "required": False})
    on_restart: str = field(default="resume", metadata={
        "help": "What to do with instances an earlier, crashed run left alive: 'resume' "
                "re-attaches jobs Snakemake runs again and destroys the rest; 'destroy' "
                "destroys them all at start.",
        "env_var": False, "required": False, "choices": ["resume", "destroy"]})
    max_runtime: Optional[float] = field(default=None, metadata={
        "help": "Seconds a job may run once its instance is running; then the instance is "
                "destroyed and the job fails (in storage mode: unless its outputs are in "
                "storage). 0 or unset = no cap.",
        "env_var": False, "required": False})
    offline_grace: float = field(default=120.0, metadata={
        "help": "Seconds an offline/unknown host is tolerated before its job fails.",
        "env_var": False, "required": False})
    deploy_paths: Optional[str] = field(default=None, metadata={
        "help": "Ship only these comma-separated paths/globs of the workflow's sources "
                "(relative to the working directory) instead of every git-tracked file; "
                "unioned with every rule's `deploy` resource. The Snakefile, includes, "
                "config, script and conda files always ship. E.g. 'train.py,scripts/**'.",
        "env_var": False, "required": False})
    progress_interval: float = field(default=5.0, metadata={
        "help": "Seconds between progress lines (bytes, rate, time left) of an upload or "
                "download above 32 MiB (at least 0.5); 0 turns them off.",
        "env_var": False, "required": False})
    # -- interruptible (bid) instances, issue 15 (bids.py); Snakemake's own
    # --preemptible-rules choose the rules and --preemptible-retries the fallback.
    bid: Optional[float] = field(default=None, metadata={
        "help": "Bid for interruptible instances as a multiple of the offer's min_bid "
                "(default 1.0), never above --vastai-max-price / vastai_max_price. Used for "
                "--preemptible-rules and rules with the vastai_interruptible resource.",
        "env_var": False, "required": False})
    preemption_grace: Optional[float] = field(default=None, metadata={
        "help": "Seconds an outbid (stopped) bid instance may take to run again before it is "
                "destroyed and the job rents anew (default 300); its job then reruns on it.",
        "env_var": True, "required": False})
    no_bid_fallback: bool = field(default=False, metadata={
        "help": "Keep bidding after --preemptible-retries preemptions of one job (default 3) "
                "instead of renting its next instance on demand.",
        "env_var": False, "required": False})
    idle_timeout: Optional[float] = field(default=None, metadata={
        "help": "Warm instances: seconds a booted instance whose job succeeded waits, idle, "
                "for the next job it fits before it is destroyed (default 60, about the "
                "shortest Vast.ai boot it saves; 0 = destroy at once). Idle instances are "
                "also destroyed as soon as no job that could use them is left, at the end "
                "of the run, on Ctrl-C and on failure.",
        "env_var": False, "required": False})
    offer_wait: Optional[float] = field(default=None, metadata={
        "help": "Seconds a job waits when no matching offer is free (all rented, by others "
                "or by this run's own jobs) for one to come free on the market or for one "
                "of the run's instances to finish, before it fails (default 1800; 0 = fail "
                "at once). A job that nothing on the market matches at all, and that no "
                "instance of the run could serve, fails at once.",
        "env_var": False, "required": False})
    no_reuse: bool = field(default=False, metadata={
        "help": "One instance per job: never give a booted instance to the next job.",
        "env_var": False, "required": False})


common_settings = CommonSettings(
    non_local_exec=True,
    implies_no_shared_fs=True,
    job_deploy_sources=False,
    pass_default_storage_provider_args=True,
    pass_default_resources_args=True,
    pass_envvar_declarations_to_cmd=False,  # secrets go to a 0600 env file, not argv
    auto_deploy_default_storage_provider=False,
    init_seconds_before_status_checks=0,
    can_transfer_local_files=True,  # SSH mode: the plugin ships inputs and outputs itself
)

STATUS_CHECK_SECONDS = 0.2  # check_active_jobs reads memory only; no API call


class Executor(RemoteExecutor):
    """Thin glue between Snakemake and a :class:`~.runtime.Run`."""

    def __post_init__(self) -> None:
        from .vastai.api import skip_serverless_client

        skip_serverless_client()
        if os.environ.get("SNAKEMAKE_VASTAI_PLAN"):  # `... plan`: report, rent nothing
            from .cli.plan import write_plan_and_stop

            write_plan_and_stop(self)
        from .run.startup import start_run

        self.next_seconds_between_status_checks = STATUS_CHECK_SECONDS
        self.run: Run = start_run(self)
        self._signals_installed = False

    async def sleep(self) -> None:
        """Status checks read memory only, so they run often from the very first one.

        Snakemake starts its status thread before ``__post_init__`` could lower
        the interval, so the base class would sleep its default 10 s first.
        """
        import asyncio

        await asyncio.sleep(STATUS_CHECK_SECONDS)

    def run_jobs(self, jobs: list[JobExecutorInterface]) -> None:
        self._install_signal_handlers()
        super().run_jobs(jobs)

    def get_job_args(self, job: JobExecutorInterface, **kwargs: Any) -> str:
        """Snakemake's job arguments, but shell-quoted (see jobargs.py)."""
        from .workflow.jobargs import job_args

        return job_args(job, cores=kwargs.get("cores", self.cores),
                        unneeded_temp_files=self.workflow.dag.get_unneeded_temp_files(job))

    def run_job(self, job: JobExecutorInterface) -> None:
        model = self.run.submit(job)
        self.report_job_submission(SubmittedJobInfo(job=job, external_jobid=model.job_id))

    async def check_active_jobs(self, active_jobs: list[SubmittedJobInfo]):
        from .run.redaction import scrub
        from .transports.storage.setup import forget_stale_answers
        from .workflow.checkpoints import bring_home

        for info in active_jobs:
            driver = self.run.drivers.get(str(info.external_jobid))
            if driver is None or not driver.done.is_set():
                yield info
                continue
            model = driver.m
            if model.work_succeeded:
                # Outputs are home; an unconfirmed destroy fails the run at shutdown
                # instead (reporting an error here would make Snakemake delete them).
                if self.run.storage is not None:
                    forget_stale_answers(info.job)  # else directory() outputs look missing
                    failure = await bring_home(info.job)
                    if failure:
                        self.report_job_error(info, msg=scrub(failure))
                        continue
                self.report_job_success(info)
            else:
                # Snakemake appends its own sentence to msg without a separator.
                msg = (model.failure or f"job {model.state.value}").rstrip("\n") + "\n"
                self.report_job_error(info, msg=scrub(msg), aux_logs=[model.log_path])

    def cancel_jobs(self, active_jobs: list[SubmittedJobInfo]) -> None:
        self.run.cancel_all()

    def shutdown(self) -> None:
        super().shutdown()
        self.run.finish()
        pending = self.run.close("finished")
        if pending:
            from snakemake_interface_common.exceptions import WorkflowError

            raise WorkflowError(pending)

    def _install_signal_handlers(self) -> None:
        """SIGTERM/SIGHUP behave like Ctrl-C: Snakemake cancels, we destroy.

        Snakemake's scheduler installs its own SIGTERM handler ("finish running
        jobs") after creating the executor; for rented GPUs, waiting is the
        wrong answer, so ours goes in at the first submission.
        """
        if self._signals_installed or threading.current_thread() is not threading.main_thread():
            return
        self._signals_installed = True

        def interrupt(signum: int, _frame: Any) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, interrupt)


def workdir() -> Path:
    return Path(os.getcwd())
