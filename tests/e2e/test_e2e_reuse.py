"""End to end, warm instances: the real ``snakemake`` CLI against the simulator, with reuse.

A chain of jobs runs on fewer instances than jobs, its outputs are byte-equal to the
local executor's, idle instances go after ``--vastai-idle-timeout``, a failed job's
instance never serves another, ``--vastai-no-reuse`` keeps one instance per job, and
after ``kill -9`` the next run settles idle and leased instances. Every test ends with
no live instance in the simulator.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.e2e import (
    alive,
    interrupt,
    run_snakemake,
    start_snakemake,
    wait_for,
    write_workflow,
)

pytestmark = pytest.mark.e2e

# A chain: each step reads the previous step's output (the input already on the instance).
CHAIN = '''\
N = int(config.get("steps", 4))

rule all:
    input: f"chain/step{N}.txt"

rule first:
    output: "chain/step0.txt"
    shell: "printf 'seed\\\\n' > {output}"

rule step:
    input: lambda w: f"chain/step{int(w.i) - 1}.txt"
    output: "chain/step{i}.txt"
    wildcard_constraints: i="[1-9][0-9]*"
    shell: "cat {input} > {output}; echo step{wildcards.i} >> {output}"
'''


def journal_rows(workdir: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(workdir / ".snakemake" / "vastai" / "journal.sqlite") as db:
        return db.execute(sql).fetchall()


def chain_workflow(root: Path) -> Path:
    return write_workflow(root, {"Snakefile": CHAIN})


def local_outputs(root: Path, n: int) -> dict[str, bytes]:
    """The same workflow under Snakemake's local executor: the reference bytes."""
    wf = chain_workflow(root)
    done = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "--config",
                           f"steps={n}"], cwd=wf, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return {p.name: p.read_bytes() for p in sorted((wf / "chain").iterdir())}


def test_a_chain_reuses_one_warm_instance_and_matches_the_local_executor(tmp_path, simulator):
    n = 4
    expected = local_outputs(tmp_path / "local", n)
    wf = chain_workflow(tmp_path / "wf")
    result = run_snakemake(wf, simulator.url, simulator.api_key, "--config", f"steps={n}",
                           "--vastai-idle-timeout", "30", reuse=True)
    assert result.returncode == 0, result.stderr[-4000:]
    got = {p.name: p.read_bytes() for p in sorted((wf / "chain").iterdir())}
    assert got == expected
    truth = simulator.truth()
    jobs = len(journal_rows(wf, "select id from jobs"))
    assert jobs == n + 1
    assert truth["created_count"] < jobs
    assert truth["created_count"] == 1  # a chain never needs a second instance
    assert alive(truth) == []
    leased = journal_rows(wf, "select count(*) from transitions where trigger = 'leased'")
    assert leased == [(n,)]
    gave_back = journal_rows(wf, "select count(*) from transitions where trigger = 'gave_back'")
    assert gave_back == [(n + 1,)]
    # every job worked in its own directory on the shared instance
    dirs = journal_rows(wf, "select count(distinct work_dir) from jobs")
    assert dirs == [(n + 1,)]
    # the instance's life, as journaled: one boot, n leases, the end
    life = [row[0] for row in journal_rows(
        wf, "select trigger from instance_transitions order by id")]
    assert life[:3] == ["rent_intent", "created", "booted"]
    assert life.count("leased") == n and life.count("given_back") == n + 1
    assert life[-2:] == ["expired", "destroyed"]
    # the previous step's output was already on the instance: linked, not uploaded
    # (the source archive, uploaded once per instance, and the previous step's output)
    uploads = [json.loads(d) for (d,) in journal_rows(
        wf, "select detail from transitions where trigger = 'uploaded' order by id")]
    assert uploads[0] == {"files": 1, "bytes": uploads[0]["bytes"]}  # the sources, sent
    assert [u.get("already_on_instance") for u in uploads[1:]] == [2] * n
    assert all(u["files"] == 2 for u in uploads[1:])
    assert f"{n} boots avoided" in result.stderr
    # journal cost: the jobs pay their leased time; boot and idle are the run's, apart
    cost = subprocess.run([sys.executable, "-m", "snakemake_executor_plugin_vastai", "journal",
                           "cost", "--json"], cwd=wf, capture_output=True, text=True,
                          timeout=60)
    report = json.loads(cost.stdout)
    (run,) = report["warm"]["runs"]
    assert (run["boots"], run["jobs"], run["boots_avoided"]) == (1, n + 1, n)
    shares = run["boot_seconds"] + run["leased_seconds"] + run["idle_seconds"]
    assert shares == pytest.approx(report["total"]["instance_seconds"], abs=1e-6)
    assert 0 < run["leased_seconds"] < report["total"]["instance_seconds"]
    assert run["boot_seconds"] > 0
    rules = {r["rule"]: r for r in report["rules"]}
    assert rules["step"]["jobs"] == n and rules["first"]["jobs"] == 1
    # one instance served every job: its whole bill, the simulator's, is shared by the rules
    assert sum(r["dollars"] for r in rules.values()) == pytest.approx(
        sum(i["billed_dollars"] for i in truth["instances"]), rel=0.01, abs=0.5 / 3600)
    # ... and each job's cost in `journal jobs` is its part of its rule's figure
    listed = json.loads(subprocess.run(
        [sys.executable, "-m", "snakemake_executor_plugin_vastai", "journal", "jobs", "--json"],
        cwd=wf, capture_output=True, text=True, timeout=60, check=True).stdout)
    for rule, figures in rules.items():
        assert sum(j["dollars"] for j in listed if j["rule"] == rule) == pytest.approx(
            figures["dollars"]), rule
    # the timeline: one instance row serving every job, the boots avoided, leases drawn
    page = subprocess.run([sys.executable, "-m", "snakemake_executor_plugin_vastai", "journal",
                           "timeline", "-o", str(tmp_path / "t.html"), "--json"], cwd=wf,
                          capture_output=True, text=True, timeout=60)
    assert page.returncode == 0, page.stderr
    drawn = json.loads(page.stdout)
    (row,) = drawn["rows"]
    assert len(row["jobs"]) == n + 1
    assert drawn["totals"]["boots_avoided"] == n
    assert drawn["totals"]["dollars"] == pytest.approx(report["total"]["dollars"])
    assert [s["state"] for s in row["spans"]].count("booting") == 1


