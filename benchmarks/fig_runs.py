"""Figures 1, 2, 3 and 5: read from runs of the real CLI against the simulator.

1. Orchestration overhead per job: Snakemake hands the job over (journal
   ``submit``) until Snakemake marks it done (its ``Finished jobid`` line),
   minus the floor: the simulator's boot delay, the time everything ran on the
   instance under the job wrapper, and the job's bytes at the measured transfer
   rate (see ``timeline`` for why the instance-side time is all floor).
2. Billed overhead per job: the simulator's billed instance-seconds minus the
   same floor; and the delay from the last output byte home (journal
   ``downloaded``) to the destroy request reaching the simulator.
3. API requests: per job for one job at the plugin's default status interval,
   and listing requests per status tick for many concurrent jobs.
5. CPU seconds, peak RSS and threads of the Snakemake process, with the
   vastai executor and with the local executor on the same workflow.
"""

from __future__ import annotations

import shutil
import statistics
import sys
from collections import Counter
from typing import Any

from .plan import Plan
from .procwatch import Watched, watch
from .report import Figure, Summary, check, unavailable
from .scenarios import Bench, Outcome, Scenario
from .timeline import JobTimes
from .workload import write_workflow

LISTING = "GET /api/v1/instances/"
WHATIF = ("--seconds-between-status-checks", "1")  # an int; Snakemake's default is 10


def _jobs(outcomes: list[Outcome]) -> list[JobTimes]:
    """The jobs that succeeded (failed ones have no complete timeline; see _failures)."""
    return [j for o in outcomes for j in o.succeeded]


def _failed(outcomes: list[Outcome]) -> str | None:
    """Why nothing can be measured: no run had a single successful job."""
    usable = [o for o in outcomes if o.usable]
    return None if usable else outcomes[0].problem()


def _failures(outcomes: list[Outcome]) -> tuple[str, dict[str, int]]:
    """A note like '7/200 jobs failed' (empty if none) and the reasons, counted."""
    reasons: Counter[str] = Counter()
    for o in outcomes:
        reasons.update(o.failures())
    total = sum(len(o.jobs) for o in outcomes)
    failed = sum(reasons.values())
    return (f"{failed}/{total} jobs failed" if failed else ""), dict(reasons)


def _with_failures(fig: Figure, outcomes: list[Outcome], *, fatal: bool = True) -> Figure:
    """Record failed jobs. With ``fatal``, a run that lost jobs misses the target whatever
    the median (per-job time figures); resource and request counts only note them."""
    note, reasons = _failures(outcomes)
    fig.note = note
    fig.details["failed_jobs"] = reasons
    if fatal and note and fig.met:
        fig.met = False
    return fig


def _phase_medians(jobs: list[JobTimes]) -> dict[str, float | None]:
    table: dict[str, list[float]] = {}
    for job in jobs:
        for name, value in job.phases().items():
            if value is not None:
                table.setdefault(name, []).append(value)
    return {name: round(statistics.median(v), 4) for name, v in table.items()}


