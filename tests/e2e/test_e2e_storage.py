"""Storage mode end to end: the real snakemake CLI, the simulator and a real S3 server.

The S3 server is moto in server mode on 127.0.0.1 (tests/harness/s3.py); Snakemake's
S3 storage plugin is pointed at it. Jobs run in ``args`` containers that fetch
sources and inputs from the bucket and put outputs there: the plugin must not
open SSH to them at all.
"""

from __future__ import annotations

import hashlib
import itertools
import sqlite3
from pathlib import Path

import pytest

from tests.harness.e2e import alive, run_snakemake, sim_env, write_workflow
from tests.harness.s3 import ACCESS_KEY, SECRET_KEY, s3_server  # noqa: F401 (fixture)

pytestmark = pytest.mark.e2e
_buckets = itertools.count()

CHAIN = '''\
rule all:
    input:
        "results/summary.txt",


rule make:
    output:
        "results/{name}.txt",
    wildcard_constraints:
        name="a|b",
    shell:
        "echo {wildcards.name}-made > {output}"


rule combine:
    input:
        "results/a.txt",
        "results/b.txt",
    output:
        "results/summary.txt",
    shell:
        "cat {input} > {output} && "
        "python -c \\"import hashlib,os; print(hashlib.sha256("
        "os.environ.get('AWS_SECRET_ACCESS_KEY','').encode()).hexdigest())\\" "
        ">> {output}"
'''


def storage_args(server, bucket: str) -> list[str]:
    """Targets go before the --storage-s3-* options (else they are taken as values)."""
    return ["--default-storage-provider", "s3",
            "--default-storage-prefix", f"s3://{bucket}/wf",
            "--storage-s3-endpoint-url", server.endpoint]


def s3_env(api_key: str, **extra: str) -> dict[str, str]:
    return sim_env(api_key, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY,
                   AWS_DEFAULT_REGION="us-east-1", **extra)


def new_bucket(server) -> str:
    name = f"vastai-test-{next(_buckets)}"
    server.create_bucket(name)
    return name


