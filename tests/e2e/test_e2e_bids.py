"""End to end: interruptible (bid) instances, outbid by the simulator's ``outbid`` fault.

The real ``snakemake`` CLI runs against the simulator; every test ends with no live
instance of ours, stopped ones included (``alive`` counts every instance not destroyed).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.e2e import alive, run_snakemake, write_workflow
from tests.harness.s3 import s3_server  # noqa: F401 (fixture)

pytestmark = pytest.mark.e2e

# Writes its input's bytes and some of its own, so the output depends on the input upload.
SNAKEFILE = '''\
rule all:
    input: "out/a.txt", "out/b.txt"

rule work:
    input: "data/{name}.in"
    output: "out/{name}.txt"
    shell: "sleep {SLEEP}; (cat {input}; echo done {wildcards.name}) > {output}"
'''


def workflow(root: Path, sleep: float = 0.0, names: tuple[str, ...] = ("a", "b")) -> Path:
    files = {"Snakefile": SNAKEFILE.replace("{SLEEP}", f"{sleep:g}")
             .replace('"out/a.txt", "out/b.txt"',
                      ", ".join(f'"out/{n}.txt"' for n in names))}
    for name in names:
        files[f"data/{name}.in"] = f"input of {name}\n"
    return write_workflow(root, files)


def bid_run(wf: Path, sim, *extra: str, grace: float = 30.0) -> subprocess.CompletedProcess:
    """All rules preemptible; --preemptible-rules takes names, so an option follows it."""
    return run_snakemake(wf, sim.url, sim.api_key, "--preemptible-rules",
                         "--vastai-preemption-grace", f"{grace:g}", *extra)


def rows(wf: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(wf / ".snakemake" / "vastai" / "journal.sqlite") as db:
        return db.execute(sql).fetchall()


def count_jobs(wf: Path, where: str) -> int:
    """Jobs matching ``where``, 0 while the journal is not there yet (a run starting)."""
    try:
        return rows(wf, f"select count(*) from jobs where {where}")[0][0]
    except sqlite3.Error:
        return 0


def local_outputs(tmp_path: Path, sleep: float, names: tuple[str, ...]) -> dict[str, bytes]:
    """The same workflow under Snakemake's local executor, for a byte comparison."""
    ref = workflow(tmp_path / "local", sleep=0, names=names)
    done = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1"], cwd=ref,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return {n: (ref / f"out/{n}.txt").read_bytes() for n in names}


def assert_outputs_match_local(wf: Path, tmp_path: Path, names: tuple[str, ...]) -> None:
    expected = local_outputs(tmp_path, 0, names)
    assert {n: (wf / f"out/{n}.txt").read_bytes() for n in names} == expected


def test_bid_instances_are_rented_with_a_bid_and_journaled(tmp_path, simulator):
    wf = workflow(tmp_path / "wf")
    result = bid_run(wf, simulator, "--vastai-bid", "1.5")
    assert result.returncode == 0, result.stderr[-4000:]
    truth = simulator.truth()
    assert len(truth["instances"]) == 2
    for inst in truth["instances"]:
        assert inst["is_bid"] and inst["bid_price"] == pytest.approx(1.5 * inst["min_bid"],
                                                                     rel=1e-4)
    journaled = rows(wf, "select instance_id, bid_price, storage_dph, ondemand_dph from "
                         "instances order by instance_id")
    by_id = {i["id"]: i for i in truth["instances"]}
    for iid, bid, storage, on_demand in journaled:
        assert bid == pytest.approx(by_id[iid]["bid_price"])
        assert storage > 0 and on_demand == pytest.approx(by_id[iid]["ondemand_dph"], rel=1e-4)
    assert_outputs_match_local(wf, tmp_path, ("a", "b"))
    assert alive(truth) == []


