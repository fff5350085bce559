"""End to end: two runs in one directory, and a copied directory, never touch each other.

Snakemake allows concurrent runs on disjoint targets; each must finish its own jobs,
and a copied workflow directory must get a label prefix of its own (issue 12, defect 3).
"""

from __future__ import annotations

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
    run_snakemake,
    sim_env,
    snakemake_argv,
    wait_for,
    write_workflow,
)

pytestmark = pytest.mark.e2e

# The slow job runs until the test releases it (a file in its instance's home), once the
# other run has finished: it is surely still running meanwhile, and nobody waits out a
# fixed sleep. Unreleased, it ends by itself after about two minutes.
TWO_TARGETS = {
    "Snakefile": 'rule slow:\n    output: "slow.txt"\n'
                 '    shell: "for i in $(seq 600); do [ -e $HOME/release ] && break; '
                 'sleep 0.2; done; echo slow > {output}"\n'
                 'rule quick:\n    output: "quick.txt"\n    shell: "echo quick > {output}"\n',
}


def journal_rows(workdir: Path, sql: str) -> list[tuple]:
    path = workdir / ".snakemake" / "vastai" / "journal.sqlite"
    if not path.exists():
        return []
    try:
        with sqlite3.connect(path, timeout=30) as db:
            return db.execute(sql).fetchall()
    except sqlite3.Error:
        return []


def release(simulator) -> None:
    """Let the slow job of every live instance finish (see TWO_TARGETS)."""
    for instance in alive(simulator.truth()):
        (simulator.instance_dir(instance["id"]) / "release").touch()


def start(workdir: Path, url: str, key: str, *targets: str) -> subprocess.Popen:
    return subprocess.Popen(snakemake_argv(url, *targets, jobs=2), cwd=workdir,
                            env=sim_env(key), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_two_live_runs_in_one_directory_each_finish_their_own_jobs(tmp_path, simulator):
    wf = write_workflow(tmp_path / "wf", TWO_TARGETS)
    first = start(wf, simulator.url, simulator.api_key, "slow.txt")
    assert wait_for(lambda: journal_rows(wf, "select 1 from jobs where state = 'running'"),
                    timeout=240)
    second = run_snakemake(wf, simulator.url, simulator.api_key, "quick.txt")
    release(simulator)
    out, _ = first.communicate(timeout=240)
    assert second.returncode == 0, second.stderr[-4000:]
    assert first.returncode == 0, out[-4000:]
    assert "left to it" in second.stderr  # the second run saw the first and let it be
    assert (wf / "slow.txt").read_text() == "slow\n"
    assert (wf / "quick.txt").read_text() == "quick\n"
    truth = simulator.truth()
    assert truth["created_count"] == 2
    assert alive(truth) == []


def test_a_copied_directory_gets_its_own_prefix_and_leaves_the_original_alone(tmp_path,
                                                                             simulator):
    original = write_workflow(tmp_path / "original", TWO_TARGETS)
    assert run_snakemake(original, simulator.url, simulator.api_key,
                         "quick.txt").returncode == 0
    first = start(original, simulator.url, simulator.api_key, "slow.txt")
    assert wait_for(lambda: journal_rows(original,
                                         "select 1 from jobs where state = 'running'"),
                    timeout=240)
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)  # mid-run: the copied journal shows a running job
    (copy / "quick.txt").unlink()
    result = run_snakemake(copy, simulator.url, simulator.api_key, "quick.txt")
    release(simulator)
    out, _ = first.communicate(timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]
    assert first.returncode == 0, out[-4000:]
    assert "is a copy of" in result.stderr
    sidecar = Path(".snakemake/vastai/workflow-id")
    prefixes = {(d / sidecar).read_text().strip() for d in (original, copy)}
    assert len(prefixes) == 2
    assert list((copy / ".snakemake/vastai").glob("journal.sqlite.copied-*"))
    truth = simulator.truth()
    labels = [i["label"] for i in truth["instances"]]
    assert sum(1 for label in labels if label.startswith(f"smk-{min(prefixes)}-")) >= 1
    assert sum(1 for label in labels if label.startswith(f"smk-{max(prefixes)}-")) >= 1
    assert alive(truth) == []


def test_a_copy_whose_original_was_renamed_never_destroys_the_originals_instance(tmp_path,
                                                                                   simulator):
    """Copy detection cannot see a renamed original: both keep one prefix. An instance
    with a label the copy's journal does not know is reported, never destroyed."""
    original = write_workflow(tmp_path / "original", TWO_TARGETS)
    assert run_snakemake(original, simulator.url, simulator.api_key,
                         "quick.txt").returncode == 0
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    (copy / "quick.txt").unlink()
    original = original.rename(tmp_path / "original-moved")
    first = start(original, simulator.url, simulator.api_key, "slow.txt")
    assert wait_for(lambda: journal_rows(original,
                                         "select 1 from jobs where state = 'running'"),
                    timeout=240)
    second = run_snakemake(copy, simulator.url, simulator.api_key, "quick.txt")
    release(simulator)
    out, _ = first.communicate(timeout=240)
    assert second.returncode == 0, second.stderr[-4000:]
    assert first.returncode == 0, out[-4000:]
    assert (original / "slow.txt").read_text() == "slow\n"
    assert journal_rows(copy, "select count(*) from strays") == [(0,)]
    assert alive(simulator.truth()) == []


def test_an_instance_kept_for_resume_is_owned_in_the_journal(tmp_path, simulator):
    """Run A keeps a crashed run's instance for a job it will submit later; run B,
    started meanwhile on another target, must leave it to A (the claim is journaled)."""
    wf = write_workflow(tmp_path / "wf", {
        "Snakefile": 'rule a:\n    output: "a.txt"\n    shell: "sleep 12; echo a > {output}"\n'
                     'rule c:\n    output: "c.txt"\n    priority: 50\n'
                     '    shell: "sleep 8; echo c > {output}"\n'
                     'rule d:\n    output: "d.txt"\n    shell: "echo d > {output}"\n',
    })
    crashed = subprocess.Popen(snakemake_argv(simulator.url, "a.txt", jobs=1), cwd=wf,
                               env=sim_env(simulator.api_key), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    assert wait_for(lambda: journal_rows(wf, "select 1 from jobs where state = 'running'"),
                    timeout=240)
    os.killpg(crashed.pid, signal.SIGKILL)
    crashed.wait()
    subprocess.run([sys.executable, "-m", "snakemake", "--unlock"], cwd=wf,
                   capture_output=True, timeout=120, check=True)
    first = subprocess.Popen(snakemake_argv(simulator.url, "c.txt", "a.txt", jobs=1), cwd=wf,
                             env=sim_env(simulator.api_key), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    assert wait_for(lambda: journal_rows(wf, "select 1 from jobs where rule = 'c' and state "
                                             "in ('booting', 'uploading', 'running')"),
                    timeout=240)
    second = run_snakemake(wf, simulator.url, simulator.api_key, "d.txt", jobs=1)
    out, _ = first.communicate(timeout=300)
    assert second.returncode == 0, second.stderr[-4000:]
    assert first.returncode == 0, out[-4000:]
    assert (wf / "a.txt").read_text() == "a\n"
    assert journal_rows(wf, "select count(*) from jobs where rule = 'a' and "
                            "resumed_from is not null") == [(1,)]
    assert alive(simulator.truth()) == []