def test_no_reuse_keeps_one_instance_per_job(tmp_path, simulator):
    wf = chain_workflow(tmp_path / "wf")
    result = run_snakemake(wf, simulator.url, simulator.api_key, "--config", "steps=2",
                           "--vastai-no-reuse", reuse=True)
    assert result.returncode == 0, result.stderr[-4000:]
    truth = simulator.truth()
    assert truth["created_count"] == 3
    assert journal_rows(wf, "select count(*) from transitions where trigger = 'leased'") == [
        (0,)]
    assert alive(truth) == []


def test_an_idle_instance_is_torn_down_after_the_idle_timeout(tmp_path, simulator):
    # Two independent jobs one after another (--jobs 1); the second waits 4 s locally
    # (a local rule between them), longer than the 1 s idle timeout.
    wf = write_workflow(tmp_path / "wf", {"Snakefile": '''\
localrules: pause
rule all:
    input: "b.txt"
rule a:
    output: "a.txt"
    shell: "echo a > {output}"
rule pause:
    input: "a.txt"
    output: "paused.txt"
    shell: "sleep 4; cp {input} {output}"
rule b:
    input: "paused.txt"
    output: "b.txt"
    shell: "cat {input} > {output}; echo b >> {output}"
'''})
    result = run_snakemake(wf, simulator.url, simulator.api_key, "--vastai-idle-timeout", "1",
                           jobs=1, reuse=True)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (wf / "b.txt").read_text() == "a\nb\n"
    truth = simulator.truth()
    assert truth["created_count"] == 2  # the first instance had expired
    expired = journal_rows(wf, "select detail from instance_transitions "
                               "where trigger = 'expired'")
    assert any("--vastai-idle-timeout" in (d or "") for (d,) in expired)
    assert alive(truth) == []


# Two jobs side by side: "quick" ends long before "slow"; "after" (config) needs "slow".
LAST_WAVE = '''\
rule all:
    input: "quick.txt", config.get("last", "slow.txt")
rule quick:
    output: "quick.txt"
    shell: "echo quick > {output}"
rule slow:
    output: "slow.txt"
    shell: "sleep 8; echo slow > {output}"
rule after:
    input: "slow.txt"
    output: "after.txt"
    shell: "cat {input} > {output}"
'''


def instance_life(wf: Path) -> dict[str, list[tuple[str, float, str | None]]]:
    life: dict[str, list[tuple[str, float, str | None]]] = {}
    for label, trigger, at, detail in journal_rows(
            wf, "select label, trigger, at, detail from instance_transitions order by id"):
        life.setdefault(label, []).append((trigger, at, detail))
    return life


