"""Snakemake executor plugin: every job on the cheapest matching Vast.ai GPU instance.

This module is what Snakemake imports: the settings dataclass, the common settings and
the :class:`Executor` (``executor.py``, thin glue). It is imported on every
``snakemake`` start (plugins register their CLI options), so it imports nothing heavy;
the SDK, paramiko and SQLite come in on first use.

Where to find things (one folder per concern; the README's "Architecture" lists them):
``lifecycle/`` the job and instance state machines and the job driver, ``run/`` one
run's parts (start-up, recovery, teardown, warm pool, watcher), ``journal/`` the SQLite
journal, ``vastai/`` everything that speaks to Vast.ai, ``transports/`` SSH and storage
mode, ``workflow/`` what Snakemake's jobs and sources mean for us, ``costs/`` every cost
figure, ``cli/`` the ``snakemake-vastai`` commands,
``simulator/`` the local Vast.ai, ``settings.py`` run settings and the API key and URL.
"""

from dataclasses import dataclass, field
from typing import Optional

from snakemake_interface_executor_plugins.settings import (
    CommonSettings,
    ExecutorSettingsBase,
)

from .executor import Executor
from .settings import DEFAULT_IMAGE, __version__

__all__ = ["DEFAULT_IMAGE", "Executor", "ExecutorSettings", "__version__", "common_settings"]


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
    max_download: Optional[int] = field(default=None, metadata={
        "help": "Bytes a job's outputs may bring home (regular files and hard links alike); "
                "beyond it the job fails, what came home stays and its instance is "
                "destroyed. Default: the disk the job rented. 0 = no cap.",
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
