"""--vastai-max-runtime in SSH mode: a job that hangs is stopped and its instance destroyed.

(The storage-mode side of the cap is in test_e2e_storage.py.)
"""

from __future__ import annotations

import pytest

from tests.e2e.test_e2e_storage import HANGING
from tests.harness.e2e import alive, run_snakemake, write_workflow

pytestmark = pytest.mark.e2e


def test_hung_ssh_job_is_destroyed_at_the_runtime_cap(tmp_path, simulator):
    wf = write_workflow(tmp_path / "wf", {"Snakefile": HANGING})
    result = run_snakemake(wf, simulator.url, simulator.api_key, "out/hang.txt",
                           "--vastai-max-runtime", "3", timeout=180)
    assert result.returncode != 0
    assert "--vastai-max-runtime 3s" in result.stderr, result.stderr[-3000:]
    truth = simulator.truth()
    assert alive(truth) == []
    (inst,) = [i for i in truth["instances"] if not i.get("foreign")]
    assert inst["billed_seconds"] < 60
    assert not (wf / "out/hang.txt").exists()


def test_the_cap_leaves_a_job_that_finishes_in_time_alone(tmp_path, simulator):
    wf = write_workflow(tmp_path / "wf", {
        "Snakefile": 'rule quick:\n    output: "out/q.txt"\n'
                     '    shell: "sleep 1 && echo ok > {output}"\n'})
    result = run_snakemake(wf, simulator.url, simulator.api_key, "out/q.txt",
                           "--vastai-max-runtime", "60")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (wf / "out/q.txt").read_text() == "ok\n"
    assert alive(simulator.truth()) == []
