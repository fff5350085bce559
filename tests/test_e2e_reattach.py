"""End to end: a job re-attached after a crash survives SSH trouble while re-attaching.

The re-attach happens while the job is still in ``searching`` (it has not rented
anything in this run); the machine table allows ``retry`` there so a refused SSH
connection is retried in place instead of failing the job or renting a second
instance for work that is already running.
"""

from __future__ import annotations

import pytest

from tests.e2e import alive, run_snakemake, wait_for, write_workflow
from tests.test_e2e_safety import job_in_state, journal_rows, kill_hard, start, unlock

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
    simulator.add_fault("ssh_refuse", instance_id=instance["id"], seconds=4)

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
