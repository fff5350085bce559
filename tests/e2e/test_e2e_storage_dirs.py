"""Storage mode end to end, issue 19: directories, odd file names, refused features.

The byte-for-byte comparisons with the local executor are in
``tests/e2e/test_differential_storage.py``; these are the cases that need their own set-up.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.e2e.test_e2e_storage import new_bucket, s3_env, storage_args
from tests.harness.e2e import alive, run_snakemake, write_workflow
from tests.harness.s3 import s3_server  # noqa: F401 (fixture)

pytestmark = pytest.mark.e2e

TREE = '''\
rule tree:
    output:
        directory("results/tree"),
    shell:
        "mkdir -p {output}/a/b && echo deep > {output}/a/b/deep.txt && echo top > {output}/top.txt"
'''


def test_directory_output_of_a_host_that_never_reports_the_exit(tmp_path, simulator,
                                                                s3_server):  # noqa: F811
    """The host keeps saying ``running``: only the output probe can end the job, and the
    output is a directory (the probe must see it although it was asked before it existed)."""
    bucket = new_bucket(s3_server)
    simulator.add_fault("stays_running")
    wf = write_workflow(tmp_path / "wf", {"Snakefile": TREE})
    result = run_snakemake(wf, simulator.url, simulator.api_key, "results/tree",
                           *storage_args(s3_server, bucket), env=s3_env(simulator.api_key),
                           timeout=180)
    assert result.returncode == 0, result.stderr[-4000:]
    assert s3_server.read(bucket, "wf/results/tree/a/b/deep.txt") == b"deep\n"
    truth = simulator.truth()
    assert alive(truth) == []
    (inst,) = [i for i in truth["instances"] if not i.get("foreign")]
    assert inst["ssh_bytes_in"] == 0 and inst["ssh_bytes_out"] == 0
    assert "exited" not in [status for _, status in inst["history"]]


ODD = "data/my file é.txt"
ODD_NAMES = {
    "Snakefile": '''\
rule copy:
    input:
        "data/my file é.txt",
    output:
        "out/résumé copy.txt",
    shell:
        "cp '{input}' '{output}'"
''',
    ODD: "odd bytes\n",
}


def test_file_names_with_spaces_and_non_ascii(tmp_path, simulator, s3_server):  # noqa: F811
    bucket = new_bucket(s3_server)
    s3_server.put(bucket, f"wf/{ODD}", b"odd bytes\n")  # inputs live in the bucket
    wf = write_workflow(tmp_path / "wf", ODD_NAMES, track=["Snakefile", ODD])
    result = run_snakemake(wf, simulator.url, simulator.api_key, "out/résumé copy.txt",
                           *storage_args(s3_server, bucket), env=s3_env(simulator.api_key))
    assert result.returncode == 0, result.stderr[-4000:]
    assert s3_server.read(bucket, "wf/out/résumé copy.txt") == b"odd bytes\n"
    truth = simulator.truth()
    assert alive(truth) == []
    assert all(i["ssh_bytes_in"] == 0 and i["ssh_bytes_out"] == 0
               for i in truth["instances"] if not i.get("foreign"))


LOCAL_LOG = '''\
rule with_local_log:
    output:
        "out/made.txt",
    log:
        local("logs/made.log"),
    shell:
        "echo made > {output} && echo logged > {log}"
'''

PLAIN = '''\
rule plain:
    output:
        local("out/here.txt"),
    shell:
        "echo here > {output}"
'''


LOCAL_BENCHMARK = LOCAL_LOG.replace("log:", "benchmark:").replace(
    " && echo logged > {log}", "").replace("with_local_log", "with_local_benchmark")


@pytest.mark.parametrize(("snakefile", "expected"), [
    (LOCAL_LOG, "rule with_local_log: log logs/made.log is marked local()"),
    (LOCAL_BENCHMARK, "rule with_local_benchmark: benchmark logs/made.log is marked local()"),
], ids=["log", "benchmark"])
def test_local_logs_of_remote_jobs_are_refused_before_renting(
        tmp_path, simulator, s3_server, snakefile, expected):  # noqa: F811
    """The local executor runs these (the oracle); storage mode cannot, and says so before
    renting, naming the rule and the file."""
    extra: list[str] = []
    env = s3_env(simulator.api_key)
    oracle = write_workflow(tmp_path / "local", {"Snakefile": snakefile})
    local = subprocess.run([sys.executable, "-m", "snakemake", "-c1",
                            *storage_args(s3_server, new_bucket(s3_server)), *extra],
                           cwd=oracle, env=env, capture_output=True, text=True, timeout=180)
    assert local.returncode == 0, local.stderr[-3000:]
    wf = write_workflow(tmp_path / "wf", {"Snakefile": snakefile})
    result = run_snakemake(wf, simulator.url, simulator.api_key,
                           *storage_args(s3_server, new_bucket(s3_server)), *extra, env=env)
    assert result.returncode != 0
    assert expected in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert simulator.truth()["created_count"] == 0


def test_local_files_run_here_in_storage_mode(tmp_path, simulator, s3_server):  # noqa: F811
    """Snakemake itself runs a job with local() inputs or outputs on this machine (the
    plugin declares no shared file system): nothing is rented for it."""
    wf = write_workflow(tmp_path / "wf", {"Snakefile": PLAIN})
    result = run_snakemake(wf, simulator.url, simulator.api_key,
                           *storage_args(s3_server, new_bucket(s3_server)),
                           env=s3_env(simulator.api_key))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (wf / "out" / "here.txt").read_text() == "here\n"
    assert simulator.truth()["created_count"] == 0


def test_a_long_directory_upload_is_never_cut_short(tmp_path, simulator, s3_server):  # noqa: F811
    """The remote Snakemake uploads a directory one file at a time: some keys under its
    prefix prove nothing. The job is done when its exit line says so, with every file in
    the bucket (the settle time used to take a half-uploaded directory for done)."""
    bucket = new_bucket(s3_server)
    wf = write_workflow(tmp_path / "wf", {"Snakefile": (
        "rule many:\n    output: directory('results/many')\n"
        "    shell: 'mkdir -p {output} && for i in $(seq 1 1500); do "
        "echo $i > {output}/f$i.txt; done'\n")})
    result = run_snakemake(wf, simulator.url, simulator.api_key, "results/many",
                           *storage_args(s3_server, bucket), env=s3_env(simulator.api_key),
                           timeout=400)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "taking it as done" not in result.stderr
    keys = [k for k in s3_server.keys(bucket) if k.startswith("wf/results/many/f")]
    assert len(keys) == 1500
    assert alive(simulator.truth()) == []
