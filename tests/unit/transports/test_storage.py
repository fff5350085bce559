"""storage.py on its own: the container script (run for real with sh), the exit line,
the checks before renting and the credentials file forwarding."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
from types import SimpleNamespace

import pytest

from snakemake_executor_plugin_vastai.transports.storage.setup import (
    EXIT_MARKER,
    GOOGLE_CREDENTIALS_ENV,
    OutputProbe,
    StorageCheckFailed,
    StorageMode,
    check_storage,
    container_args,
    credential_environment,
    exit_code_from_log,
    exit_token,
)

MODE = StorageMode(provider="s3", prefix="s3://bucket/wf", plugin_packages=())


def run_container(tmp_path, job_command: str, env: dict[str, str] | None = None,
                  deploy: str = "true") -> subprocess.CompletedProcess:
    args = container_args(job_command=job_command, deploy_command=deploy, mode=MODE,
                          snakemake_version="9.0.0", job_dir="job", token="tok123")
    full_env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **(env or {})}
    return subprocess.run(args, env=full_env, capture_output=True, text=True, timeout=60)


def test_container_reports_the_job_exit_code_on_its_last_line(tmp_path):
    done = run_container(tmp_path, "echo working; exit 7")
    assert done.returncode == 7
    assert done.stdout.splitlines()[-1] == f"{EXIT_MARKER} tok123 7"
    assert exit_code_from_log(done.stdout, "tok123") == 7
    assert (tmp_path / "job").is_dir()  # the job ran in its own directory


def test_a_failed_deploy_is_a_failed_job_with_an_exit_line(tmp_path):
    done = run_container(tmp_path, "echo never-runs", deploy="echo cannot-deploy >&2; false")
    assert "never-runs" not in done.stdout
    assert exit_code_from_log(done.stdout, "tok123") == 1


def test_google_credentials_are_materialised_0600_and_the_variable_removed(tmp_path):
    secret = b'{"private_key": "not-a-real-key"}'
    env = {GOOGLE_CREDENTIALS_ENV: base64.b64encode(secret).decode()}
    probe = ('python -c "import os,hashlib; p=os.environ[\'GOOGLE_APPLICATION_CREDENTIALS\']; '
             "print(hashlib.sha256(open(p,'rb').read()).hexdigest(), "
             "oct(os.stat(p).st_mode & 0o777), "
             f"'{GOOGLE_CREDENTIALS_ENV}' in os.environ)\"")
    done = run_container(tmp_path, probe, env=env)
    assert done.returncode == 0, done.stderr
    digest, mode, leaked = done.stdout.splitlines()[0].split()
    assert digest == hashlib.sha256(secret).hexdigest()
    assert (mode, leaked) == ("0o600", "False")


def test_the_container_command_holds_no_secret(tmp_path):
    args = container_args(job_command="python -m snakemake x", deploy_command="true",
                          mode=MODE, snakemake_version="9.0.0", job_dir="job", token="t")
    assert args[:2] == ["sh", "-c"]
    assert "AWS_SECRET" not in args[2] and GOOGLE_CREDENTIALS_ENV in args[2]  # name only


def test_exit_line_needs_our_token_and_the_last_one_wins():
    token = exit_token("snakejob-abc-1")
    assert token == exit_token("snakejob-abc-1") != exit_token("snakejob-abc-2")
    log = "\n".join([f"{EXIT_MARKER} {token} 0", f"{EXIT_MARKER} forged 0",
                     f"echo {EXIT_MARKER} {token} 0", f"{EXIT_MARKER} {token} 3", ""])
    assert exit_code_from_log(log, token) == 3
    assert exit_code_from_log(f"{EXIT_MARKER} forged 0\n", token) is None


class Provider:
    def __init__(self, exists=True, error: Exception | None = None):
        self._exists, self._error = exists, error
        self.queries: list[str] = []

    def object(self, query: str):
        self.queries.append(query)
        return SimpleNamespace(bucket_exists=self._bucket_exists)

    def _bucket_exists(self) -> bool:
        if self._error:
            raise self._error
        return self._exists


def workflow(provider) -> SimpleNamespace:
    return SimpleNamespace(storage_registry=SimpleNamespace(default_storage_provider=provider))


def test_check_storage_accepts_an_existing_bucket():
    provider = Provider()
    check_storage(workflow(provider), MODE)
    assert provider.queries == ["s3://bucket/wf/.snakemake-vastai-probe"]


@pytest.mark.parametrize(("provider", "mode", "words"), [
    (Provider(exists=False), MODE, "does not exist"),
    (Provider(error=RuntimeError("Unable to locate credentials")), MODE, "AWS_ACCESS_KEY_ID"),
    (Provider(error=RuntimeError("timeout")), MODE, "check --default-storage-prefix"),
    (Provider(), StorageMode("s3", "", ()), "needs --default-storage-prefix"),
    (None, MODE, "pip install snakemake-storage-plugin-s3"),
])
def test_check_storage_names_what_is_wrong(provider, mode, words):
    with pytest.raises(StorageCheckFailed, match=words.replace("-", "\\-")):
        check_storage(workflow(provider), mode)


def test_google_credentials_come_from_the_variable_or_gcloud_defaults(tmp_path):
    named = tmp_path / "key.json"
    named.write_bytes(b"named")
    adc = tmp_path / ".config/gcloud/application_default_credentials.json"
    adc.parent.mkdir(parents=True)
    adc.write_bytes(b"adc")
    decode = base64.b64decode
    env = credential_environment({"GOOGLE_APPLICATION_CREDENTIALS": str(named)})
    assert decode(env[GOOGLE_CREDENTIALS_ENV]) == b"named"
    assert decode(credential_environment({"HOME": str(tmp_path)})[GOOGLE_CREDENTIALS_ENV]) \
        == b"adc"
    assert credential_environment({"HOME": str(tmp_path / "nobody")}) == {}
    missing = str(tmp_path / "missing.json")
    with pytest.raises(StorageCheckFailed, match=r"missing\.json"):
        credential_environment({"GOOGLE_APPLICATION_CREDENTIALS": missing})


def test_output_probe_needs_every_storage_output():
    present = {"s3://b/yes": True, "s3://b/no": False}

    class Obj:  # built again per question (fresh_object), as Snakemake builds one
        def __init__(self, query, provider=None, keep_local=False, retrieve=True):
            self.query, self.provider = query, provider
            self.keep_local, self.retrieve = keep_local, retrieve

        def exists(self):
            return present[self.query]

        def mtime(self):  # the storage's own clock
            return 1000.0

    def out(exists: bool, storage: bool = True):
        return SimpleNamespace(is_storage=storage,
                               storage_object=Obj("s3://b/yes" if exists else "s3://b/no"))

    probe = OutputProbe()
    assert probe.all_present([out(True), out(True)]) is True
    assert probe.all_present([out(True), out(False)]) is False
    assert probe.all_present([out(False, storage=False)]) is None
    # written before the instance that was to make it was created: an earlier run's
    assert probe.all_present([out(True)], since=1000.0) is True
    assert probe.all_present([out(True)], since=1000.5) is False