def test_rules_not_chosen_rent_on_demand(tmp_path, simulator):
    wf = workflow(tmp_path / "wf", names=("a",))
    result = run_snakemake(wf, simulator.url, simulator.api_key)
    assert result.returncode == 0, result.stderr[-4000:]
    truth = simulator.truth()
    assert [i["is_bid"] for i in truth["instances"]] == [False]
    assert alive(truth) == []


@pytest.mark.parametrize(("at_state", "after", "sleep", "from_state"), [
    ("loading", 0.0, 0.0, "booting"),
    ("running", 1.5, 4.0, "running"),
])
def test_preempted_instance_back_within_the_grace_reruns_the_job_on_it(
        tmp_path, simulator, at_state, after, sleep, from_state):
    simulator.add_fault("outbid", at_state=at_state, after_seconds=after, back_after=1.0)
    names = ("a",)
    wf = workflow(tmp_path / "wf", sleep=sleep, names=names)
    result = bid_run(wf, simulator)
    assert result.returncode == 0, result.stderr[-4000:]
    truth = simulator.truth()
    [inst] = truth["instances"]  # the same instance throughout
    assert inst["preemptions"] == 1 and inst["stopped_seconds"] > 0.5
    assert inst["storage_dollars_stopped"] > 0
    moves = rows(wf, "select from_state, to_state, trigger from transitions order by id")
    assert (from_state, "preempted", "preempted") in moves
    assert ("preempted", "booting", "resumed") in moves
    uploads = [m for m in moves if m[2] == "uploaded"]
    assert len(uploads) == 1  # after a preemption while running, the kept inputs serve
    assert rows(wf, "select state, attempt from jobs") == [("succeeded", 1)]
    [(stopped, preemptions)] = rows(wf, "select stopped_seconds, preemptions from instances")
    # the journal's stop runs from the listing that showed it to the one that showed it back
    assert 0 <= stopped <= inst["stopped_seconds"] + 1.0 and preemptions == 1
    assert_outputs_match_local(wf, tmp_path, names)
    assert alive(truth) == []


def test_instance_never_back_is_destroyed_and_the_job_rents_again(tmp_path, simulator):
    simulator.add_fault("outbid", next_n=1, at_state="running", after_seconds=0.5)
    names = ("a",)
    wf = workflow(tmp_path / "wf", sleep=3.0, names=names)
    result = bid_run(wf, simulator, grace=2.0)
    assert result.returncode == 0, result.stderr[-4000:]
    truth = simulator.truth()
    first, second = sorted(truth["instances"], key=lambda i: i["id"])
    assert first["preemptions"] == 1 and first["outbid"]  # destroyed while stopped
    assert second["is_bid"] and second["preemptions"] == 0
    moves = rows(wf, "select from_state, to_state, trigger from transitions order by id")
    # torn down in destroying, the job's one teardown state, then searching again
    assert ("preempted", "destroying", "abandon") in moves
    assert ("destroying", "searching", "rent_again") in moves
    assert "1 preemptions" in result.stderr  # the run summary counts them
    # one Snakemake job, one attempt: the preemption did not use up --retries
    assert rows(wf, "select state, attempt from jobs") == [("succeeded", 1)]
    assert_outputs_match_local(wf, tmp_path, names)
    assert alive(truth) == []


@pytest.mark.parametrize("fallback", [True, False])
def test_after_preemptible_retries_the_job_falls_back_to_on_demand(tmp_path, simulator,
                                                                    fallback):
    simulator.add_fault("outbid", next_n=2, at_state="loading", after_seconds=0.0)
    names = ("a",)
    wf = workflow(tmp_path / "wf", names=names)
    extra = ["--preemptible-retries", "1"] + ([] if fallback else ["--vastai-no-bid-fallback"])
    result = bid_run(wf, simulator, *extra, grace=0.5)
    assert result.returncode == 0, result.stderr[-4000:]
    truth = simulator.truth()
    kinds = [i["is_bid"] for i in sorted(truth["instances"], key=lambda i: i["id"])]
    # fallback: one bid instance outbid, then on demand; without: bids until one holds
    assert kinds == ([True, False] if fallback else [True, True, True])
    assert alive(truth) == []


