"""The journal CLI, on journals written by real snakemake runs against the simulator.

One workflow run per module (three jobs, one of which fails) writes the
journal every read-only test shares. Tests that change a journal or the
account (leftovers, cleanup) work on a copy of it and leave the account as
they found it: copies share the workflow id, hence the label prefix.
"""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import vastai

from snakemake_executor_plugin_vastai.cli import journal as journal_cli
from snakemake_executor_plugin_vastai.cli import tables
from snakemake_executor_plugin_vastai.cli.journal import api as journal_api
from snakemake_executor_plugin_vastai.cli.journal import jobs as journal_jobs
from snakemake_executor_plugin_vastai.cli.journal import main
from snakemake_executor_plugin_vastai.journal.store import Journal
from snakemake_executor_plugin_vastai.simulator.server import SimConfig, Simulator
from snakemake_executor_plugin_vastai.vastai.api import VastAPI
from tests.harness.e2e import run_snakemake, sim_env, write_workflow

pytestmark = pytest.mark.e2e

SNAKEFILE = """\
rule all:
    input: "a.txt", "b.txt", "c.txt"

rule ok:
    output: "{x}.txt"
    wildcard_constraints: x="a|b"
    shell: "sleep 2; echo {wildcards.x} > {output}"

rule boom:
    output: "c.txt"
    shell: "sleep 2; echo boom-goes-the-job >&2; exit 3"
"""
IMAGE = "vastai/pytorch:2.4.1-cuda-12.4.1"
# The journal prices an instance on Vast.ai's clock: from the API's start_date to
# the moment its destroy request was accepted. What remains between it and the
# simulator's bill is the destroy answer's trip back (milliseconds on a quiet machine;
# 0.23 s seen with three test workers and a load average of 8-12): tolerated per
# instance beyond the 1% target. On instances that live minutes, not 20 s, it vanishes.
API_LAG = 0.5


@dataclass
class Finished:
    """The shared run: its simulator, workflow directory, journal and ground truth."""

    sim: Simulator
    workdir: Path
    journal: Path
    truth: dict


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    """One simulator for the module (the simulator_factory fixture is per test)."""
    simulator = Simulator(SimConfig())
    simulator.start()
    try:
        yield simulator
    finally:
        simulator.stop()
        left = simulator.leftovers()
        assert not left["pids"] and not left["ports"], left


