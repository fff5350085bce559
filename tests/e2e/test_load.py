"""Load: 200 concurrent jobs through the real CLI while the API throttles and fails.

Why this test exists: Vast.ai rate-limits per endpoint and sends its 429s
without ``Retry-After``; a client that answers a throttle by retrying at once
makes the throttle worse for every job of the run. The plugin promises
(``vast.py``) jittered retries plus a per-endpoint back-off shared by all job
threads. This test holds it to that promise with numbers, at the scale the
README advertises.

How: the simulator runs in its own process (``benchmarks.simproc``), which
logs every API request with its arrival time, so request rates come from the
server's side, not from the plugin's own account of itself. Every job first
touches a file in a directory shared with the test, then waits for a release
file. Once every job is running, the only API traffic left is the batched
status listing, a steady loop: its rate is measured for ``WINDOW`` seconds
clean, then 30% of all requests are answered 429 and 5% 503 and the rate is
measured again for ``WINDOW`` seconds. A client that backs off sends clearly
fewer requests per second during the burst than before it (retrying at once
sends more: a throttled answer is cheaper than a listing page). Then the
jobs are released and finish -- downloads and destroys under the same burst.
Every job must succeed and no instance may be left alive.

A second test starts every job together against Vast.ai's own kind of throttle:
a minimum interval per endpoint and key (``--rate-limit 0.25``), with 3 s boots
so every job searches and rents before any is done. Every job must succeed, no
instance may be left, 429s must stay rare and identical jobs must share their
searches. Before the plugin queued its calls per endpoint, 20 such jobs sent
146 searches, 135 of them refused, and jobs failed when their retry budget ran
out.

The suite runs 50 jobs in each test: 200 take about 6 minutes of both cores of a 2-core
machine (each remote Snakemake costs ~1.4 CPU-seconds and all 200 wait at
once), which the suite's 15-minute budget cannot hold. The full scale runs on
demand: ``VASTAI_LOAD_JOBS=200 pytest tests/e2e/test_load.py -s`` (``-s`` shows the
figures).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from benchmarks.catalog import write_offers
from benchmarks.simproc import SimProcess
from tests.harness.e2e import alive, sim_env, snakemake_argv, wait_for, write_workflow

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

JOBS = int(os.environ.get("VASTAI_LOAD_JOBS", "50"))
WINDOW = 10.0  # seconds of steady listing measured before and during the burst
THROTTLED = 0.30  # share of all API requests answered 429
FAILING = 0.05  # share of all API requests answered 5xx
BACKED_OFF = 0.8  # the throttled endpoint's rate during the burst, at most, relative to before
LISTING = "/api/v1/instances/"

SNAKEFILE = """\
rule all:
    input:
        expand("out/{{i}}.txt", i=range({jobs})),


rule one:
    output:
        "out/{{i}}.txt",
    resources:
        gpu=1,
    shell:
        "touch {started}/{{wildcards.i}}; "
        "while [ ! -e {release} ]; do sleep 1; done; "
        "echo ok-{{wildcards.i}} > {{output}}"
"""


def burst_faults() -> list[dict]:
    """30% 429 and 5% 503 of all requests.

    The simulator answers a request with the first status fault that draws it,
    so the 503 fault, listed second, only sees the 70% the 429 fault let pass.
    """
    return [
        {"kind": "api_status", "code": 429, "fraction": THROTTLED},
        {"kind": "api_status", "code": 503, "fraction": FAILING / (1 - THROTTLED)},
    ]


def rate(requests: list[dict], start: float, end: float, route: str | None = None) -> float:
    """Requests per second that arrived in [start, end), optionally to one route."""
    hits = [r for r in requests
            if start <= r["t"] < end and (route is None or r["route"] == route)]
    return len(hits) / (end - start)


def events(workdir: Path, name: str) -> list[dict]:
    """The plugin's own events called ``name`` from its JSONL log (complete lines only)."""
    found = []
    for path in (workdir / ".snakemake" / "vastai" / "logs").glob("*.jsonl"):
        for line in path.read_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:  # a line being written right now
                continue
            if event.get("event") == name:
                found.append(event)
    return found


def failures(workdir: Path) -> list[str]:
    """Errors of the jobs the plugin failed so far (its 'job failed' events)."""
    return [e.get("error", "") for e in events(workdir, "job failed")]


