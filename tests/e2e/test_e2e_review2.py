"""End to end: the second adversarial review's ways to lose money or results (issue 27).

Each test goes through the real ``snakemake`` command line against the simulator and
failed on the code before its fix.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.e2e.test_e2e_safety import job_in_state, journal_rows, kill_hard, start, unlock
from tests.harness.e2e import alive, run_snakemake, sim_env, wait_for, write_workflow

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


# -- 6. a refused API key is fatal at once --------------------------------------------------
def test_a_key_revoked_mid_run_stops_the_run_within_seconds_and_names_the_cleanup(
        tmp_path, simulator):
    """A 401 will not heal by waiting: the run stops renting, names the instances that may
    still bill and the command that removes them, and exits non-zero in seconds; with a
    valid key again, that command leaves nothing alive."""
    wf = write_workflow(tmp_path / "wf", {
        "Snakefile": "rule all:\n    input: expand('out{i}.txt', i=range(3))\n"
                     "rule one:\n    output: 'out{i}.txt'\n"
                     "    shell: 'sleep 4; echo {wildcards.i} > {output}'\n",
    })
    proc = start(wf, simulator.url, simulator.api_key, jobs=2)
    assert wait_for(lambda: job_in_state(wf, "running"), timeout=240)
    simulator.add_fault("api_status", code=401)
    started = time.monotonic()
    out, _ = proc.communicate(timeout=600)
    took = time.monotonic() - started
    assert proc.returncode != 0, out[-3000:]
    assert took < 90, f"the run took {took:.0f} s to give up on a refused key"
    assert "refused the API key" in out
    assert "journal cleanup" in out
    simulator.clear_faults()
    cleanup = subprocess.run(
        [sys.executable, "-m", "snakemake_executor_plugin_vastai", "journal", "cleanup",
         "--yes", "--api-url", simulator.url], cwd=wf, env=sim_env(simulator.api_key),
        capture_output=True, text=True, timeout=300)
    assert cleanup.returncode == 0, cleanup.stdout + cleanup.stderr
    assert alive(simulator.truth()) == []


# -- 8. a rule nothing matches stops the run before anything is rented ---------------------
PREP_THEN_TRAIN = (
    "rule all:\n    input: 'model.txt'\n"
    "rule prep:\n    output: 'data.txt'\n    shell: 'echo data > {{output}}'\n"
    "rule gpu_train:\n    input: 'data.txt'\n    output: 'model.txt'\n"
    "    resources: {resources}\n    shell: 'cat {{input}} > {{output}}'\n")


@pytest.mark.parametrize("resources, expected", [
    ('gpu=1, gpu_model="RTX_3909"', "did you mean 'RTX 3090'"),
    ("gpu=64", "closest offers: "),
])
def test_a_rule_no_offer_matches_stops_the_run_before_anything_is_rented(
        tmp_path, simulator, resources, expected):
    wf = write_workflow(tmp_path / "wf", {
        "Snakefile": PREP_THEN_TRAIN.format(resources=resources)})
    result = run_snakemake(wf, simulator.url, simulator.api_key)
    assert result.returncode != 0
    assert "rule gpu_train: no Vast.ai offer matches" in result.stderr, result.stderr[-3000:]
    assert expected in result.stderr
    assert simulator.truth()["created_count"] == 0, "an instance was rented first"
    assert not (wf / "data.txt").exists()


def test_a_gpu_name_in_another_spelling_rents_that_gpu(tmp_path, simulator):
    wf = write_workflow(tmp_path / "wf", {
        "Snakefile": PREP_THEN_TRAIN.format(resources='gpu=1, gpu_model="rtx-3090"')})
    result = run_snakemake(wf, simulator.url, simulator.api_key)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (wf / "model.txt").read_text() == "data\n"
    gpus = journal_rows(wf, "select gpu_name from jobs j where rule = 'gpu_train'")
    assert gpus == [("RTX 3090",)]


# -- 3. symlinks: the user's own, and links that stay inside the job's outputs ---------------
def test_a_local_output_folder_that_is_a_symlink_is_the_users_and_written_through(
        tmp_path, simulator):
    big = tmp_path / "big-disk"
    big.mkdir()
    wf = write_workflow(tmp_path / "wf", {
        "Snakefile": 'rule one:\n    output: "results/one.txt"\n'
                     '    shell: "echo ok > {output}"\n'})
    (wf / "results").symlink_to(big)
    result = run_snakemake(wf, simulator.url, simulator.api_key)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert (big / "one.txt").read_text() == "ok\n"
    assert (wf / "results").is_symlink()


def test_an_output_that_is_a_link_to_a_file_beside_it_comes_home_as_a_link(
        tmp_path, simulator):
    wf = write_workflow(tmp_path / "wf", {
        "Snakefile": 'rule best:\n    output: real="model_10.txt", link="best.txt"\n'
                     '    shell: "echo weights > {output.real}; '
                     'ln -s model_10.txt {output.link}"\n'})
    result = run_snakemake(wf, simulator.url, simulator.api_key)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (wf / "best.txt").is_symlink()
    assert (wf / "best.txt").read_text() == "weights\n"


def test_a_link_that_climbs_but_stays_inside_its_directory_output_is_kept(
        tmp_path, simulator):
    wf = write_workflow(tmp_path / "wf", {
        "Snakefile": 'rule tree:\n    output: directory("d")\n'
                     '    shell: "mkdir -p {output}/sub; echo top > {output}/top.txt; '
                     'ln -s ../top.txt {output}/sub/up.txt"\n'})
    result = run_snakemake(wf, simulator.url, simulator.api_key)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (wf / "d" / "sub" / "up.txt").is_symlink()
    assert (wf / "d" / "sub" / "up.txt").read_text() == "top\n"


def test_a_link_that_escapes_the_outputs_is_still_refused_without_a_traceback(
        tmp_path, simulator):
    wf = write_workflow(tmp_path / "wf", {
        "Snakefile": 'rule tree:\n    output: directory("d")\n'
                     '    shell: "mkdir -p {output}; ln -s ../Snakefile {output}/escape"\n'})
    result = run_snakemake(wf, simulator.url, simulator.api_key, "--retries", "0")
    assert result.returncode != 0
    assert "escape" in result.stderr and "Traceback" not in result.stderr
    assert alive(simulator.truth()) == []


# -- 5. a limit on what a host can send back ------------------------------------------------
def test_outputs_past_the_download_cap_fail_the_job_hard_links_counted(tmp_path, simulator):
    """One 600 kB file and two hard links to it are 1.8 MB on the local disk: past a 1 MB
    cap the job fails clearly, what came home stays, and its instance is destroyed."""
    wf = write_workflow(tmp_path / "wf", {
        "Snakefile": 'rule big:\n    output: small="small.txt", d=directory("d")\n'
                     '    shell: "echo hi > {output.small}; mkdir -p {output.d}; '
                     'head -c 600000 /dev/zero > {output.d}/a; ln {output.d}/a {output.d}/b; '
                     'ln {output.d}/a {output.d}/c"\n'})
    result = run_snakemake(wf, simulator.url, simulator.api_key, "--retries", "0",
                           "--vastai-max-download", "1000000")
    assert result.returncode != 0
    assert "exceed the download cap of 1000000 bytes" in result.stderr, result.stderr[-3000:]
    assert "--vastai-max-download" in result.stderr
    assert "Traceback" not in result.stderr
    assert alive(simulator.truth()) == []


def test_a_bad_download_cap_is_refused_before_anything_is_rented(tmp_path, simulator):
    wf = write_workflow(tmp_path / "wf", {
        "Snakefile": 'rule one:\n    output: "one.txt"\n    shell: "echo ok > {output}"\n'})
    result = run_snakemake(wf, simulator.url, simulator.api_key,
                           "--vastai-max-download", "-5")
    assert result.returncode != 0
    assert "--vastai-max-download" in result.stderr
    assert simulator.truth()["created_count"] == 0


# -- 4. a failed job's own output: always there, never raw ---------------------------------
def test_a_failed_jobs_error_ends_with_its_last_lines_and_no_escape_reaches_the_terminal(
        tmp_path, simulator):
    wf = write_workflow(tmp_path / "wf", {
        "Snakefile": "rule bad:\n    output: 'out.txt'\n"
                     "    shell: \"printf 'step one\\\\n\\\\033[2J\\\\033[3J\\\\033]52;c;aGk=\\\\a"
                     "the real cause: CUDA out of memory\\\\n'; exit 3\"\n"})
    result = run_snakemake(wf, simulator.url, simulator.api_key, "--retries", "0")
    assert result.returncode != 0
    err = result.stderr
    assert "the real cause: CUDA out of memory" in err, err[-3000:]
    assert "\x1b" not in err and "\x07" not in err
    assert "\\x1b[2J" in err  # made visible, not dropped: tampering shows
    log = next((wf / ".snakemake" / "auxiliary" / "vastai-logs").rglob("*.log"))
    assert b"\x1b[2J" in log.read_bytes()  # the job's own log stays raw
    # what `journal show` prints comes from the journal: sanitised there too
    text = " ".join(str(v) for row in journal_rows(wf, "select * from jobs") for v in row)
    assert "the real cause" in text and "\x1b" not in text


# -- 7. a job's leftovers do not live on into the next job on a warm instance -------------------
def test_the_next_job_on_a_warm_instance_finds_nothing_the_last_one_left_running(
        tmp_path, simulator):
    """The first job starts a loader in the background, a nohup'd and a setsid'd process
    and ends; the second job, leased the same instance, counts them."""
    marker = f"999.{time.monotonic_ns() % 100000}"
    wf = write_workflow(tmp_path / "wf", {
        "Snakefile": (
            "rule all:\n    input: 'second.txt'\n"
            "rule first:\n    output: 'first.txt'\n"
            f"    shell: 'sleep {marker}1 & nohup sleep {marker}2 >/dev/null 2>&1 & "
            f"setsid sleep {marker}3 >/dev/null 2>&1 & echo ok > {{output}}'\n"
            "rule second:\n    input: 'first.txt'\n    output: 'second.txt'\n"
            f"    shell: \"ps -eo args | grep -c '^sleep {marker}' > {{output}} || true\"\n"),
    })
    result = run_snakemake(wf, simulator.url, simulator.api_key, jobs=1, reuse=True)
    assert result.returncode == 0, result.stderr[-3000:]
    truth = simulator.truth()
    assert truth["created_count"] == 1, "the second job did not lease the warm instance"
    assert (wf / "second.txt").read_text().strip() == "0"
    assert alive(truth) == []


def test_an_instance_that_cannot_be_proven_clean_is_destroyed_not_lent(tmp_path, simulator):
    """The first job removes the tag its processes are found by: nothing proves the
    instance clean, so the second job gets a fresh one and the first is destroyed."""
    wf = write_workflow(tmp_path / "wf", {
        "Snakefile": (
            "rule all:\n    input: 'second.txt'\n"
            "rule first:\n    output: 'first.txt'\n"
            "    shell: 'rm -f .vastai/tag; echo ok > {output}'\n"
            "rule second:\n    input: 'first.txt'\n    output: 'second.txt'\n"
            "    shell: 'echo ok > {output}'\n"),
    })
    result = run_snakemake(wf, simulator.url, simulator.api_key, jobs=1, reuse=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "not lending the instance to another job" in result.stderr
    truth = simulator.truth()
    assert truth["created_count"] == 2
    assert alive(truth) == []


def test_a_log_past_the_download_cap_fails_the_job_and_stops_the_local_copy(
        tmp_path, simulator):
    wf = write_workflow(tmp_path / "wf", {
        "Snakefile": "rule chatty:\n    output: 'out.txt'\n"
                     "    shell: 'head -c 3000000 /dev/zero | tr \"\\\\0\" x; "
                     "echo ok > {output}'\n"})
    result = run_snakemake(wf, simulator.url, simulator.api_key, "--retries", "0",
                           "--vastai-max-download", "1000000")
    assert result.returncode != 0
    assert "log passed the download cap of 1000000 bytes" in result.stderr, \
        result.stderr[-3000:]
    log = next((wf / ".snakemake" / "auxiliary" / "vastai-logs").rglob("*.log"))
    assert log.stat().st_size <= 1000000 + 64 * 1024  # the cap, and the plugin's own lines
    assert alive(simulator.truth()) == []


def test_a_local_layout_that_cannot_take_the_outputs_is_refused_before_renting(
        tmp_path, simulator):
    wf = write_workflow(tmp_path / "wf", {
        "Snakefile": 'rule one:\n    output: "results/one.txt"\n'
                     '    shell: "echo ok > {output}"\n'})
    (wf / "results").symlink_to(tmp_path / "unmounted-disk")  # leads nowhere
    result = run_snakemake(wf, simulator.url, simulator.api_key)
    assert result.returncode != 0
    assert "'results' is a symlink that leads to nothing" in result.stderr, \
        result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert simulator.truth()["created_count"] == 0
