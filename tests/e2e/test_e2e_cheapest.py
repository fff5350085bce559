"""End to end, the price a run pays: the real ``snakemake`` CLI against the simulator.

The market in these tests has a clear price spread: a few cheap offers and many dear
ones, all matching. Concurrent jobs must rent the cheapest offers in rank order (the
k-th job the k-th cheapest), more jobs than matching offers must wait for an offer
or one of the run's own instances instead of failing, and a dear idle warm instance
gives way to a cheaper free offer when the queue makes the boot worth it. Every test
ends with no live instance in the simulator.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.e2e import alive, run_snakemake, start_snakemake, wait_for, write_workflow

pytestmark = pytest.mark.e2e

# Eight cheap offers ($0.10-0.17/h) and twenty dear ones ($1.00-2.90/h), ids falling as
# prices rise, so that no test can pass by renting in id order.
CHEAP = [0.10 + 0.01 * i for i in range(8)]
DEAR = [1.00 + 0.10 * i for i in range(20)]


def spread_market(prices: list[float]) -> list[dict]:
    ids = [500 + len(prices) - 1 - i for i in range(len(prices))]
    return [{"id": offer_id, "dph_total": round(price, 2), "hosting_type": 1}
            for offer_id, price in zip(ids, prices, strict=True)]


def parallel_workflow(root: Path, n: int, seconds: float) -> Path:
    return write_workflow(root, {"Snakefile": f'''\
rule all:
    input: expand("out/{{i}}.txt", i=range({n}))

rule work:
    output: "out/{{i}}.txt"
    resources: gpu=1
    shell: "sleep {seconds} && echo {{wildcards.i}} > {{output}}"
'''})


def journal_rows(workdir: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(workdir / ".snakemake" / "vastai" / "journal.sqlite") as db:
        return db.execute(sql).fetchall()


def rented_prices(truth: dict) -> list[float]:
    return sorted(i["dph_total"] for i in truth["instances"] if not i.get("foreign"))


def test_eight_concurrent_jobs_rent_the_eight_cheapest_offers(tmp_path, simulator_factory):
    market = spread_market(CHEAP + DEAR)
    sim = simulator_factory(offers=market, boot_delay=1.0)
    wf = parallel_workflow(tmp_path / "wf", 8, 2)
    result = run_snakemake(wf, sim.url, sim.api_key, "--vastai-no-reuse", jobs=8)
    assert result.returncode == 0, result.stderr[-4000:]
    truth = sim.truth()
    assert alive(truth) == []
    cheapest = sorted(o["dph_total"] for o in market)[:8]
    assert rented_prices(truth) == pytest.approx(cheapest, abs=0.011)  # storage is priced in
    # no job reached past a collision into the dear offers
    assert max(rented_prices(truth)) < 0.5


def test_twenty_jobs_on_eighteen_offers_all_succeed_by_waiting_and_reuse(tmp_path,
                                                                       simulator_factory):
    sim = simulator_factory(offers=spread_market(CHEAP + DEAR[:10]), boot_delay=1.0)
    wf = parallel_workflow(tmp_path / "wf", 20, 3)
    result = run_snakemake(wf, sim.url, sim.api_key, jobs=20, reuse=True)
    assert result.returncode == 0, result.stderr[-4000:]
    assert sorted(p.name for p in (wf / "out").iterdir()) == sorted(
        f"{i}.txt" for i in range(20))
    truth = sim.truth()
    assert alive(truth) == []
    assert len(truth["instances"]) <= 18
    waits = journal_rows(wf, "select count(distinct job_id) from transitions "
                             "where trigger = 'no_offer_free'")
    assert waits[0][0] >= 2  # the two jobs no offer was left for waited, not failed
    assert "waiting for a matching offer or an instance of this run" in result.stderr
    leases = journal_rows(wf, "select count(*) from transitions where trigger = 'leased'")
    assert leases[0][0] >= 2
    assert journal_rows(wf, "select count(*) from jobs where state != 'succeeded'") == [(0,)]


def test_without_reuse_the_extra_jobs_wait_for_the_runs_own_offers_to_come_back(
        tmp_path, simulator_factory):
    sim = simulator_factory(offers=spread_market(CHEAP[:3]), boot_delay=0.5)
    wf = parallel_workflow(tmp_path / "wf", 6, 1)
    result = run_snakemake(wf, sim.url, sim.api_key, "--vastai-no-reuse", jobs=6)
    assert result.returncode == 0, result.stderr[-4000:]
    truth = sim.truth()
    assert alive(truth) == [] and len(truth["instances"]) == 6
    assert {i["offer_id"] for i in truth["instances"]} == {500, 501, 502}
    waited = journal_rows(wf, "select detail from transitions where trigger = 'no_offer_free' "
                              "and detail like '{%'")
    assert waited and all(json.loads(d)["claimed_by_run"] >= 0 for (d,) in waited)


def test_a_job_past_the_offer_wait_fails_naming_its_request(tmp_path, simulator_factory):
    sim = simulator_factory(offers=spread_market(CHEAP[:1]), boot_delay=0.5)
    wf = parallel_workflow(tmp_path / "wf", 2, 8)
    result = run_snakemake(wf, sim.url, sim.api_key, "--vastai-no-reuse",
                           "--vastai-offer-wait", "2", jobs=2)
    assert result.returncode != 0
    assert "came free within 2s (--vastai-offer-wait)" in result.stderr
    assert "num_gpus=1" in result.stderr  # the request it waited for
    assert alive(sim.truth()) == []


def job_states(wf: Path) -> list[str]:
    try:
        return [state for (state,) in journal_rows(wf, "select state from jobs")]
    except sqlite3.Error:  # not created yet, or busy
        return []


def test_kill_9_while_a_job_waits_then_the_next_run_finishes_everything(
        tmp_path, simulator_factory):
    """One offer, two jobs: one runs, the other waits (nothing rented for it). SIGKILL the
    run there; the next run settles the journal (the waiting job held no instance), finishes
    both jobs and leaves nothing alive."""
    sim = simulator_factory(offers=spread_market(CHEAP[:1]), boot_delay=0.5)
    wf = parallel_workflow(tmp_path / "wf", 2, 6)
    proc = start_snakemake(wf, sim.url, sim.api_key, "--vastai-no-reuse", jobs=2)
    try:
        assert wait_for(lambda: sorted(job_states(wf)) == ["running", "waiting"], timeout=120)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    assert len(sim.truth()["instances"]) == 1  # the waiting job rented nothing
    subprocess.run([sys.executable, "-m", "snakemake", "--unlock"], cwd=wf,
                   capture_output=True, timeout=120, check=True)
    result = run_snakemake(wf, sim.url, sim.api_key, "--vastai-no-reuse", "--rerun-incomplete",
                           jobs=2)
    assert result.returncode == 0, result.stderr[-4000:]
    assert sorted(p.name for p in (wf / "out").iterdir()) == ["0.txt", "1.txt"]
    assert alive(sim.truth()) == []
    assert "waiting" not in job_states(wf)  # the crashed run's waiting job was closed


def test_a_dear_idle_instance_gives_way_to_a_cheap_free_offer(tmp_path, simulator_factory):
    """The first job needs an H100 (dear); the next one takes any GPU. Keeping the idle
    H100 for it would cost more than booting the free cheap offer: it is replaced, and
    the journal says why."""
    market = [*spread_market(CHEAP[:2]),
              {"id": 900, "dph_total": 2.9, "gpu_name": "H100 SXM", "hosting_type": 1}]
    sim = simulator_factory(offers=market, boot_delay=1.0)
    wf = write_workflow(tmp_path / "wf", {"Snakefile": '''\
rule all:
    input: "b.txt"

rule a:
    output: "a.txt"
    resources: gpu=1, gpu_model="H100_SXM"
    shell: "sleep 2 && echo a > {output}"

rule b:
    input: "a.txt"
    output: "b.txt"
    resources: gpu=1
    shell: "sleep 2 && cat {input} > {output} && echo b >> {output}"
'''})
    result = run_snakemake(wf, sim.url, sim.api_key, "--vastai-idle-timeout", "60", jobs=2,
                           reuse=True)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (wf / "b.txt").read_text() == "a\nb\n"
    truth = sim.truth()
    assert alive(truth) == []
    by_job = dict(journal_rows(wf, "select rule, dph_total from jobs"))
    assert by_job["a"] == pytest.approx(2.9, abs=0.011)
    assert by_job["b"] == pytest.approx(0.10, abs=0.011)
    (why,) = journal_rows(wf, "select detail from instance_transitions "
                              "where trigger = 'expired' and detail like 'replaced%'")
    assert "against a free $0.10" in why[0]