def completed_at(wf: Path, rule: str) -> float:
    """When the rule's (one) job was journaled as completed."""
    ((at,),) = journal_rows(wf, "select t.at from transitions t join jobs j on j.id = "
                                f"t.job_id where j.rule = '{rule}' and t.trigger = 'completed'")
    return at


def test_the_last_waves_idle_instances_go_at_once_not_after_the_idle_timeout(
        tmp_path, simulator):
    """Nothing is left that could use quick's instance once it is back (slow runs on the
    other, "all" runs locally): it is torn down then, not 600 s later or at the run's end."""
    wf = write_workflow(tmp_path / "wf", {"Snakefile": LAST_WAVE})
    result = run_snakemake(wf, simulator.url, simulator.api_key, "--vastai-idle-timeout",
                           "600", jobs=2, reuse=True)
    assert result.returncode == 0, result.stderr[-4000:]
    slow_done = completed_at(wf, "slow")
    (quick_label,) = journal_rows(wf, "select label from jobs where rule = 'quick'")
    life = instance_life(wf)[quick_label[0]]
    given_back = next(at for trigger, at, _ in life if trigger == "given_back")
    expired = [(at, detail) for trigger, at, detail in life if trigger == "expired"]
    assert expired and "no job that could use it" in (expired[0][1] or "")
    assert expired[0][0] - given_back < 3.0
    assert expired[0][0] < slow_done - 2.0  # well before the run's last job ended
    assert alive(simulator.truth()) == []


def test_an_idle_instance_waits_while_a_job_that_could_use_it_is_still_to_come(
        tmp_path, simulator):
    """"after" can only start when slow ends: quick's instance waits for it meanwhile."""
    wf = write_workflow(tmp_path / "wf", {"Snakefile": LAST_WAVE})
    result = run_snakemake(wf, simulator.url, simulator.api_key, "--vastai-idle-timeout",
                           "600", "--config", "last=after.txt", jobs=2, reuse=True)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (wf / "after.txt").read_text() == "slow\n"
    truth = simulator.truth()
    assert truth["created_count"] == 2  # "after" leased a warm instance
    slow_done = completed_at(wf, "slow")
    (quick_label,) = journal_rows(wf, "select label from jobs where rule = 'quick'")
    life = instance_life(wf)[quick_label[0]]
    assert next(at for t, at, _ in life if t == "expired") > slow_done
    leased_by_after = journal_rows(wf, "select count(*) from transitions t join jobs j on "
                                       "j.id = t.job_id where j.rule = 'after' and "
                                       "t.trigger = 'leased'")
    assert leased_by_after == [(1,)]
    assert alive(truth) == []


def test_a_failed_jobs_instance_is_never_reused(tmp_path, simulator):
    wf = write_workflow(tmp_path / "wf", {"Snakefile": '''\
rule all:
    input: "ok2.txt", "boom.txt"
rule ok1:
    output: "ok1.txt"
    shell: "echo ok1 > {output}"
rule boom:
    input: "ok1.txt"
    output: "boom.txt"
    shell: "exit 3"
rule ok2:
    input: "ok1.txt"
    output: "ok2.txt"
    shell: "sleep 2; echo ok2 > {output}"
'''})
    result = run_snakemake(wf, simulator.url, simulator.api_key, "--keep-going",
                           "--vastai-idle-timeout", "30", jobs=1, reuse=True)
    assert result.returncode != 0
    rows = journal_rows(wf, "select rule, state, instance_id from jobs order by created_at")
    failed = [iid for rule, state, iid in rows if state == "failed"]
    assert failed
    later = [(rule, iid) for rule, state, iid in rows[rows.index(
        next(r for r in rows if r[1] == "failed")) + 1:]]
    assert all(iid not in failed for _rule, iid in later)
    destroyed_after_failure = journal_rows(
        wf, "select t.trigger from instance_transitions t join jobs j on j.label = t.label "
            "where j.state = 'failed' and t.trigger in ('fail', 'given_back') order by t.id")
    assert destroyed_after_failure[-1] == ("fail",)
    assert alive(simulator.truth()) == []


