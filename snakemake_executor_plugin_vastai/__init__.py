"""Snakemake executor plugin: every job on the cheapest matching Vast.ai GPU instance.

This module is what Snakemake imports: the settings dataclass, the common settings and
the :class:`Executor` (``executor.py``, thin glue). It is imported on every
``snakemake`` start (plugins register their CLI options), so it imports nothing heavy;
the SDK, paramiko and SQLite come in on first use.

Where to find things (one folder per concern; docs/architecture.md lists them):
``lifecycle/`` the job and instance state machines and the job driver, ``run/`` one
run's parts (start-up, recovery, teardown, warm pool, watcher), ``journal/`` the SQLite
journal, ``vastai/`` everything that speaks to Vast.ai, ``transports/`` SSH and storage
mode, ``workflow/`` what Snakemake's jobs and sources mean for us, ``costs/`` every cost
figure, ``cli/`` the ``snakemake-vastai`` commands,
``simulator/`` the local Vast.ai, ``settings.py`` run settings and the API key and URL.
"""

from dataclasses import dataclass
from typing import Optional

from snakemake_interface_executor_plugins.settings import (
    CommonSettings,
    ExecutorSettingsBase,
)

from .executor import Executor
from .settings import (
    DEFAULT_BID_FACTOR,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_IMAGE,
    DEFAULT_OFFER_WAIT,
    DEFAULT_ORPHAN_TIMEOUT,
    DEFAULT_PREEMPTION_GRACE,
    DEFAULT_URL,
    __version__,
    option,
)

__all__ = ["DEFAULT_IMAGE", "Executor", "ExecutorSettings", "__version__", "common_settings"]


