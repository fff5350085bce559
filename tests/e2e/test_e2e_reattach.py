"""End to end: a job re-attached after a crash survives SSH trouble while re-attaching.

The re-attach happens while the job is still in ``searching`` (it has not rented
anything in this run); the machine table allows ``retry`` there so a refused SSH
connection is retried in place instead of failing the job or renting a second
instance for work that is already running.
"""

from __future__ import annotations

import time

import pytest

from snakemake_executor_plugin_vastai.transports.ssh.transport import (
    SSH_RETRY_BUDGET,
)
from tests.e2e.test_e2e_safety import job_in_state, journal_rows, kill_hard, start, unlock
from tests.harness.e2e import alive, run_snakemake, sim_env, wait_for, write_workflow

pytestmark = pytest.mark.e2e


def test_ssh_refused_while_reattaching_is_retried_and_the_job_resumes(tmp_path, simulator):
    wf = write_workflow(tmp_path / "wf", {
        "Snakefile": 'rule slow:\n    output: "out.txt"\n'
                     '    shell: "sleep 8; echo done > {output}"\n',
    })
    proc = start(wf, simulator.url, simulator.api_key)
    assert wait_for(lambda: job_in_state(wf, "running"), timeout=240)
    kill_hard(proc)
    [instance] = alive(simulator.truth())
    simulator.add_fault("ssh_refuse", instance_id=instance["id"], seconds=0, connections=2)

    unlock(wf)
    result = run_snakemake(wf, simulator.url, simulator.api_key, "--rerun-incomplete")
    assert result.returncode == 0, result.stderr[-4000:]
    assert (wf / "out.txt").read_text() == "done\n"
    retries = journal_rows(wf, "select detail from transitions where trigger = 'retry' "
                               "and from_state = 'searching' and to_state = 'searching'")
    assert retries, "the refused re-attach was not retried in searching"
    assert any("re-attach" in (detail or "") for (detail,) in retries)
    truth = simulator.truth()
    assert truth["created_count"] == 1, "the running job was rented again"
    assert alive(truth) == []


def test_a_key_the_instance_refuses_on_reattach_boots_it_again_without_the_full_ssh_budget(
        tmp_path, simulator):
    """The instance forgot the crashed run's key (or never got it): the re-attach gives up
    after a short grace, not the 180 s SSH budget, and the job runs again on the same
    instance with this run's key."""
    wf = write_workflow(tmp_path / "wf", {
        "Snakefile": 'rule slow:\n    output: "out.txt"\n'
                     '    shell: "sleep 8; echo done > {output}"\n',
    })
    proc = start(wf, simulator.url, simulator.api_key)
    assert wait_for(lambda: job_in_state(wf, "running"), timeout=240)
    kill_hard(proc)
    [instance] = alive(simulator.truth())
    simulator.add_fault("keys_lost", instance_id=instance["id"])

    unlock(wf)
    started = time.monotonic()
    result = run_snakemake(wf, simulator.url, simulator.api_key, "--rerun-incomplete")
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-4000:]
    assert (wf / "out.txt").read_text() == "done\n"
    assert "cannot re-attach over SSH" in result.stderr
    truth = simulator.truth()
    assert truth["created_count"] == 1, "a second instance was rented"
    assert alive(truth) == []
    assert took < SSH_RETRY_BUDGET, f"the re-attach took {took:.0f} s"


def test_a_destroy_that_timed_out_gets_one_more_try_before_the_run_ends(tmp_path, simulator):
    """A short API outage outlasts the job's teardown wait but not the run: the run's last
    act retries the pending destroy, so the run ends clean instead of asking for cleanup."""
    simulator.add_fault("api_status", code=503, endpoint="DELETE *")
    wf = write_workflow(tmp_path / "wf", {
        "Snakefile": 'rule one:\n    output: "one.txt"\n    shell: "echo ok > {output}"\n'})
    env = sim_env(simulator.api_key, SNAKEMAKE_VASTAI_CANCEL_WAIT="3")
    proc = start(wf, simulator.url, simulator.api_key, env=env)
    output: list[str] = []
    for line in proc.stdout:  # the API recovers once Snakemake counts the job done
        output.append(line)
        if "(100%) done" in line:
            simulator.clear_faults()
    assert proc.wait(timeout=240) == 0, "".join(output)[-4000:]
    text = "".join(output)
    assert "did not confirm" not in text
    assert (wf / "one.txt").read_text() == "ok\n"
    assert journal_rows(wf, "select destroyed_at is not null from instances") == [(1,)]
    assert alive(simulator.truth()) == []