def _median(values: list[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return statistics.median(got) if got else None


def _run_facts(outcomes: list[Outcome]) -> dict[str, Any]:
    return {"runs": len(outcomes), "wall_seconds": [round(o.watched.wall, 2) for o in outcomes],
            "machine_busy": [o.machine_busy for o in outcomes],
            "simulator_cpu_s": [o.sim_cpu for o in outcomes],
            "snakemake_cpu_s": [o.watched.cpu_seconds() for o in outcomes]}


# --------------------------------------------------------------------------- figure 1


def overhead_figure(bench: Bench, jobs: int, repeats: int, target: float | None,
                    extra: tuple[str, ...] = (), key: str | None = None,
                    name: str | None = None) -> Figure:
    key = key or f"1.overhead.n{jobs}"
    name = name or f"orchestration overhead per job, {jobs} concurrent"
    target_text = f"< {target:g} s" if target is not None else ""
    outcomes = bench.outcomes(Scenario(jobs=jobs, extra=extra), repeats)
    problem = _failed(outcomes)
    if problem:
        return unavailable(key, name, "s", problem, target_text)
    all_jobs = _jobs(outcomes)
    value = Summary.of(j.overhead(bench.rate) for j in all_jobs)
    if value is None:
        return unavailable(key, name, "s", "no job had every witness (journal, simulator, "
                           "sandbox, Snakemake line)", target_text)
    total = _median([j.total for j in all_jobs])
    floor = _median([j.floor(bench.rate) for j in all_jobs])
    fig = Figure(key=key, name=name, unit="s", value=value, target=target_text,
                 ratio=(total / floor) if total and floor else None, ratio_label="x floor",
                 details={"total_median": total, "floor_median": floor,
                          "strict_overhead": Summary.of(j.strict_overhead(bench.rate)
                                                        for j in all_jobs),
                          "phases_median": _phase_medians(all_jobs),
                          "transfer_rate_bytes_per_s": bench.rate, **_run_facts(outcomes)})
    if target is not None:
        check(fig, lambda v: v < target)
    return _with_failures(fig, outcomes)


def instance_side_figure(bench: Bench, repeats: int) -> Figure:
    """Informative: what runs on the instance around the rule (in the floor of figure 1)."""
    key, name = "1.instance-side.n1", "instance-side work around the rule, 1 job (in floor)"
    outcomes = bench.outcomes(Scenario(jobs=1), repeats)
    problem = _failed(outcomes)
    if problem:
        return unavailable(key, name, "s", problem)
    jobs = _jobs(outcomes)
    value = Summary.of(None if j.instance_seconds is None or j.rule_seconds is None
                       else j.instance_seconds - j.rule_seconds for j in jobs)
    phases = _phase_medians(jobs)
    keep = ("remote_bootstrap", "remote_snakemake_before_rule", "rule",
            "remote_snakemake_after_rule")
    return Figure(key=key, name=name, unit="s", value=value,
                  details={**{k: phases.get(k) for k in keep}, **_run_facts(outcomes)})


def figure1(bench: Bench, plan: Plan) -> list[Figure]:
    targets = {1: 1.0, 200: 3.0}
    figures = [overhead_figure(bench, n, plan.repeats[n], targets.get(n))
               for n in plan.concurrency]
    figures.append(instance_side_figure(bench, plan.repeats[1]))
    if plan.whatif_repeats:
        figures.append(overhead_figure(
            bench, 1, plan.whatif_repeats, None, extra=WHATIF, key="1.whatif.n1",
            name="overhead, 1 job, with --seconds-between-status-checks 1"))
    return figures


# --------------------------------------------------------------------------- figure 2


def billed_figure(bench: Bench, jobs: int, repeats: int) -> list[Figure]:
    key, name = f"2.billed.n{jobs}", f"billed overhead per job, {jobs} concurrent"
    dkey, dname = f"2.destroy-delay.n{jobs}", f"last output byte -> destroy request, {jobs} conc."
    outcomes = bench.outcomes(Scenario(jobs=jobs), repeats)
    problem = _failed(outcomes)
    if problem:
        return [unavailable(key, name, "s", problem, "< 2 s"),
                unavailable(dkey, dname, "s", problem, "< 1 s")]
    jobs_ = _jobs(outcomes)
    billed = _median([j.billed for j in jobs_])
    floor = _median([j.floor(bench.rate) for j in jobs_])
    fig = Figure(key=key, name=name, unit="s",
                 value=Summary.of(j.billed_overhead(bench.rate) for j in jobs_),
                 target="< 2 s", ratio=(billed / floor) if billed and floor else None,
                 ratio_label="x floor",
                 details={"billed_median": billed, "floor_median": floor,
                          "before_boot": _median([_diff(j.created, j.submit) for j in jobs_]),
                          **_run_facts(outcomes)})
    delay = Figure(key=dkey, name=dname, unit="s",
                   value=Summary.of(j.destroy_delay for j in jobs_), target="< 1 s",
                   details={"destroy_confirmed_after": _median(
                       [_diff(j.terminal, j.destroyed) for j in jobs_])})
    # A failed job has no "last byte home": the delay is measured on the others only.
    return [_with_failures(check(fig, lambda v: v < 2.0), outcomes),
            _with_failures(check(delay, lambda v: v < 1.0), outcomes, fatal=False)]


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def figure2(bench: Bench, plan: Plan) -> list[Figure]:
    return [f for n in plan.concurrency for f in billed_figure(bench, n, plan.repeats[n])]


# --------------------------------------------------------------------------- figure 3


def listing_ticks(requests: list[dict[str, Any]]) -> list[int]:
    """Pages per status tick: a tick starts with a listing page without ``after_token``."""
    ticks: list[int] = []
    for row in requests:
        if f"{row['method']} {row['route']}" != LISTING:
            continue
        if "after_token" in row["query"] and ticks:
            ticks[-1] += 1
        else:
            ticks.append(1)
    return ticks


def requests_one_job(bench: Bench, plan: Plan) -> Figure:
    key = "3.requests.one-job"
    name = f"API requests, one {plan.api_job_seconds:g} s job, default status interval"
    outcome = bench.outcome(Scenario(jobs=1, seconds=plan.api_job_seconds, status_interval=None))
    if not outcome.usable:
        return unavailable(key, name, "req", outcome.problem(), "< 20")
    counts = outcome.truth["requests"]
    total = sum(counts.values())
    fig = Figure(key=key, name=name, unit="req", value=Summary.of([total]), target="< 20",
                 details={"by_endpoint": counts, "listing_pages_per_tick": Summary.of(
                     listing_ticks(outcome.requests)), "wall": outcome.watched.wall})
    return check(fig, lambda v: v < 20)


def pages_per_tick(bench: Bench, plan: Plan) -> list[Figure]:
    n = plan.many_jobs
    key, name = f"3.pages-per-tick.n{n}", f"status listing requests per tick, {n} concurrent"
    base = bench.outcome(Scenario(jobs=1))
    many = bench.outcome(Scenario(jobs=n))
    if not many.usable:
        return [unavailable(key, name, "req/tick", many.problem(), "O(1): as for 1 job")]
    ticks_many = listing_ticks(many.requests)
    ticks_one = listing_ticks(base.requests)
    value = Summary.of(ticks_many)
    one = statistics.median(ticks_one) if ticks_one else None
    counts = Counter(many.truth["requests"])
    listing = counts.pop(LISTING, 0)
    fig = Figure(key=key, name=name, unit="req/tick", value=value, target="O(1): as for 1 job",
                 ratio=(value.median / one) if value and one else None,
                 ratio_label="x 1-job run",
                 details={"ticks": len(ticks_many), "listing_requests": listing,
                          "one_job_pages_per_tick": Summary.of(ticks_one),
                          "peak_instances": n})
    per_job = Figure(key=f"3.requests-per-job.n{n}",
                     name=f"other API requests per job, {n} concurrent", unit="req",
                     value=Summary.of([sum(counts.values()) / n]), target="< 20",
                     details={"by_endpoint_per_job": {k: v / n for k, v in counts.items()},
                              "listing_per_job_at_0.2s": listing / n})
    check(per_job, lambda v: v < 20)
    if value is not None and one is not None:
        fig.met = value.high <= max(ticks_one)
    return [_with_failures(fig, [many], fatal=False),
            _with_failures(per_job, [many], fatal=False)]


def figure3(bench: Bench, plan: Plan) -> list[Figure]:
    return [requests_one_job(bench, plan), *pages_per_tick(bench, plan)]


# --------------------------------------------------------------------------- figure 5


def local_run(bench: Bench, jobs: int) -> Watched:
    """The same workflow with Snakemake's local executor, ``--cores jobs``."""
    root = bench.base / f"local-n{jobs}"
    shutil.rmtree(root, ignore_errors=True)
    workdir = write_workflow(root / "wf", jobs)
    argv = [sys.executable, "-m", "snakemake", "--cores", str(jobs)]
    return watch(argv, cwd=workdir, timeout=900, sample_every=0.2)


def threads_after(watched: Watched) -> int | None:
    """Threads at the first sample after the last job finished (drivers should be gone)."""
    finished = watched.finished_at()
    if not finished or not watched.samples:
        return None
    last = max(finished.values())
    after = [s.threads for s in watched.samples if s.t >= last]
    return after[0] if after else watched.samples[-1].threads


def figure5(bench: Bench, plan: Plan) -> list[Figure]:
    n = plan.many_jobs
    keys = (f"5.extra-rss.n{n}", f"5.cpu.n{n}", f"5.threads.n{n}")
    names = (f"peak RSS beyond the local executor, {n} jobs",
             f"Snakemake process CPU seconds, {n} jobs", f"Snakemake process threads, {n} jobs")
    remote = bench.outcome(Scenario(jobs=n))
    if not remote.usable:
        return [unavailable(k, m, u, remote.problem()) for k, m, u
                in zip(keys, names, ("MiB", "s", "threads"), strict=True)]
    bench.log(f"  running the local executor, {n} jobs")
    local = local_run(bench, n)
    if local.returncode != 0:
        reason = f"local run failed: {local.tail(5)}"
        return [unavailable(k, m, "", reason) for k, m in zip(keys, names, strict=True)]
    rss_v, rss_l = remote.watched.peak("hwm_kib") / 1024, local.peak("hwm_kib") / 1024
    cpu_v, cpu_l = remote.watched.cpu_seconds(), local.cpu_seconds()
    thr_v, thr_l = remote.watched.peak("threads"), local.peak("threads")
    rss = Figure(key=keys[0], name=names[0], unit="MiB", value=Summary.of([rss_v - rss_l]),
                 target="< 150 MiB", ratio=rss_v / rss_l if rss_l else None,
                 ratio_label=f"x local ({rss_v:.0f} vs {rss_l:.0f} MiB)",
                 details={"vastai_peak_mib": rss_v, "local_peak_mib": rss_l})
    cpu = Figure(key=keys[1], name=names[1], unit="s", value=Summary.of([cpu_v]),
                 ratio=cpu_v / cpu_l if cpu_l else None, ratio_label=f"x local ({cpu_l:.1f} s)",
                 details={"vastai_cpu_s": cpu_v, "local_cpu_s": cpu_l,
                          "vastai_wall_s": remote.watched.wall, "local_wall_s": local.wall})
    after = threads_after(remote.watched)
    bound = 2 * n + 50
    threads = Figure(key=keys[2], name=names[2], unit="threads", value=Summary.of([thr_v]),
                     target=f"<= 2/job + 50 = {bound}; back down after the jobs",
                     ratio=thr_v / thr_l if thr_l else None, ratio_label=f"x local ({thr_l})",
                     details={"vastai_peak": thr_v, "local_peak": thr_l,
                              "vastai_after_jobs": after,
                              "simulator_threads_peak": remote.sim_threads_peak})
    threads.met = thr_v <= bound and (after is None or after <= 20)
    return [_with_failures(f, [remote], fatal=False)
            for f in (check(rss, lambda v: v < 150), cpu, threads)]