@dataclass
class ExecutorSettings(ExecutorSettingsBase):
    """Options shown as ``--vastai-<name>``; also settable in a profile config.yaml.

    Snakemake turns these type hints into argparse types, so they must be real
    types at runtime (hence ``Optional[...]`` and no postponed annotations).
    Each field is made by :func:`settings.option`, which writes the real default into
    the help; ``env=True`` fields can also come from ``SNAKEMAKE_VASTAI_<NAME>``
    (the common ones: key, URL, image, price and spend caps, disk, the job timeouts).
    Every field is a row of the README's options table (a test compares them).
    """

    # -- the account and the machine
    api_key: Optional[str] = option(
        "Vast.ai API key. Prefer the environment (SNAKEMAKE_VASTAI_API_KEY or VAST_API_KEY) "
        "or the file 'vastai set api-key' saves: a key on the command line is visible in "
        "the process list.", shown="from the environment or the key file", env=True)
    api_url: Optional[str] = option(
        "Vast.ai API base URL (VAST_URL is honoured too). Point it at the bundled simulator "
        "to try the plugin for free.", shown=DEFAULT_URL, env=True)
    gpu_name: Optional[str] = option(
        "GPU model for jobs without a gpu_model resource, e.g. RTX_4090.", shown="any")
    max_price: Optional[float] = option(
        "Highest price per instance in $/h (dph_total).", shown="no cap", env=True)
    geolocation: Optional[str] = option(
        "Region shortcut (EU, NA, AS, AF, LC, OC) or country codes like PL,DE,CZ.",
        shown="anywhere")
    disk: float = option("Disk to rent per instance, in GB.", 40, env=True)
    image: Optional[str] = option(
        "Docker image jobs run in (needs python on PATH).",
        shown=f"an explicitly given --container-image, else {DEFAULT_IMAGE}", env=True)
    reliability: float = option(
        "Lowest host reliability accepted (0 turns the filter off).", 0.98)
    no_datacenter: bool = option("Also rent from non-datacenter (hobbyist) hosts.", False)
    order: str = option(
        "How offers are ranked, vastai syntax (e.g. dlperf_usd- for perf per $).",
        "dph_total")
    search_query: Optional[str] = option(
        "Extra offer filters in vastai query syntax, e.g. 'cuda_vers>=12.4'.")
    # -- a job's time limits
    boot_timeout: int = option(
        "Seconds an instance may take to reach running before the job fails.", 1800,
        env=True)
    offline_grace: float = option(
        "Seconds an offline/unknown host is tolerated before its job fails.", 120.0,
        env=True)
    max_runtime: Optional[float] = option(
        "Seconds a job may run once its instance is running; then the instance is "
        "destroyed and the job fails (in storage mode: unless its outputs are in "
        "storage). 0 = no cap.", shown="no cap (a rule's runtime resource still caps it)",
        env=True)
    offer_wait: Optional[float] = option(
        "Seconds a job waits when no matching offer is free (all rented, by others or by "
        "this run's own jobs) for one to come free on the market or for one of the run's "
        "instances to finish, before it fails (0 = fail at once). A job that nothing on "
        "the market matches at all, and that no instance of the run could serve, fails "
        "at once.", DEFAULT_OFFER_WAIT, env=True)
    # -- money
    max_spend: Optional[float] = option(
        "Dollars this run may spend on instances (time and bandwidth, see 'journal "
        "cost'); once reached, no new instance is rented, running jobs finish, and the "
        "run fails.", shown="no cap", env=True)
    keep_instances: bool = option(
        "Do not destroy instances after their job (debugging; they keep billing!).", False)
    on_restart: str = option(
        "What to do with instances an earlier, crashed run left alive: 'resume' "
        "re-attaches jobs Snakemake runs again and destroys the rest; 'destroy' destroys "
        "them all at start.", "resume", choices=["resume", "destroy"])
    # -- warm instances (run/pool.py) and the instance-side watchdog (watchdog/)
    keep_warm: Optional[float] = option(
        "Seconds idle warm instances outlive the run's end, for the next run of this "
        "workflow to adopt (no boot per edit-and-rerun); their watchdog destroys them when "
        "the time is up, with no process of ours alive. 0 = destroy them at the end.",
        0.0, env=True)
    orphan_timeout: Optional[float] = option(
        "Seconds an instance goes without the run's heartbeat before its own watchdog "
        "ends its billing (the run killed, the laptop asleep or gone): an idle instance "
        "destroys itself; one with a job lets the job finish (up to its maximal runtime), "
        "then stops so its outputs wait on its disk at storage price. 10 minutes ride out "
        "a dropped Wi-Fi or a short sleep; 0 = no watchdog.",
        DEFAULT_ORPHAN_TIMEOUT, env=True)
    idle_timeout: Optional[float] = option(
        "Warm instances: seconds a booted instance whose job succeeded waits, idle, for "
        "the next job it fits before it is destroyed (about the shortest Vast.ai boot it "
        "saves; 0 = destroy at once). Idle instances are also destroyed as soon as no job "
        "that could use them is left, at the end of the run, on Ctrl-C and on failure.",
        DEFAULT_IDLE_TIMEOUT, env=True)
    no_reuse: bool = option(
        "One instance per job: never give a booted instance to the next job.", False)
    # -- interruptible (bid) instances, issue 15 (vastai/bids.py); Snakemake's own
    # --preemptible-rules choose the rules and --preemptible-retries the fallback.
    bid: Optional[float] = option(
        "Bid for interruptible instances as a multiple of the offer's min_bid, never "
        "above --vastai-max-price / vastai_max_price. Used for --preemptible-rules and "
        "rules with the vastai_interruptible resource.", DEFAULT_BID_FACTOR)
    preemption_grace: Optional[float] = option(
        "Seconds an outbid (stopped) bid instance may take to run again before it is "
        "destroyed and the job rents anew; its job then reruns on it.",
        DEFAULT_PREEMPTION_GRACE, env=True)
    no_bid_fallback: bool = option(
        "Keep bidding after --preemptible-retries preemptions of one job (default 3) "
        "instead of renting its next instance on demand.", False)
    # -- what travels, and how it is watched
    no_forward_credentials: bool = option(
        "Do not forward local AWS_*/AZURE_STORAGE_* credentials to jobs.", False)
    deploy_paths: Optional[str] = option(
        "Ship only these comma-separated paths/globs of the workflow's sources (relative "
        "to the working directory) instead of every git-tracked file; unioned with every "
        "rule's `deploy` resource. The Snakefile, includes, config, script and conda "
        "files always ship. E.g. 'train.py,scripts/**'.", shown="every git-tracked file")
    max_download: Optional[int] = option(
        "Bytes a job's outputs may bring home (regular files and hard links alike); "
        "beyond it the job fails, what came home stays and its instance is destroyed. "
        "0 = no cap.", shown="the disk the job rented")
    status_interval: float = option(
        "Seconds between instance status listings (one API call serves all jobs).", 5.0)
    progress_interval: float = option(
        "Seconds between progress lines (bytes, rate, time left) of an upload or "
        "download above 32 MiB (at least 0.5); 0 turns them off.", 5.0)


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