def journal_rows(workdir: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(workdir / ".snakemake" / "vastai" / "journal.sqlite") as db:
        return db.execute(sql).fetchall()


def test_chain_runs_through_the_bucket_without_ssh(tmp_path, simulator, s3_server):  # noqa: F811
    bucket = new_bucket(s3_server)
    wf = write_workflow(tmp_path / "wf", {"Snakefile": CHAIN})
    result = run_snakemake(wf, simulator.url, simulator.api_key,
                           *storage_args(s3_server, bucket),
                           env=s3_env(simulator.api_key))
    assert result.returncode == 0, result.stderr[-4000:]
    summary = s3_server.read(bucket, "wf/results/summary.txt").decode().splitlines()
    assert summary[:2] == ["a-made", "b-made"]
    assert summary[2] == hashlib.sha256(SECRET_KEY.encode()).hexdigest()
    assert not (wf / "results").exists()  # nothing came through the laptop
    truth = simulator.truth()
    ours = [i for i in truth["instances"] if not i.get("foreign")]
    assert len(ours) == 3
    assert all(i["ssh_bytes_in"] == 0 and i["ssh_bytes_out"] == 0 for i in ours), ours
    assert alive(truth) == []
    assert journal_rows(wf, "select state, count(*) from jobs group by state") == [
        ("succeeded", 3)]
    triggers = [t for (t,) in journal_rows(wf, "select trigger from transitions")]
    assert "uploaded" not in triggers and "downloaded" not in triggers
    assert SECRET_KEY not in result.stderr


FAILING = '''\
rule boom:
    output:
        "out/boom.txt",
    shell:
        "echo storage-job-says-goodbye >&2; exit 3"
'''


def test_failing_job_fails_with_its_log_and_leaves_nothing(tmp_path, simulator,
                                                           s3_server):  # noqa: F811
    bucket = new_bucket(s3_server)
    wf = write_workflow(tmp_path / "wf", {"Snakefile": FAILING})
    result = run_snakemake(wf, simulator.url, simulator.api_key, "out/boom.txt",
                           *storage_args(s3_server, bucket), env=s3_env(simulator.api_key))
    assert result.returncode != 0
    assert "exited with code 3" in result.stderr  # the command's own, not the remote Snakemake's 1
    assert "storage-job-says-goodbye" in result.stderr  # the instance log's tail is shown
    assert alive(simulator.truth()) == []
    assert journal_rows(wf, "select state from jobs") == [("failed",)]
    assert "wf/out/boom.txt" not in s3_server.keys(bucket)


HANGING = '''\
rule hang:
    output:
        "out/hang.txt",
    shell:
        "sleep 600 && touch {output}"
'''


def test_hung_job_is_destroyed_at_the_runtime_cap(tmp_path, simulator, s3_server):  # noqa: F811
    bucket = new_bucket(s3_server)
    wf = write_workflow(tmp_path / "wf", {"Snakefile": HANGING})
    result = run_snakemake(wf, simulator.url, simulator.api_key, "out/hang.txt",
                           *storage_args(s3_server, bucket), "--vastai-max-runtime", "4",
                           env=s3_env(simulator.api_key), timeout=180)
    assert result.returncode != 0
    assert "--vastai-max-runtime 4s" in result.stderr
    truth = simulator.truth()
    assert alive(truth) == []
    (inst,) = [i for i in truth["instances"] if not i.get("foreign")]
    assert inst["billed_seconds"] < 60  # destroyed at the cap, not after the 600 s sleep


CREDENTIALS = '''\
import hashlib, os


def digest(name):
    value = os.environ.get(name, "")
    return hashlib.sha256(value.encode()).hexdigest() if value else "absent"


def file_digest():
    path = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS", "")
    if not path or not os.path.exists(path):
        return "absent"
    mode = oct(os.stat(path).st_mode & 0o777)
    return hashlib.sha256(open(path, "rb").read()).hexdigest() + " " + mode


rule creds:
    output:
        "out/creds.txt",
    run:
        with open(output[0], "w") as out:
            out.write(digest("AWS_SECRET_ACCESS_KEY") + "\\n")
            out.write(digest("AZURE_STORAGE_KEY") + "\\n")
            out.write(file_digest() + "\\n")
'''


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_credentials_reach_the_job_through_its_environment(tmp_path, simulator,
                                                            s3_server):  # noqa: F811
    bucket = new_bucket(s3_server)
    google = tmp_path / "google.json"
    google.write_text('{"type": "service_account", "private_key": "fake-google-secret"}')
    wf = write_workflow(tmp_path / "wf", {"Snakefile": CREDENTIALS})
    env = s3_env(simulator.api_key, AZURE_STORAGE_KEY="fake-azure-secret",
                 GOOGLE_APPLICATION_CREDENTIALS=str(google))
    result = run_snakemake(wf, simulator.url, simulator.api_key, "out/creds.txt",
                           *storage_args(s3_server, bucket), env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    lines = s3_server.read(bucket, "wf/out/creds.txt").decode().splitlines()
    assert lines == [_sha(SECRET_KEY), _sha("fake-azure-secret"),
                     hashlib.sha256(google.read_bytes()).hexdigest() + " 0o600"]
    (inst,) = [i for i in simulator.fleet.everything() if not i.foreign]
    row = inst.row()
    assert not any("fake-" in arg or SECRET_KEY in arg for arg in row["image_args"])
    assert dict(row["extra_env"])["AWS_SECRET_ACCESS_KEY"] == SECRET_KEY  # env, not argv
    for text in (result.stderr, *_local_records(wf)):
        for secret in (SECRET_KEY, "fake-azure-secret", "fake-google-secret"):
            assert secret not in text


def _local_records(wf: Path) -> list[str]:
    """Every journal and log file the plugin wrote."""
    texts = []
    for path in (wf / ".snakemake").rglob("*"):
        if path.is_file() and ("vastai" in str(path)):
            texts.append(path.read_bytes().decode("utf-8", "replace"))
    return texts


def test_no_forward_credentials_keeps_them_home(tmp_path, simulator, s3_server):  # noqa: F811
    """With the opt-out the job still reaches the bucket through the storage plugin's own
    settings (forwarded by Snakemake), but never sees the AWS_*/AZURE_* variables."""
    bucket = new_bucket(s3_server)
    wf = write_workflow(tmp_path / "wf", {"Snakefile": CREDENTIALS})
    env = sim_env(simulator.api_key, AWS_SECRET_ACCESS_KEY="local-only-secret",
                  AWS_ACCESS_KEY_ID=ACCESS_KEY, AZURE_STORAGE_KEY="fake-azure-secret",
                  SNAKEMAKE_STORAGE_S3_ACCESS_KEY=ACCESS_KEY,
                  SNAKEMAKE_STORAGE_S3_SECRET_KEY=SECRET_KEY)
    result = run_snakemake(wf, simulator.url, simulator.api_key, "out/creds.txt",
                           *storage_args(s3_server, bucket), "--vastai-no-forward-credentials",
                           env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    lines = s3_server.read(bucket, "wf/out/creds.txt").decode().splitlines()
    assert lines == ["absent", "absent", "absent"]


NO_CREDENTIALS = {"AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
                  "AWS_CONFIG_FILE": "/nonexistent/config", "AWS_EC2_METADATA_DISABLED": "true"}


def _without_aws(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if not k.startswith("AWS_")} | NO_CREDENTIALS


@pytest.mark.parametrize(("case", "expected"), [
    ("plugin-missing", "snakemake-storage-plugin-gcs is not installed"),
    ("bucket-missing", "does not exist"),
    # Snakemake itself looks the outputs up in the bucket while building the DAG, before
    # any executor exists: it stops with its own (traceback-laden) error naming the cause.
    ("credentials-missing", "Unable to locate credentials"),
    ("google-file-unreadable", "Google credentials file"),
    ("negative-runtime-cap", "--vastai-max-runtime"),
])
def test_bad_storage_input_fails_before_renting(tmp_path, simulator, s3_server,  # noqa: F811
                                                case, expected):
    bucket = new_bucket(s3_server)
    wf = write_workflow(tmp_path / "wf", {"Snakefile": CHAIN})
    args = storage_args(s3_server, bucket)
    env = s3_env(simulator.api_key)
    if case == "plugin-missing":
        args[1] = "gcs"
        args[3] = "gcs://bucket/wf"
        args = args[:4]
    elif case == "bucket-missing":
        args[3] = "s3://no-such-bucket-here/wf"
    elif case == "credentials-missing":
        env = _without_aws(env)
    elif case == "google-file-unreadable":
        env["GOOGLE_APPLICATION_CREDENTIALS"] = str(tmp_path / "missing.json")
    else:
        args += ["--vastai-max-runtime", "-5"]
    result = run_snakemake(wf, simulator.url, simulator.api_key, *args, env=env)
    assert result.returncode != 0
    assert expected in result.stderr, result.stderr[-3000:]
    if case != "credentials-missing":
        assert "Traceback" not in result.stderr
    assert simulator.truth()["created_count"] == 0
    assert SECRET_KEY not in result.stderr


SLOW = '''\
rule slow:
    output:
        "out/slow.txt",
    shell:
        "sleep 3 && echo slow-done > {output}"
'''


def restart_finishes_on_the_one_instance(wf, simulator, server, bucket, args, env):
    """After a crash: unlock, run again; the job's output is in the bucket, no second
    instance was rented (the job resumed, or the bucket proved it done), none is alive."""
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "snakemake", "--unlock", *args], cwd=wf, env=env,
                   capture_output=True, timeout=120, check=True)
    result = run_snakemake(wf, simulator.url, simulator.api_key, *args, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    assert server.read(bucket, "wf/out/slow.txt") == b"slow-done\n"
    truth = simulator.truth()
    assert truth["created_count"] == 1, result.stderr[-4000:]  # not rented nor run again
    assert alive(truth) == []
    return result


@pytest.mark.parametrize("meanwhile", ["running", "finished"])
def test_restart_after_a_crash_resumes_the_storage_job(tmp_path, simulator, s3_server,  # noqa: F811
                                                       meanwhile):
    """SIGKILL right after the create; the restart re-attaches instead of renting again,
    whether the container still runs or has finished while Snakemake was down."""
    import time

    from snakemake_executor_plugin_vastai.lifecycle.driver import CRASH_ENV
    from tests.harness.e2e import wait_for

    bucket = new_bucket(s3_server)
    wf = write_workflow(tmp_path / "wf", {"Snakefile": SLOW})
    args = ["out/slow.txt", *storage_args(s3_server, bucket), "--rerun-incomplete"]
    env = s3_env(simulator.api_key)
    crashed = run_snakemake(wf, simulator.url, simulator.api_key, *args,
                            env={**env, CRASH_ENV: "after_create"})
    assert crashed.returncode < 0  # killed at the crash point
    assert simulator.truth()["created_count"] == 1
    if meanwhile == "finished":  # the job ended; its instance waits for a run to pick it up
        assert wait_for(lambda: "wf/out/slow.txt" in s3_server.keys(bucket), timeout=90)
        time.sleep(1.0)  # the exit line follows the last upload
    restart_finishes_on_the_one_instance(wf, simulator, s3_server, bucket, args, env)
    resumed = journal_rows(wf, "select count(*) from jobs where resumed_from is not null")
    assert resumed == [(1,)]


def test_a_run_asleep_past_the_pickup_finds_its_job_done_and_nothing_billing(
        tmp_path, simulator, s3_server):  # noqa: F811
    """The laptop sleeps (SIGSTOP) while a storage-mode job runs: the job ends, no run
    picks it up within the pickup window (the orphan timeout here), and the instance
    destroys itself, not stops: its outputs are in the bucket. The run, woken, finds the
    instance gone and the outputs there: done, not run again, nothing billing."""
    import signal
    import subprocess

    from tests.harness.e2e import snakemake_argv, wait_for

    bucket = new_bucket(s3_server)
    wf = write_workflow(tmp_path / "wf", {"Snakefile": SLOW})
    argv = snakemake_argv(simulator.url, "out/slow.txt", *storage_args(s3_server, bucket),
                          "--vastai-orphan-timeout", "3", jobs=1)
    proc = subprocess.Popen(argv, cwd=wf, env=s3_env(simulator.api_key), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert wait_for(lambda: alive(simulator.truth())
                        and alive(simulator.truth())[0]["actual_status"] == "running",
                        timeout=90)
        proc.send_signal(signal.SIGSTOP)  # asleep before the job's end
        assert wait_for(lambda: not alive(simulator.truth()), timeout=90), "never destroyed"
        [inst] = [i for i in simulator.truth()["instances"] if not i.get("foreign")]
        assert inst["stops"] == 0  # destroyed by itself, never stopped
        assert s3_server.read(bucket, "wf/out/slow.txt") == b"slow-done\n"
    finally:
        proc.send_signal(signal.SIGCONT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-4000:]
    assert "vanished after its outputs reached storage" in out, out[-3000:]
    truth = simulator.truth()
    assert truth["created_count"] == 1  # not run again
    assert alive(truth) == []


def test_after_a_crash_a_job_whose_instance_destroyed_itself_is_done_by_the_bucket(
        tmp_path, simulator, s3_server):  # noqa: F811
    """kill -9 while the job runs; nobody picks the succeeded job up, so its instance
    destroys itself (its outputs are in the bucket). The next run finds the instance
    gone and the outputs written since it was created: done, not rented nor run again."""
    import signal
    import subprocess

    from tests.harness.e2e import snakemake_argv, wait_for

    bucket = new_bucket(s3_server)
    wf = write_workflow(tmp_path / "wf", {"Snakefile": SLOW})
    args = ["out/slow.txt", *storage_args(s3_server, bucket), "--rerun-incomplete"]
    env = s3_env(simulator.api_key)
    proc = subprocess.Popen(snakemake_argv(simulator.url, *args, "--vastai-orphan-timeout",
                                           "3", jobs=1), cwd=wf, env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: alive(simulator.truth())
                        and alive(simulator.truth())[0]["actual_status"] == "running",
                        timeout=90)
        assert wait_for(lambda: journal_rows(
            wf, "select count(*) from instances where instance_id is not null") == [(1,)])
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert wait_for(lambda: not alive(simulator.truth()), timeout=90), "never destroyed"
    assert simulator.truth()["instances"][0]["stops"] == 0  # destroyed, not stopped
    restart_finishes_on_the_one_instance(wf, simulator, s3_server, bucket, args, env)


def test_host_that_never_reports_the_exit_is_caught_by_the_outputs(tmp_path, simulator,
                                                                   s3_server):  # noqa: F811
    """The container ends but the host keeps saying ``running`` (and billing): the job's
    outputs in the bucket plus its exit line end it, and the instance is destroyed."""
    bucket = new_bucket(s3_server)
    simulator.add_fault("stays_running")
    wf = write_workflow(tmp_path / "wf", {"Snakefile": CHAIN})
    result = run_snakemake(wf, simulator.url, simulator.api_key, "results/a.txt",
                           *storage_args(s3_server, bucket), env=s3_env(simulator.api_key),
                           timeout=180)
    assert result.returncode == 0, result.stderr[-4000:]
    assert s3_server.read(bucket, "wf/results/a.txt") == b"a-made\n"
    truth = simulator.truth()
    assert alive(truth) == []
    (inst,) = [i for i in truth["instances"] if not i.get("foreign")]
    assert "exited" not in [status for _, status in inst["history"]]  # it never said so


def test_no_forwarded_secret_in_any_process_argv(tmp_path, simulator, s3_server):  # noqa: F811
    """While storage-mode jobs run (container script, remote Snakemake, its storage
    plugin), no process on this machine carries a forwarded secret in its argv."""
    import subprocess
    import time

    from tests.e2e.test_hostile_host import _all_argv
    from tests.harness.e2e import snakemake_argv, wait_for

    bucket = new_bucket(s3_server)
    wf = write_workflow(tmp_path / "wf", {"Snakefile": SLOW})
    env = s3_env(simulator.api_key, AZURE_STORAGE_KEY="planted-azure-0b7e44")
    argv = snakemake_argv(simulator.url, "out/slow.txt", *storage_args(s3_server, bucket))
    errors = tmp_path / "stderr.txt"
    with errors.open("w") as sink:
        proc = subprocess.Popen(argv, cwd=wf, env=env, stdout=subprocess.DEVNULL, stderr=sink)
    seen: list[bytes] = []
    try:
        assert wait_for(lambda: b"sleep 3" in b"\0".join(_all_argv()), timeout=90)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            seen.extend(_all_argv())
            time.sleep(0.2)
        assert proc.wait(timeout=120) == 0, errors.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    blob = b"\0".join(seen)
    assert b"snakemake-vastai-exit" in blob  # the sampling saw the container script
    for secret in (SECRET_KEY, "planted-azure-0b7e44", simulator.api_key):
        assert secret.encode() not in blob
    assert alive(simulator.truth()) == []