# One instance sits idle while the other is leased by a slow step (with --jobs 2); "later"
# needs the slow step, so the idle one waits for it instead of going at once.
KILL_WORKFLOW = '''\
rule all:
    input: "later.txt", "quick.txt"
rule later:
    input: "slow.txt"
    output: "later.txt"
    shell: "cat {input} > {output}"
rule base:
    output: "base.txt"
    shell: "echo base > {output}"
rule slow:
    input: "base.txt"
    output: "slow.txt"
    shell: "sleep 20; cat {input} > {output}"
rule quick:
    output: "quick.txt"
    shell: "echo quick > {output}"
'''


def instance_states(wf: Path) -> set[str]:
    if not (wf / ".snakemake" / "vastai" / "journal.sqlite").exists():
        return set()
    try:
        return {s for (s,) in journal_rows(wf, "select state from instances")}
    except sqlite3.Error:
        return set()


def test_kill_9_with_idle_and_leased_instances_then_recovery(tmp_path, simulator):
    """Two chains: one waits for a slow step (its instance leased), the other's instance
    sits idle. kill -9 the run; the next run tears the idle one down, finishes the work
    and leaves nothing alive."""
    wf = write_workflow(tmp_path / "wf", {"Snakefile": KILL_WORKFLOW})
    proc = start_snakemake(wf, simulator.url, simulator.api_key, "--vastai-idle-timeout",
                           "600", jobs=2, reuse=True)
    try:
        assert wait_for(lambda: {"idle", "leased"} <= instance_states(wf), timeout=120)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    assert len(alive(simulator.truth())) == 2  # nothing tore them down
    subprocess.run([sys.executable, "-m", "snakemake", "--unlock"], cwd=wf,
                   capture_output=True, timeout=120, check=True)
    idle = journal_rows(wf, "select label from instances where state = 'idle'")
    leased = journal_rows(wf, "select label from instances where state = 'leased'")
    result = run_snakemake(wf, simulator.url, simulator.api_key, "--vastai-idle-timeout", "30",
                           "--rerun-incomplete", reuse=True)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (wf / "slow.txt").read_text() == "base\n"
    assert (wf / "quick.txt").read_text() == "quick\n"
    assert alive(simulator.truth()) == []
    left = journal_rows(wf, "select count(*) from instances where destroyed_at is null")
    assert left == [(0,)]
    # the leased instance's job was re-attached (its instance not rented again)...
    resumed = journal_rows(wf, "select rule, label from jobs where resumed_from is not null")
    assert [label for _rule, label in resumed] == [leased[0][0]]
    # ...and the idle one was torn down, its life ending in destroyed
    life = [t for (t,) in journal_rows(wf, "select trigger from instance_transitions where "
                                           f"label = '{idle[0][0]}' order by id")]
    assert life[-1] == "destroyed" and "given_back" in life


def test_ctrl_c_tears_down_idle_and_leased_instances(tmp_path, simulator):
    wf = write_workflow(tmp_path / "wf", {"Snakefile": KILL_WORKFLOW})
    proc = start_snakemake(wf, simulator.url, simulator.api_key, "--vastai-idle-timeout",
                           "600", jobs=2, reuse=True)
    try:
        assert wait_for(lambda: {"idle", "leased"} <= instance_states(wf), timeout=120)
    finally:
        out = interrupt(proc)
    assert proc.returncode != 0
    assert alive(simulator.truth()) == [], out[-3000:]
    life = journal_rows(wf, "select trigger from instance_transitions where trigger = "
                            "'expired'")
    assert life == [("expired",)]  # the idle one, by the drain; the leased one failed


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="needs coreutils")
def test_link_command_links_only_matching_content(tmp_path):
    """The remote side of 'already on the instance': same content is linked, changed
    content is not (it is uploaded instead)."""
    from snakemake_executor_plugin_vastai.transports.ssh.transport import link_command

    home = tmp_path
    (home / "old").mkdir()
    (home / "old" / "a.txt").write_text("same\n")
    (home / "old" / "b.txt").write_text("changed\n")
    import hashlib

    same = hashlib.sha256(b"same\n").hexdigest()
    other = hashlib.sha256(b"not what is there\n").hexdigest()
    script = link_command("new", [("old/a.txt", "d/a.txt", same),
                                  ("old/b.txt", "b.txt", other),
                                  ("old/missing", "m.txt", "")])
    done = subprocess.run(["sh", "-c", script], env={**os.environ, "HOME": str(home)},
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["d/a.txt"]
    assert (home / "new" / "d" / "a.txt").read_text() == "same\n"
    assert not (home / "new" / "b.txt").exists()