def tail(path: Path, lines: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def reboot_held_instance(sim: SimProcess) -> None:
    """Let the instance held in boot boot normally (a reboot clears its fault); the API
    call itself may meet the burst's 429s, so it is retried."""
    held = [i["id"] for i in sim.truth()["instances"] if i["actual_status"] == "loading"]
    assert len(held) == 1, held
    for _ in range(50):
        try:
            sim.call("PUT", f"/api/v0/instances/reboot/{held[0]}/", {})
            return
        except OSError:  # urllib's HTTPError (429/503) and URLError are OSErrors
            time.sleep(0.2)
    raise AssertionError(f"could not reboot instance {held[0]}")


@pytest.mark.load_slow
def test_200_jobs_survive_a_429_and_5xx_burst_and_the_plugin_backs_off(tmp_path):
    started, release = tmp_path / "started", tmp_path / "release"
    started.mkdir()
    workdir = write_workflow(tmp_path / "wf", {
        "Snakefile": SNAKEFILE.format(jobs=JOBS, started=started, release=release),
    })
    offers = write_offers(tmp_path / "offers.json", JOBS + 20)
    output = tmp_path / "snakemake.log"
    with SimProcess(tmp_path / "sim", offers=offers) as sim, open(output, "w") as out:
        # The plugin lists instances only while some job waits for one to boot (SSH tells
        # it the rest), so one instance is held in boot: the steady loop to measure.
        sim.call("POST", "/_sim/faults", {"kind": "boot_hang", "next_n": 1})
        t0 = time.time()
        proc = subprocess.Popen(snakemake_argv(sim.url, jobs=JOBS), cwd=workdir,
                                env=sim_env(sim.api_key), stdout=out,
                                stderr=subprocess.STDOUT)
        try:
            settled = wait_for(
                lambda: (proc.poll() is not None
                         or len(list(started.iterdir())) + len(failures(workdir)) >= JOBS - 1),
                timeout=600, interval=0.5)
            assert settled and proc.poll() is None, (
                f"only {len(list(started.iterdir()))}/{JOBS} jobs started:\n{tail(output)}")
            ramp_up = time.time() - t0
            time.sleep(2.0)  # let the last launches' stragglers pass
            before_start = time.time()
            time.sleep(WINDOW)
            burst_start = time.time()
            for fault in burst_faults():
                sim.call("POST", "/_sim/faults", fault)
            time.sleep(WINDOW)
            burst_window_end = time.time()
            release.touch()
            reboot_held_instance(sim)
            proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        t1 = time.time()
        truth = sim.truth()
        requests = sim.requests()

    before = rate(requests, before_start, burst_start)
    during = rate(requests, burst_start, burst_window_end)
    listing_before = rate(requests, before_start, burst_start, LISTING)
    listing_during = rate(requests, burst_start, burst_window_end, LISTING)
    whole_burst = rate(requests, burst_start, t1)
    retries = events(workdir, "API retry")
    failed = failures(workdir)
    rejected = truth["rejected"]
    print(f"\nload: {JOBS} jobs, wall {t1 - t0:.1f} s (all running after {ramp_up:.1f} s, "
          f"done {t1 - burst_window_end:.1f} s after release), {len(requests)} API requests "
          f"({truth['requests_total']} counted by the simulator), "
          f"{rejected['429']} answered 429, {rejected['5xx']} answered 5xx, "
          f"{len(retries)} plugin retries")
    print(f"load: steady phase, all requests: {before:.2f}/s before the burst, "
          f"{during:.2f}/s during it ({WINDOW:.0f} s windows); listing {listing_before:.2f}/s "
          f"-> {listing_during:.2f}/s; whole burst incl. downloads and destroys "
          f"{whole_burst:.2f}/s")

    assert alive(truth) == [], alive(truth)
    # The burst really happened, and the plugin saw it.
    assert rejected["429"] >= 20 and rejected["5xx"] >= 2, rejected
    assert any("429" in r.get("reason", "") for r in retries), retries[:5]
    # There was a steady loop to measure (a listing of JOBS instances is several pages).
    assert listing_before >= 1.0, (listing_before, JOBS)
    # Backing off: the throttled listing slows down. Measured on this 2-core machine:
    # 0.3x with the back-off, 1.36x with it disabled (retrying at once). The listing,
    # not all traffic, because jobs failing in the window add destroys of their own.
    assert listing_during <= BACKED_OFF * listing_before, (
        f"the plugin listed instances at {listing_during:.2f} requests/s during the 429 "
        f"burst, {listing_before:.2f}/s before it: no back-off")
    # Every job succeeded.
    assert proc.returncode == 0 and not failed, (failed[:5], tail(output))
    assert all((workdir / "out" / f"{i}.txt").read_text() == f"ok-{i}\n" for i in range(JOBS))


# --------------------------------------------------------------------------------------
# Vast.ai's own throttle: a minimum interval per endpoint and key, shared by every job.

RATE_LIMIT = 0.25  # seconds between calls per endpoint: the simulator's realistic profile
BOOT = 3.0  # seconds: long enough that every job searches and rents before any is done
CREATE = "/api/v0/asks/"
SEARCH = "/api/v0/bundles/"

TOGETHER_SNAKEFILE = """\
rule all:
    input:
        expand("out/{{i}}.txt", i=range({jobs})),


rule one:
    output:
        "out/{{i}}.txt",
    resources:
        gpu=1,
    shell:
        "echo ok-{{wildcards.i}} > {{output}}"
"""


def answered(requests: list[dict], prefix: str, status: int | None = None) -> list[dict]:
    """Requests to routes starting with ``prefix``, optionally only those answered ``status``."""
    return [r for r in requests if r["route"].startswith(prefix)
            and (status is None or r.get("status") == status)]


def by_route(requests: list[dict]) -> dict[str, int]:
    """Request counts per method and route, ids left out."""
    counts: dict[str, int] = {}
    for r in requests:
        key = f"{r['method']} {r['route'].rstrip('/0123456789')}"
        counts[key] = counts.get(key, 0) + 1
    return counts


@pytest.mark.load_slow  # 50 s of the suite's 15 minutes; benchmarks/ratelimit.py measures it
def test_jobs_started_together_under_a_per_endpoint_interval_all_succeed(tmp_path):
    """Every job of a burst searches and rents at once against an endpoint that accepts one
    call per ``RATE_LIMIT`` seconds: the plugin must queue its calls instead of colliding on
    it until the retry budget runs out, and one search should serve many identical jobs."""
    workdir = write_workflow(tmp_path / "wf", {
        "Snakefile": TOGETHER_SNAKEFILE.format(jobs=JOBS)})
    offers = write_offers(tmp_path / "offers.json", JOBS + 20)
    output = tmp_path / "snakemake.log"
    with SimProcess(tmp_path / "sim", offers=offers, boot_delay=BOOT,
                    rate_limit=RATE_LIMIT) as sim, open(output, "w") as out:
        t0 = time.time()
        done = subprocess.run(snakemake_argv(sim.url, "--keep-going", jobs=JOBS), cwd=workdir,
                              env=sim_env(sim.api_key), stdout=out, stderr=subprocess.STDOUT,
                              timeout=840)
        wall = time.time() - t0
        truth = sim.truth()
        requests = sim.requests()

    refused = [r for r in requests if r.get("status") == 429]
    searches = answered(requests, SEARCH)
    creates = answered(requests, CREATE, 200)
    renting = creates[-1]["t"] - requests[0]["t"] if creates else float("nan")
    floor = (JOBS - 1) * RATE_LIMIT  # one create per job, one interval apart
    print(f"\nrate limit {RATE_LIMIT} s: {JOBS} jobs, wall {wall:.1f} s, {len(requests)} API "
          f"requests ({len(requests) / JOBS:.2f}/job), {len(refused)} answered 429 "
          f"({len(refused) / JOBS:.2f}/job: {by_route(refused)}), {len(searches)} searches; first "
          f"request -> last instance rented {renting:.1f} s against a floor of {floor:.1f} s")

    failed = failures(workdir)
    assert done.returncode == 0 and not failed, (failed[:5], tail(output))
    assert all((workdir / "out" / f"{i}.txt").read_text() == f"ok-{i}\n" for i in range(JOBS))
    assert alive(truth) == [], alive(truth)
    assert len(creates) == JOBS, len(creates)  # one instance per job, none rented twice
    # Calls queue for their endpoint's slot: a 429 is how an endpoint's interval is
    # learned (a few per endpoint), not the normal path. Before the limiter, 20 jobs
    # met 8.95 refusals per job and some failed when their retry budget ran out.
    assert len(refused) < 0.5 * JOBS, by_route(refused)
    # Identical jobs share their searches (146 searches for 20 jobs before).
    assert len(searches) <= JOBS / 4, len(searches)
