"""Figures 4 (transfer), 6 (start-up cost) and 7 (resume after a crash)."""

from __future__ import annotations

import shutil
import statistics
import sys
from typing import Any

from . import resume, transfer
from .plan import Plan
from .procwatch import watch
from .report import Figure, Summary, check, unavailable
from .scenarios import Bench, clean_env, offers_for
from .simproc import SimProcess
from .workload import write_workflow

MB = 1e6

# --------------------------------------------------------------------------- figure 4


def _throughput(trials: transfer.Trials, case: str, method: str) -> list[float]:
    return [trials.sizes.big_bytes / MB / s for s in trials.seconds[(case, method)]]


def big_figure(trials: transfer.Trials, case: str) -> Figure:
    """MB/s of the plugin, held against scp's in the same run (target: >= 80 %)."""
    plugin = Summary.of(_throughput(trials, case, "plugin"))
    scp = Summary.of(_throughput(trials, case, "scp"))
    cp = Summary.of(_throughput(trials, case, "cp"))
    assert plugin and scp and cp
    size = trials.sizes.big_bytes // transfer.MiB
    way = "up" if case.endswith("up") else "down"
    fig = Figure(key=f"4.{case}", name=f"transfer {size} MiB file {way}", unit="MB/s",
                 value=plugin, target=">= 80% of scp", ratio=plugin.median / scp.median,
                 ratio_label=f"of scp ({scp.median:.0f} MB/s; cp {cp.median:.0f} MB/s)",
                 details={"plugin": plugin, "scp": scp, "cp": cp,
                          "seconds": {m: trials.seconds[(case, m)] for m in transfer.METHODS}})
    return check(fig, lambda v: v >= 0.8 * scp.median)


def small_figure(trials: transfer.Trials, case: str) -> Figure:
    """Seconds for many small files; the plugin should beat ``scp -r``."""
    plugin = Summary.of(trials.seconds[(case, "plugin")])
    scp = Summary.of(trials.seconds[(case, "scp")])
    cp = Summary.of(trials.seconds[(case, "cp")])
    assert plugin and scp and cp
    way = "up" if case.endswith("up") else "down"
    fig = Figure(key=f"4.{case}", name=f"transfer {trials.sizes.small_files} x 4 KiB files {way}",
                 unit="s", value=plugin, target="faster than scp -r",
                 ratio=scp.median / plugin.median,
                 ratio_label=f"x scp -r speed (scp {scp.median:.2f} s; cp {cp.median:.2f} s)",
                 details={"plugin": plugin, "scp": scp, "cp": cp})
    return check(fig, lambda v: v < scp.median)


def figure4(bench: Bench, plan: Plan) -> list[Figure]:
    sizes = transfer.Sizes(plan.big_bytes, plan.small_files)
    try:
        trials = transfer.measure(bench.base / "transfer", sizes, plan.transfer_repeats,
                                  bench.log)
    except (OSError, RuntimeError, TimeoutError) as exc:
        reason = f"transfer benchmark failed: {exc}"
        return [unavailable(f"4.{c}", f"transfer {c}", "", reason)
                for c in ("big-up", "big-down", "small-up", "small-down")]
    finally:
        shutil.rmtree(bench.base / "transfer", ignore_errors=True)
    figures = [big_figure(trials, "big-up"), big_figure(trials, "big-down"),
               small_figure(trials, "small-up"), small_figure(trials, "small-down")]
    for fig in figures:
        fig.details["scp_cipher"] = transfer.SCP_CIPHER
        fig.details["openssh_default_cipher"] = trials.openssh_default_cipher
        fig.details["simulator"] = "separate process (python -m benchmarks.simproc)"
    rates = [statistics.median(_throughput(trials, c, "plugin")) for c in ("big-up", "big-down")]
    bench.transfer_rate = statistics.mean(rates) * MB
    return figures


# --------------------------------------------------------------------------- figure 6


def figure6(bench: Bench, plan: Plan) -> list[Figure]:
    """``--executor vastai --dry-run`` minus plain ``--dry-run``, paired, interleaved."""
    key, name = "6.startup", "extra start-up of --executor vastai --dry-run"
    workdir = write_workflow(bench.base / "startup" / "wf", 10)
    plain, vastai, diffs = [], [], []
    with SimProcess(bench.base / "startup" / "sim", offers=offers_for(bench.base, 10)) as sim:
        env = clean_env(sim.api_key)
        base = [sys.executable, "-m", "snakemake", "--dry-run"]
        with_plugin = [*base, "--executor", "vastai", "--jobs", "10", "--vastai-api-url",
                       sim.url]
        for i in range(-1, plan.startup_repeats):  # -1: a warm-up pair, not counted
            pair = [(base, plain), (with_plugin, vastai)]
            for argv, out in (pair if i % 2 == 0 else pair[::-1]):
                run = watch(argv, cwd=workdir, env=env, timeout=300)
                if run.returncode != 0:
                    return [unavailable(key, name, "s", f"dry run failed: {run.tail(5)}",
                                        "< 0.3 s")]
                out.append(run.wall)
            if i < 0:
                plain.clear()
                vastai.clear()
            else:
                diffs.append(vastai[-1] - plain[-1])
        api_calls = len(sim.requests())
    fig = Figure(key=key, name=name, unit="s", value=Summary.of(diffs), target="< 0.3 s",
                 ratio=statistics.median(vastai) / statistics.median(plain),
                 ratio_label=f"x plain ({statistics.median(plain):.2f} s)",
                 details={"plain_s": plain, "vastai_s": vastai, "api_requests": api_calls,
                          "min_vastai_minus_min_plain_s": min(vastai) - min(plain)})
    return [check(fig, lambda v: v < 0.3)]


# --------------------------------------------------------------------------- figure 7


def figure7(bench: Bench, plan: Plan) -> list[Figure]:
    key, name = "7.resume", "restart -> re-attached job done (job ended while down)"
    target = "< 2 s + output transfer"
    try:
        result = resume.measure(bench.base / "resume", plan.resume_job_seconds, bench.log)
    except (OSError, RuntimeError, TimeoutError) as exc:
        return [unavailable(key, name, "s", f"resume benchmark failed: {exc}", target)]
    if result.reason:
        return [unavailable(key, name, "s", result.reason, target)]
    value = result.seconds()
    assert value is not None and result.job is not None and result.restart is not None
    transfer_s = result.job.bytes_down / bench.rate
    floor = result.plain_start.wall if result.plain_start else None
    fig = Figure(key=key, name=name, unit="s", value=Summary.of([value]), target=target,
                 ratio=(value / floor) if floor else None,
                 ratio_label="x plain Snakemake start-up (dry-run)",
                 details=_resume_details(result, transfer_s))
    return [check(fig, lambda v: v < 2.0 + transfer_s)]


def _resume_details(result: resume.ResumeResult, transfer_s: float) -> dict[str, Any]:
    job, restart = result.job, result.restart
    assert job is not None and restart is not None
    started = restart.started
    return {
        "output_transfer_s": transfer_s,
        "plain_snakemake_dry_run_s": result.plain_start.wall if result.plain_start else None,
        "restart_to_executor_s": None if result.run_started is None
        else result.run_started - started,
        "restart_to_submit_s": job.submit - started,
        "restart_to_reattach_s": None if job.rented is None else job.rented - started,
        "restart_to_downloaded_s": None if job.downloaded is None else job.downloaded - started,
        "restart_to_journal_done_s": None if job.terminal is None else job.terminal - started,
        "restart_to_exit_s": restart.wall,
        "remote_done_before_restart_s": started - result.remote_done_at,
        "journal_triggers": result.triggers,
    }
