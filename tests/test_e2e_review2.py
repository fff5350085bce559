"""End to end: the second adversarial review's ways to lose money or results (issue 27).

Each test goes through the real ``snakemake`` command line against the simulator and
failed on the code before its fix.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.e2e import alive, run_snakemake, wait_for, write_workflow
from tests.test_e2e_safety import job_in_state, journal_rows, kill_hard, start, unlock

pytestmark = pytest.mark.e2e

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]


# -- 1. a shell: rule's script changed while the run was down -----------------------------
def test_a_changed_script_a_shell_rule_runs_is_not_reattached_after_a_restart(
        tmp_path, simulator):
    """The quickstart shape, ``shell: "python train.py ..."``: killed mid-job, the user fixes
    and commits train.py; the restart must run the new train.py, not re-attach to the
    instance still running the old one and report its output as a success."""
    wf = write_workflow(tmp_path / "wf", {
        "Snakefile": 'rule train:\n    output: "model.txt"\n'
                     '    shell: "python3 train.py {output}"\n',
        "train.py": "import sys, time\ntime.sleep(6)\n"
                    "open(sys.argv[1], 'w').write('old model\\n')\n",
    }, track=["Snakefile", "train.py"])
    proc = start(wf, simulator.url, simulator.api_key)
    assert wait_for(lambda: job_in_state(wf, "running"), timeout=240)
    kill_hard(proc)
    (wf / "train.py").write_text("import sys\nopen(sys.argv[1], 'w').write('new model\\n')\n")
    subprocess.run([*GIT, "commit", "-qam", "fix train.py"], cwd=wf, check=True)

    unlock(wf)
    result = run_snakemake(wf, simulator.url, simulator.api_key, "--rerun-incomplete")
    assert result.returncode == 0, result.stderr[-4000:]
    assert (wf / "model.txt").read_text() == "new model\n"
    assert "shipped source files" in result.stderr  # the log names what changed
    assert journal_rows(wf, "select count(*) from transitions where trigger = 'resume'") \
        == [(0,)]
    assert alive(simulator.truth()) == []