def test_journal_cost_shows_storage_while_stopped_and_the_on_demand_price(tmp_path,
                                                                          simulator):
    simulator.add_fault("outbid", at_state="running", after_seconds=0.5, back_after=1.5)
    wf = workflow(tmp_path / "wf", sleep=2.0, names=("a",))
    assert bid_run(wf, simulator).returncode == 0
    out = subprocess.run([sys.executable, "-m", "snakemake_executor_plugin_vastai", "journal",
                          "cost", "--json"], cwd=wf, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    bids = json.loads(out.stdout)["bids"]
    truth = simulator.truth()
    [inst] = truth["instances"]
    assert bids["preemptions"] == 1
    assert bids["stopped_storage_dollars"] > 0
    # the journal's storage share is within the simulator's (their clocks differ slightly)
    assert bids["stopped_storage_dollars"] == pytest.approx(inst["storage_dollars_stopped"],
                                                            rel=0.5)
    assert bids["on_demand_dollars"] > bids["dollars"] > 0
    text = subprocess.run([sys.executable, "-m", "snakemake_executor_plugin_vastai", "journal",
                           "cost", "--detail"], cwd=wf, capture_output=True, text=True,
                          timeout=60).stdout  # the summary leads; the tables are the detail
    assert "storage while stopped" in text and "same on demand" in text
    assert alive(truth) == []


@pytest.mark.parametrize(("extra", "culprit"), [
    (["--vastai-bid", "0.5"], "--vastai-bid"),
    (["--vastai-preemption-grace", "-3"], "--vastai-preemption-grace"),
])
def test_bad_bid_options_fail_before_renting(tmp_path, simulator, extra, culprit):
    wf = workflow(tmp_path / "wf", names=("a",))
    result = bid_run(wf, simulator, *extra)
    assert result.returncode != 0
    assert culprit in result.stderr
    assert simulator.truth()["created_count"] == 0


def test_a_bad_vastai_interruptible_resource_fails_before_renting(tmp_path, simulator):
    wf = workflow(tmp_path / "wf", names=("a",))
    result = run_snakemake(wf, simulator.url, simulator.api_key, "--set-resources",
                           "work:vastai_interruptible=maybe")
    assert result.returncode != 0
    assert "rule work: resource vastai_interruptible" in result.stderr
    assert simulator.truth()["created_count"] == 0


def test_preempted_while_downloading_fetches_the_outputs_again_without_rerunning(
        tmp_path, simulator):
    """The outbid fault fires once 2 MB went out over SSH: only the download sends that."""
    simulator.add_fault("outbid", at_state="running", after_bytes_out=2_000_000,
                        back_after=1.0)
    wf = write_workflow(tmp_path / "wf", {"Snakefile": (
        'rule big:\n    output: "big.bin"\n'
        '    shell: "echo run >> runs.txt; head -c 40000000 /dev/urandom > {output}"\n')})
    result = bid_run(wf, simulator, "big.bin")
    assert result.returncode == 0, result.stderr[-4000:]
    truth = simulator.truth()
    [inst] = truth["instances"]
    assert inst["preemptions"] == 1
    moves = rows(wf, "select from_state, to_state, trigger from transitions order by id")
    assert ("downloading", "preempted", "preempted") in moves
    assert ("booting", "downloading", "booted") in moves  # straight back to the download
    assert [m for m in moves if m[2] == "completed"] == [("running", "downloading",
                                                          "completed")]
    sandbox = Path(inst["sandbox"])
    remote = next(sandbox.rglob("big.bin"))
    assert (wf / "big.bin").read_bytes() == remote.read_bytes()
    assert next(sandbox.rglob("runs.txt")).read_text() == "run\n"  # ran once
    assert alive(truth) == []


def test_a_preempted_job_is_resumed_after_a_crash_and_a_raised_bid_starts_it_again(
        tmp_path, simulator):
    """Snakemake is killed while its job waits on an outbid instance; the restart re-attaches
    to the stopped instance (nothing new is rented), and raising the bid above the competing
    one (``PUT /instances/bid_price/{id}/`` through our adapter) starts it again."""
    import signal

    from snakemake_executor_plugin_vastai.vastai.api import VastAPI
    from tests.harness.e2e import start_snakemake, wait_for

    simulator.add_fault("outbid", at_state="running", after_seconds=1.0, competing_bid=5.0)
    names = ("a",)
    wf = workflow(tmp_path / "wf", sleep=3.0, names=names)
    proc = start_snakemake(wf, simulator.url, simulator.api_key, "--preemptible-rules",
                           "--vastai-preemption-grace", "120")
    try:
        assert wait_for(lambda: count_jobs(wf, "state = 'preempted'") == 1, timeout=90)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    [inst] = simulator.truth()["instances"]
    assert inst["alive"] and inst["outbid"]
    subprocess.run([sys.executable, "-m", "snakemake", "--unlock"], cwd=wf,
                   capture_output=True, timeout=120, check=True)
    restart = start_snakemake(wf, simulator.url, simulator.api_key, "--preemptible-rules",
                              "--vastai-preemption-grace", "120", "--rerun-incomplete")
    try:
        assert wait_for(lambda: count_jobs(
            wf, "state = 'preempted' and resumed_from is not null") == 1, timeout=90)
        VastAPI(simulator.api_key, simulator.url).change_bid(inst["id"], 6.0)
        out, _ = restart.communicate(timeout=180)
    finally:
        if restart.poll() is None:
            restart.kill()
    assert restart.returncode == 0, out[-4000:]
    truth = simulator.truth()
    assert [i["id"] for i in truth["instances"]] == [inst["id"]]  # nothing new was rented
    assert truth["instances"][0]["bid_price"] == 6.0
    assert_outputs_match_local(wf, tmp_path, names)
    assert alive(truth) == []


def test_storage_mode_job_preempted_while_running_reruns_on_the_same_instance(
        tmp_path, simulator, s3_server):  # noqa: F811
    from tests.e2e.test_e2e_storage import new_bucket, s3_env, storage_args

    simulator.add_fault("outbid", at_state="running", after_seconds=1.0, back_after=1.0)
    bucket = new_bucket(s3_server)
    wf = write_workflow(tmp_path / "wf", {"Snakefile": (
        'rule slow:\n    output: "done.txt"\n'
        '    shell: "sleep 4; echo finished > {output}"\n')})
    result = run_snakemake(wf, simulator.url, simulator.api_key, "--preemptible-rules",
                           "--vastai-preemption-grace", "30", *storage_args(s3_server, bucket),
                           env=s3_env(simulator.api_key))
    assert result.returncode == 0, result.stderr[-4000:]
    truth = simulator.truth()
    [inst] = truth["instances"]
    assert inst["preemptions"] == 1
    moves = rows(wf, "select from_state, to_state, trigger from transitions order by id")
    assert ("running", "preempted", "preempted") in moves
    assert ("preempted", "booting", "resumed") in moves
    assert s3_server.read(bucket, "wf/done.txt") == b"finished\n"
    assert alive(truth) == []


def test_a_failing_preemptible_job_fails_cleanly_without_preemptible_retries(tmp_path,
                                                                             simulator):
    """Snakemake 9.27 crashes (None > int) on a failed preemptible job when
    --preemptible-retries is not given; the plugin defaults it to --retries."""
    wf = write_workflow(tmp_path / "wf", {
        "Snakefile": 'rule boom:\n    output: "out.txt"\n    shell: "exit 3"\n'})
    result = bid_run(wf, simulator, "--retries", "1")
    assert result.returncode != 0
    assert "TypeError" not in result.stderr
    truth = simulator.truth()
    assert truth["created_count"] == 2  # --retries 1: two attempts, each on a bid instance
    assert all(i["is_bid"] for i in truth["instances"])
    assert alive(truth) == []
