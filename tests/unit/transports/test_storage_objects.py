"""Storage objects as the local Snakemake holds them, against a real S3 server (moto).

The root cause of issue 19: the S3 plugin's storage object remembers "not a directory"
the first time it finds no key under its prefix. The local Snakemake asks about a job's
outputs before the job runs, so once a remote job has stored a ``directory()`` output,
the same object still says it is missing. These tests show the memo and that the plugin
drops it (``forget_stale_answers``) and never plants it (``OutputProbe``).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from snakemake.io import IOFile, flag
from snakemake_storage_plugin_s3 import StorageProvider, StorageProviderSettings

from snakemake_executor_plugin_vastai.transports.storage.setup import (
    OutputProbe,
    forget_stale_answers,
    fresh_object,
)
from snakemake_executor_plugin_vastai.workflow import checkpoints
from tests.harness.s3 import ACCESS_KEY, SECRET_KEY, s3_server  # noqa: F401 (fixture)


@pytest.fixture
def provider(tmp_path, s3_server):  # noqa: F811
    s3_server.create_bucket("objects-test")
    settings = StorageProviderSettings(endpoint_url=s3_server.endpoint, access_key=ACCESS_KEY,
                                       secret_key=SECRET_KEY, region="us-east-1")
    return StorageProvider(local_prefix=tmp_path / "prefix", logger=logging.getLogger("t"),
                           settings=settings, is_default=True)


def storage_iofile(provider, query: str):
    """An output file as Snakemake's DAG holds it: an IOFile flagged with its object."""
    obj = provider.object(query)
    return IOFile(flag(str(obj.local_path()), "storage_object", obj))


def job_with(*outputs, checkpoint: bool = False):
    return SimpleNamespace(output=list(outputs), is_checkpoint=checkpoint,
                           products=lambda include_logfiles=True: list(outputs))


def test_a_directory_stored_elsewhere_stays_missing_for_the_asking_object(provider,
                                                                         s3_server):  # noqa: F811
    query = "s3://objects-test/wf/results/many"
    out = storage_iofile(provider, query)
    assert out.storage_object.exists() is False  # asked while building the DAG
    s3_server.put("objects-test", "wf/results/many/sub/b.txt", b"b")  # the remote job
    assert out.storage_object.exists() is False  # the memo: this is the defect
    assert fresh_object(out.storage_object).exists() is True


def test_forget_stale_answers_renews_every_storage_product(provider, s3_server):  # noqa: F811
    out = storage_iofile(provider, "s3://objects-test/wf/tree")
    plain = IOFile("not-in-storage.txt")
    assert out.storage_object.exists() is False
    s3_server.put("objects-test", "wf/tree/a/deep.txt", b"x")
    before = out.storage_object
    assert forget_stale_answers(job_with(out, plain)) == 1
    assert out.storage_object is not before
    assert out.storage_object.query == before.query
    assert out.storage_object.exists() is True
    assert out.storage_object._iofile is out


def test_the_output_probe_neither_trusts_nor_plants_memos(provider, s3_server):  # noqa: F811
    out = storage_iofile(provider, "s3://objects-test/wf/probed")
    probe = OutputProbe()
    assert probe.all_present([out]) is False  # asked while the job still runs
    s3_server.put("objects-test", "wf/probed/file.txt", b"x")
    assert probe.all_present([out]) is True
    assert probe.all_present([IOFile("local-only.txt")]) is None


def test_the_container_fetch_line_retrieves_checkpoint_outputs(tmp_path, s3_server):  # noqa: F811
    """The line the container runs (checkpoints.fetch_command), run here with the same
    Snakemake: a directory with nested files and a plain file land in the local prefix."""
    s3_server.create_bucket("fetch-test")
    s3_server.put("fetch-test", "wf/parts/p1.txt", b"one\n")
    s3_server.put("fetch-test", "wf/parts/deep/er/p2.txt", b"two\n")
    s3_server.put("fetch-test", "wf/list.txt", b"a\nb\n")
    storage_args = ("--default-storage-provider s3 --default-storage-prefix s3://fetch-test/wf "
                    f"--storage-s3-endpoint-url {s3_server.endpoint}")
    line = checkpoints.fetch_command(["s3://fetch-test/wf/parts", "s3://fetch-test/wf/list.txt"],
                                     ".snakemake/storage/s3", storage_args)
    assert checkpoints.fetch_command([], "x", storage_args) == ""
    env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY,
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    done = subprocess.run(["sh", "-c", line], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    local = tmp_path / ".snakemake" / "storage" / "s3" / "fetch-test" / "wf"
    assert (local / "parts" / "p1.txt").read_bytes() == b"one\n"
    assert (local / "parts" / "deep" / "er" / "p2.txt").read_bytes() == b"two\n"
    assert (local / "list.txt").read_bytes() == b"a\nb\n"
    assert SECRET_KEY not in line


def test_fetch_fails_loudly_for_a_missing_checkpoint_output(tmp_path, s3_server):  # noqa: F811
    s3_server.create_bucket("fetch-missing")
    storage_args = ("--default-storage-provider s3 --default-storage-prefix "
                    f"s3://fetch-missing/wf --storage-s3-endpoint-url {s3_server.endpoint}")
    line = checkpoints.fetch_command(["s3://fetch-missing/wf/nothing"], ".snakemake/storage/s3",
                                     storage_args)
    env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY,
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    done = subprocess.run(["sh", "-c", line], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0


def test_only_jobs_with_input_or_params_functions_fetch_checkpoint_outputs():
    def job(inputs=(), params=()):
        return SimpleNamespace(rule=SimpleNamespace(input=list(inputs), params=list(params)))

    def function(wildcards):
        return []

    assert checkpoints.may_consult(job(inputs=["parts/p1.txt"])) is False
    assert checkpoints.may_consult(job(inputs=["a.txt", function])) is True
    assert checkpoints.may_consult(job(params=[3, function])) is True
    group = SimpleNamespace(jobs=[job(inputs=["x"]), job(inputs=[function])])
    assert checkpoints.may_consult(group) is True