@pytest.fixture(scope="module")
def finished(sim: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Finished:
    workdir = write_workflow(tmp_path_factory.mktemp("jcli") / "wf", {"Snakefile": SNAKEFILE})
    # Slow create answers and slow destroy confirmations: the client's own clock then
    # runs seconds apart from the billing clock, and only pricing on Vast.ai's facts
    # (start_date, the accepted destroy) stays within 1% of the bill.
    sim.add_fault("api_latency", seconds=1.5, endpoint="PUT */asks/*")
    sim.add_fault("api_latency", seconds=1.5, endpoint="GET /api/v0/instances/*")
    result = run_snakemake(workdir, sim.url, sim.api_key, "--keep-going")
    sim.clear_faults()
    assert result.returncode != 0, "the boom job should have failed the run"
    assert ("vastai: run summary: failed (1 of 3 jobs); 3 jobs (1 failed, 2 succeeded)"
            in result.stderr)
    truth = sim.truth()
    assert [i for i in truth["instances"] if i["alive"]] == []
    return Finished(sim, workdir, workdir / ".snakemake/vastai/journal.sqlite", truth)


@pytest.fixture
def api_env(monkeypatch: pytest.MonkeyPatch, sim: Simulator) -> None:
    """The key in the environment; the URL left for the CLI to find in the journal."""
    for name in ("VAST_URL", "SNAKEMAKE_VASTAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VAST_API_KEY", sim.api_key)


@pytest.fixture
def copy(finished: Finished, tmp_path: Path, sim: Simulator) -> Iterator[Path]:
    """A private copy of the shared journal; whatever the test rented is destroyed after."""
    target = tmp_path / "journal.sqlite"
    shutil.copy2(finished.journal, target)
    yield target
    api = VastAPI(sim.api_key, sim.url)
    with Journal(target) as journal:
        prefix = journal.label_prefix
    for row in api.list_instances(prefix):
        api.destroy_instance(int(row["id"]))


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    return cli_json_code(capsys, 0, *argv)


def cli_json_code(capsys: pytest.CaptureFixture[str], expected: int, *argv: str) -> Any:
    code, out, err = cli(capsys, *argv, "--json")
    assert code == expected, err
    return json.loads(out)


def rent(sim: Simulator, label: str) -> int:
    """An instance created through the official SDK, as the plugin would."""
    sdk = vastai.VastAI(api_key=sim.api_key, server_url=sim.url, raw=True, quiet=True, retry=1)
    offer = sdk.search_offers("num_gpus=1", limit=1, no_default=True)[0]
    return int(sdk.create_instance(offer["id"], image=IMAGE, label=label)["new_contract"])


def billed(instances: list[dict]) -> object:
    """The simulator's bill for these instances, as a tolerance for the journal's."""
    dollars = sum(i["billed_dollars"] for i in instances)
    lag = sum(i["dph_total"] for i in instances) * API_LAG / 3600
    return pytest.approx(dollars, rel=0.01, abs=lag)


def alive_ids(sim: Simulator) -> set[int]:
    return {i["id"] for i in sim.truth()["instances"] if i["alive"]}


def journal_leftover(
    path: Path, sim: Simulator, *, state: str, end: str | None = "crashed"
) -> tuple[str, int, str, str]:
    """Journal a job whose instance lives: (job id, instance id, label, run id)."""
    with Journal(path) as journal:
        run = journal.start_run(
            snakemake_version="t", plugin_version="t", settings={"api_url": sim.url}
        )
        job = journal.add_job(
            run_id=run,
            rule="leftover",
            snakemake_jobid=7,
            fingerprint="fp",
            attempt=1,
            state="searching",
        )
        label = journal.label_prefix + job
        offer = {"id": 1, "gpu_name": "RTX 3090", "num_gpus": 1, "dph_total": 0.25}
        journal.record_rent_intent(job_id=job, run_id=run, label=label, offer=offer)
        instance_id = rent(sim, label)
        journal.record_instance_created(label, instance_id)
        if state != "searching":
            journal.transition(job, source="searching", dest=state, trigger="test")
        if end is not None:
            journal.end_run(run, end)
    return job, instance_id, label, run


def prefix_of(path: Path) -> str:
    with Journal(path) as journal:
        return journal.label_prefix


# -- runs, jobs, show, instances, cost (read-only) ------------------------------------------
def test_runs_shows_the_run_its_jobs_and_its_cost(capsys, finished):
    [run] = cli_json(capsys, "--journal", str(finished.journal), "runs")
    assert run["outcome"] == "finished" and run["status"] == "failed (1 of 3 jobs)"
    assert run["jobs"] == {"succeeded": 2, "failed": 1}
    assert run["dollars"] == billed(finished.truth["instances"])
    assert run["settings"]["api_url"] == finished.sim.url
    code, out, _ = cli(capsys, "--journal", str(finished.journal), "runs")
    assert code == 0
    header, line = out.splitlines()
    assert header.split()[:4] == ["RUN", "STARTED", "ENDED", "OUTCOME"]
    assert line.startswith(run["id"]) and "2 succeeded, 1 failed" in line
    assert " failed (1 of 3 jobs) " in line and "finished" not in line
    assert tables.money(run["dollars"]) in line


def test_jobs_of_the_latest_run_with_filters(capsys, finished):
    path = str(finished.journal)
    jobs = cli_json(capsys, "--journal", path, "jobs")
    assert sorted(j["rule"] for j in jobs) == ["boom", "ok", "ok"]
    by_instance = {i["id"]: i for i in finished.truth["instances"]}
    for job in jobs:
        truth = by_instance[job["instance_id"]]
        assert job["gpu"] == f"1x {truth['gpu_name']}"
        assert job["dollars"] == billed([truth])
    [failed] = cli_json(capsys, "--journal", path, "jobs", "--state", "failed")
    assert failed["rule"] == "boom" and "exited with code 3" in failed["last_error"]
    assert "boom-goes-the-job" in failed["last_error"]  # the full text, not one line
    assert len(cli_json(capsys, "--journal", path, "jobs", "--rule", "ok")) == 2
    assert cli_json(capsys, "--journal", path, "jobs", "--rule", "ok", "--state", "failed") == []
    run_id = failed["run_id"]
    assert len(cli_json(capsys, "--journal", path, "jobs", "--run", run_id[:10])) == 3
    assert len(cli_json(capsys, "--journal", path, "jobs", "--all-runs")) == 3


def test_jobs_table_shows_one_line_of_the_error(capsys, finished):
    code, out, _ = cli(capsys, "--journal", str(finished.journal), "jobs", "--state", "failed")
    assert code == 0
    header, line = out.splitlines()
    assert header.split() == [
        "JOB",
        "RULE",
        "TRY",
        "STATE",
        "INSTANCE",
        "GPU",
        "$/H",
        "TIME",
        "COST",
        "ERROR",
    ]
    assert " boom " in line and " failed " in line
    assert "rule boom: the job exited" in line and line.endswith("...")
    assert "boom-goes-the-job" not in out
    code, out, _ = cli(capsys, "--journal", str(finished.journal), "jobs", "--all-runs")
    assert code == 0 and out.split()[9] == "RUN" and len(out.splitlines()) == 4


def test_jobs_unknown_run_or_bad_state_is_a_usage_error(capsys, finished):
    code, _, err = cli(capsys, "--journal", str(finished.journal), "jobs", "--run", "1999")
    assert code == 2 and "no run '1999'" in err
    code, _, err = cli(capsys, "--journal", str(finished.journal), "jobs", "--state", "done")
    assert code == 2 and "invalid choice" in err


def test_show_by_unique_prefix_tells_the_whole_story(capsys, finished):
    with Journal(finished.journal) as journal:
        jobs = journal.jobs()
        [failed] = [j for j in jobs if j["state"] == "failed"]
        history = journal.transitions_of(failed["id"])
    others = [j["id"] for j in jobs if j is not failed]
    prefix = next(
        failed["id"][:n]
        for n in range(1, 13)
        if not any(o.startswith(failed["id"][:n]) for o in others)
    )
    view = cli_json(capsys, "--journal", str(finished.journal), "show", prefix)
    assert view["job"]["id"] == failed["id"]
    assert [(t["from_state"], t["to_state"]) for t in view["transitions"]] == [
        (t["from_state"], t["to_state"]) for t in history
    ]
    assert view["transitions"][-1]["detail"] == {"instance": failed["instance_id"]}
    assert view["instance"]["instance_id"] == failed["instance_id"]
    assert "host_key" not in view["instance"]
    code, out, _ = cli(capsys, "--journal", str(finished.journal), "show", prefix)
    assert code == 0
    assert f"snakemake job {failed['snakemake_jobid']}" in out
    assert failed["log_path"] in out
    assert f"{failed['ssh_host']}:{failed['ssh_port']}" in out
    assert "destroying   failed" in out  # the last transition, from -> to
    assert "last error" in out and "boom-goes-the-job" in out


def test_show_unknown_or_ambiguous_job_exits_2(capsys, finished):
    code, out, err = cli(capsys, "--journal", str(finished.journal), "show", "zzzz")
    assert code == 2 and out == ""
    assert "no job 'zzzz'" in err and str(finished.journal) in err
    code, _, err = cli(capsys, "--journal", str(finished.journal), "show", "")
    assert code == 2 and "ambiguous" in err


def test_instances_match_the_simulators_bill(capsys, finished):
    rows = cli_json(capsys, "--journal", str(finished.journal), "instances")
    truth = {i["id"]: i for i in finished.truth["instances"]}
    assert {r["instance_id"] for r in rows} == set(truth)
    with Journal(finished.journal) as journal:
        for row in rows:
            fact = truth[row["instance_id"]]
            with capsys.disabled():  # `pytest -s` shows the agreement
                print(f"instance {fact['id']}: journal {row['billed_seconds']:.3f} s, "
                      f"simulator {fact['billed_seconds']:.3f} s")
            assert row["billed_seconds"] == pytest.approx(fact["billed_seconds"], rel=0.01,
                                                          abs=API_LAG)
            assert row["billed_dollars"] == billed([fact])
            assert (row["billed_seconds"], row["billed_dollars"]) == pytest.approx(
                journal.instance_cost(row["label"])
            )
            assert row["destroyed_at"] is not None and row["rule"] in ("ok", "boom")
    code, out, _ = cli(capsys, "--journal", str(finished.journal), "instances")
    assert code == 0 and "still billing?" not in out
    assert all(str(i) in out for i in truth)


def test_cost_per_run_rule_and_gpu(capsys, finished):
    report = cli_json(capsys, "--journal", str(finished.journal), "cost")
    instances = finished.truth["instances"]
    assert report["total"]["instances"] == 3
    assert report["total"]["dollars"] == billed(instances)
    assert report["total"]["instance_hours"] == pytest.approx(
        sum(i["billed_seconds"] for i in instances) / 3600, rel=0.01, abs=3 * API_LAG / 3600
    )
    rules = {r["rule"]: r for r in report["rules"]}
    assert rules["ok"]["instances"] == 2 and rules["boom"]["instances"] == 1
    by_id = {i["id"]: i for i in instances}
    with Journal(finished.journal) as journal:  # each rule's share is its instances' bill
        for rule in ("ok", "boom"):
            ids = {j["instance_id"] for j in journal.jobs() if j["rule"] == rule}
            assert rules[rule]["dollars"] == billed([by_id[i] for i in ids])
    gpus = {g["gpu"]: g for g in report["gpus"]}
    for gpu in {i["gpu_name"] for i in instances}:
        assert gpus[f"1x {gpu}"]["dollars"] == billed(
            [i for i in instances if i["gpu_name"] == gpu]
        )
    code, out, _ = cli(capsys, "--journal", str(finished.journal), "cost")
    assert code == 0  # the summary: the total, each rule's share, the way to the tables
    total_line, rule_line, more = out.splitlines()
    assert total_line.startswith(f"{tables.money(report['total']['dollars'])} for 3 instances")
    for rule in ("ok", "boom"):
        assert f"{rule} {tables.money(rules[rule]['dollars'])}" in rule_line
    assert more.endswith("journal cost --detail")
    code, out, _ = cli(capsys, "--journal", str(finished.journal), "cost", "--detail")
    assert code == 0
    assert [block.split()[0] for block in out.split("\n\n")] == ["RUN", "RULE", "GPU", "TOTAL",
                                                                   "BALANCE"]
    assert tables.money(report["total"]["dollars"]) in out


def test_workflow_directory_and_option_after_the_command(capsys, finished, monkeypatch):
    assert len(cli_json(capsys, "--journal", str(finished.workdir), "jobs")) == 3
    assert len(cli_json(capsys, "jobs", "--journal", str(finished.journal))) == 3
    monkeypatch.chdir(finished.workdir)
    assert len(cli_json(capsys, "runs")) == 1


# -- journals that cannot be read -------------------------------------------------------------
def test_missing_journal_exits_2_and_creates_nothing(capsys, tmp_path):
    missing = tmp_path / "nowhere" / "journal.sqlite"
    for command in (["runs"], ["jobs"], ["cost"], ["instances"], ["show", "abc"]):
        code, out, err = cli(capsys, "--journal", str(missing), *command)
        assert code == 2 and out == ""
        assert f"no journal at {missing}" in err and "--journal" in err
    assert not missing.parent.exists()


def test_corrupt_journal_exits_2_and_is_left_untouched(capsys, tmp_path):
    path = tmp_path / "journal.sqlite"
    garbage = bytes(range(256)) * 40
    path.write_bytes(garbage)
    code, out, err = cli(capsys, "--journal", str(path), "runs")
    assert code == 2 and out == ""
    assert str(path) in err and "damaged" in err and "Traceback" not in err
    assert path.read_bytes() == garbage
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal.sqlite"]


def test_too_new_journal_exits_2(capsys, tmp_path):
    path = tmp_path / "journal.sqlite"
    Journal(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    code, _, err = cli(capsys, "--journal", str(path), "runs")
    assert code == 2 and "schema version 99" in err and "Upgrade" in err


def test_empty_journal_file_is_refused(capsys, tmp_path):
    path = tmp_path / "journal.sqlite"
    path.touch()
    code, _, err = cli(capsys, "--journal", str(path), "jobs")
    assert code == 2 and "not a journal" in err
    assert path.read_bytes() == b""


# -- --follow ---------------------------------------------------------------------------------
def test_follow_on_a_finished_run_returns_at_once(capsys, finished):
    started = time.monotonic()
    code, out, _ = cli(
        capsys, "--journal", str(finished.journal), "jobs", "--follow", "--interval", "30"
    )
    assert code == 0 and time.monotonic() - started < 20  # no 30 s wait
    assert out.count("JOB  ") == 1 and "failed (1 of 3 jobs)" in out.splitlines()[0]


def test_follow_refreshes_until_the_live_run_ends(capsys, copy, monkeypatch):
    with Journal(copy) as journal:
        run = journal.start_run(snakemake_version="t", plugin_version="t", settings={})
        journal.add_job(
            run_id=run, rule="slow", snakemake_jobid=1, fingerprint="f", attempt=1, state="running"
        )
    shown = threading.Semaphore(0)
    print_jobs = journal_jobs.print_jobs

    def counting(*args: Any, **kwargs: Any) -> None:
        print_jobs(*args, **kwargs)
        shown.release()

    def end_after_two_tables() -> None:
        for _ in range(2):
            shown.acquire(timeout=60)
        with Journal(copy) as journal:
            journal.end_run(run, "finished")

    monkeypatch.setattr(journal_jobs, "print_jobs", counting)
    ender = threading.Thread(target=end_after_two_tables)
    ender.start()
    try:
        code, out, _ = cli(capsys, "--journal", str(copy), "jobs", "--follow", "--interval", "0.1")
    finally:
        ender.join()
    headers = [line for line in out.splitlines() if line.startswith(f"run {run}")]
    assert code == 0 and len(headers) >= 3
    assert "running" in headers[0] and headers[-1].startswith(f"run {run}: finished")
    assert out.rstrip().splitlines()[-1].split()[1] == "slow"  # a table after the end


def test_follow_json_prints_one_line_per_refresh(capsys, finished):
    code, out, _ = cli(capsys, "--journal", str(finished.journal), "jobs", "--follow", "--json")
    assert code == 0
    [line] = out.splitlines()
    assert len(json.loads(line)) == 3


# -- instances --alive --------------------------------------------------------------------------
def test_alive_exits_0_when_everything_is_destroyed(capsys, finished, api_env):
    code, out, err = cli(capsys, "--journal", str(finished.journal), "instances", "--alive")
    assert code == 0, err
    assert "API" in out.splitlines()[0] and out.count("gone") == 3
    assert f"asking Vast.ai at {finished.sim.url}" in err  # found in the run's settings
    assert finished.sim.api_key not in out + err


def test_alive_exits_1_for_an_instance_whose_job_ended(capsys, copy, sim, api_env):
    job, instance_id, _label, _run = journal_leftover(copy, sim, state="failed", end="finished")
    code, out, err = cli(capsys, "--journal", str(copy), "instances", "--alive")
    assert code == 1
    line = next(line for line in out.splitlines() if line.lstrip().startswith(str(instance_id)))
    assert f"its job {job} is failed" in line
    assert "cleanup" in out and sim.api_key not in out + err
    rows = cli_json_code(capsys, 1, "--journal", str(copy), "instances", "--alive")
    [row] = [r for r in rows if r["instance_id"] == instance_id]
    assert row["api_status"] != "gone" and row["destroyed_at"] is None


def test_alive_is_fine_while_a_live_run_uses_it_and_not_after(capsys, copy, sim, api_env):
    _job, _instance, _label, run = journal_leftover(copy, sim, state="running", end=None)
    assert main(["--journal", str(copy), "instances", "--alive"]) == 0  # this process: live
    with Journal(copy) as journal:
        journal.end_run(run, "killed")
    code, out, _ = cli(capsys, "--journal", str(copy), "instances", "--alive")
    assert code == 1 and f"its run {run} is not running" in out


def test_alive_flags_an_instance_the_journal_never_heard_of(capsys, copy, sim, api_env):
    orphan = rent(sim, prefix_of(copy) + "orphan")
    rows = cli_json_code(capsys, 1, "--journal", str(copy), "instances", "--alive")
    [row] = [r for r in rows if r["instance_id"] == orphan]
    assert row["journaled"] is False and row["unexpected"] == "no journal row names it"


def test_alive_needs_a_key_and_never_takes_one_on_the_command_line(capsys, finished, monkeypatch):
    for name in ("VAST_URL", "VAST_API_KEY", "SNAKEMAKE_VASTAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    code, _, err = cli(capsys, "--journal", str(finished.journal), "instances", "--alive")
    assert code == 2 and "VAST_API_KEY" in err and "--api-key-file" in err
    code, _, err = cli(
        capsys, "--journal", str(finished.journal), "instances", "--alive", "--api-key", "x"
    )
    assert code == 2 and "unrecognized arguments: --api-key" in err


def test_alive_with_a_refused_key_or_no_api(capsys, finished, tmp_path, monkeypatch):
    key_file = tmp_path / "key"
    key_file.write_text("not-the-key-7c1e\n")
    monkeypatch.delenv("VAST_URL", raising=False)
    args = ["--journal", str(finished.journal), "instances", "--alive"]
    code, out, err = cli(capsys, *args, "--api-key-file", str(key_file))
    assert code == 2 and f"--api-key-file {key_file}" in err and "refused" in err
    assert "not-the-key-7c1e" not in out + err
    monkeypatch.setattr(journal_api, "API_RETRY_BUDGET", 0.3)
    code, _, err = cli(
        capsys, *args, "--api-key-file", str(key_file), "--api-url", "http://127.0.0.1:9"
    )
    assert code == 1 and "could not ask Vast.ai at http://127.0.0.1:9" in err


def test_a_recorded_url_elsewhere_is_not_trusted_with_the_key(capsys, copy, api_env):
    """A journal file (copied, attached to a bug report, edited) cannot redirect the key:
    a recorded API URL that is neither the real service nor this machine needs --api-url."""
    import sqlite3

    with sqlite3.connect(copy) as db:
        db.execute("UPDATE runs SET settings = json_set(settings, '$.api_url', "
                   "'http://collector.example.invalid')")
    code, _, err = cli(capsys, "--journal", str(copy), "instances", "--alive")
    assert code == 2
    assert "--api-url http://collector.example.invalid" in err
    assert "asking Vast.ai at http://collector" not in err  # nothing was sent


# -- cleanup --------------------------------------------------------------------------------------
def test_cleanup_destroys_leftovers_and_never_a_foreign_instance(capsys, copy, sim, api_env):
    _job, leftover, label, _run = journal_leftover(copy, sim, state="running")
    orphan = rent(sim, prefix_of(copy) + "orphan")
    foreign = sim.create_foreign_instance()
    try:
        code, out, err = cli(capsys, "--journal", str(copy), "cleanup", "--yes")
        assert code == 0, err
        assert f"destroyed {leftover} ({label})" in out and f"destroyed {orphan}" in out
        assert str(foreign) not in out
        alive = alive_ids(sim)
        assert leftover not in alive and orphan not in alive and foreign in alive
        with Journal(copy) as journal:
            [row] = [r for r in journal.instances() if r["label"] == label]
            assert row["destroy_requested_at"] is not None and row["destroyed_at"] is not None
            assert journal.instances_possibly_alive() == []
        assert sim.api_key not in out + err
        assert main(["--journal", str(copy), "instances", "--alive"]) == 0
    finally:
        VastAPI(sim.api_key, sim.url).destroy_instance(foreign)


def test_cleanup_refuses_a_journal_row_without_the_prefix(capsys, copy, sim, api_env):
    foreign = sim.create_foreign_instance()
    try:
        with sqlite3.connect(copy) as db:  # a hand-edited (or foreign) row naming it
            db.execute(
                "INSERT INTO instances (label, instance_id, requested_at, created_at) "
                "VALUES ('someone-else', ?, 1.0, 1.0)",
                [foreign],
            )
        code, out, err = cli(capsys, "--journal", str(copy), "cleanup", "--yes")
        assert code == 1, err
        assert "REFUSED" in out and "'someone-else'" in out
        assert foreign in alive_ids(sim)
    finally:
        VastAPI(sim.api_key, sim.url).destroy_instance(foreign)


def test_cleanup_answering_no_or_dry_run_destroys_nothing(capsys, copy, sim, api_env, monkeypatch):
    _job, leftover, label, _run = journal_leftover(copy, sim, state="running")
    code, out, _ = cli(capsys, "--journal", str(copy), "cleanup", "--dry-run")
    assert code == 0 and label in out and leftover in alive_ids(sim)
    monkeypatch.setattr(sys, "stdin", io.StringIO("n\n"))
    code, out, _ = cli(capsys, "--journal", str(copy), "cleanup")
    assert code == 0 and "Destroy 1 instance(s)? [y/N]" in out and "nothing destroyed" in out
    assert leftover in alive_ids(sim)
    with Journal(copy) as journal:
        [row] = journal.instances_possibly_alive()
        assert row["label"] == label and row["destroy_requested_at"] is None
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))
    assert main(["--journal", str(copy), "cleanup"]) == 0
    assert leftover not in alive_ids(sim)


def test_cleanup_marks_rows_gone_that_vast_no_longer_lists(capsys, copy, sim, api_env):
    _job, leftover, label, _run = journal_leftover(copy, sim, state="running")
    VastAPI(sim.api_key, sim.url).destroy_instance(leftover)  # gone behind the journal's back
    report = cli_json(capsys, "--journal", str(copy), "cleanup", "--yes")
    assert report["targets"] == [] and report["marked_gone"] == [label]
    with Journal(copy) as journal:
        assert journal.instances_possibly_alive() == []


def test_cleanup_refuses_while_a_run_is_running(capsys, copy, sim, api_env):
    _job, leftover, _label, _run = journal_leftover(copy, sim, state="running", end=None)
    code, _, err = cli(capsys, "--journal", str(copy), "cleanup", "--yes")
    assert code == 2 and "still running" in err and "--force" in err
    assert leftover in alive_ids(sim)
    assert main(["--journal", str(copy), "cleanup", "--yes", "--force"]) == 0
    assert leftover not in alive_ids(sim)


# -- as a command -------------------------------------------------------------------------
def test_subprocess_runs_and_cleanup_dry_run(finished, sim, tmp_path):
    module = ["-m", "snakemake_executor_plugin_vastai", "journal", "--journal"]
    runs = subprocess.run(
        [sys.executable, *module, str(finished.journal), "runs", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=sim_env(None),
    )
    assert runs.returncode == 0, runs.stderr
    assert json.loads(runs.stdout)[0]["jobs"] == {"succeeded": 2, "failed": 1}
    cleanup = subprocess.run(
        [sys.executable, *module, str(finished.journal), "cleanup", "--dry-run", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=sim_env(sim.api_key),
    )
    assert cleanup.returncode == 0, cleanup.stderr
    report = json.loads(cleanup.stdout)
    assert report["dry_run"] is True and report["targets"] == [] and report["destroyed"] == []
    assert sim.api_key not in cleanup.stdout + cleanup.stderr
    missing = subprocess.run(
        [sys.executable, *module, str(tmp_path / "none.sqlite"), "runs"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2 and "Traceback" not in missing.stderr


# -- help and formats ------------------------------------------------------------------------------
def test_every_command_has_help_with_an_example(capsys):
    for name, handler, _configure in journal_cli.COMMANDS:
        assert "Example" in (handler.__doc__ or ""), name
        code, out, _ = cli(capsys, name, "--help")
        assert code == 0 and "Example" in out and "--json" in out, name
    code, _, err = cli(capsys, "bogus")
    assert code == 2 and "invalid choice" in err


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (0.4, "0s"), (45, "45s"), (65, "1m05s"), (7380, "2h03m"), (273600, "3d04h")],
)
def test_duration_format(seconds, text):
    assert tables.duration(seconds) == text


def test_money_time_and_one_line_formats():
    assert tables.money(0.01234) == "$0.0123" and tables.money(None) == "-"
    assert tables.when(None) == "-"
    assert len(tables.when(time.time())) == len("2026-11-28 13:05:02")
    assert tables.one_line("first line\nsecond", 40) == "first line"
    assert tables.one_line("x" * 50, 10) == "x" * 7 + "..."
