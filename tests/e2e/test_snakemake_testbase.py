"""Snakemake's own test base for executor plugins, run against the plugin on the simulator.

Snakemake ships ``snakemake.common.tests``: ``TestWorkflowsBase`` and its storage variants,
with the ``simple`` and ``groups`` test cases. The slurm, googlebatch and kubernetes plugins
subclass it in their suites; here it is subclassed the same way, pointed at the simulator:

- SSH mode, the test cases as shipped (a plain directory, not a git repository);
- SSH mode, the test cases made git repositories (``_copy_test_files`` runs ``git init``);
- storage mode, through the base's own storage hooks (``TestWorkflowsMinioPlayStorageBase``)
  pointed at the moto S3 server of ``tests/harness/s3.py``, as shipped and in git.

The base runs each case through Snakemake's Python API with ``workdir=`` (and the
Snakefile's absolute path), as every caller of the API does: the working directory is set
through the API, not by the caller's current directory. After each test case no instance
of the simulator may be alive (checked in ``cleanup_test``, which the base calls after every
case, also when it failed).

Before issue 28 they failed: as shipped, the run was refused before renting ("is not a git
repository"); in git, Snakemake handed the remote Snakemake ``--directory <this machine's
absolute working directory>`` (the API's ``workdir``), so in SSH mode every job failed
after renting (its outputs were not in its job directory, where the download looks for
them), and in storage mode the jobs ran in this machine's directory (simulated instances
share its file system; on Vast.ai that directory does not exist).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from snakemake.common import tests as sm_tests

from snakemake_executor_plugin_vastai import ExecutorSettings
from tests.harness.e2e import alive
from tests.harness.s3 import ACCESS_KEY, SECRET_KEY, s3_server  # noqa: F401 (fixture)

pytestmark = pytest.mark.e2e

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


def git_repository(root: Path) -> None:
    """Make a copied test case a git repository with every file committed."""
    subprocess.run([*GIT, "init", "-q"], cwd=root, check=True)
    subprocess.run([*GIT, "add", "-A"], cwd=root, check=True)
    subprocess.run([*GIT, "commit", "-q", "-m", "test case"], cwd=root, check=True)


class OnTheSimulator:
    """What a plugin author writes for the base: the executor and its settings, here
    pointed at this test's simulator. Mixed in before the base class."""

    simulator = None  # set per test by the fixture below
    workdir: Path | None = None  # the copied test case, set by run_workflow

    @pytest.fixture(autouse=True)
    def _on_the_simulator(self, simulator, monkeypatch):
        """The simulator for this test; no API key from the environment (the settings
        carry it); the executor's SIGTERM/SIGHUP handlers do not outlive the test."""
        self.simulator = simulator
        for name in ("VAST_API_KEY", "SNAKEMAKE_VASTAI_API_KEY", "VAST_URL"):
            monkeypatch.delenv(name, raising=False)
        handlers = {sig: signal.getsignal(sig) for sig in SIGNALS}
        try:
            yield
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)

    def get_executor(self) -> str:
        return "vastai"

    def get_executor_settings(self) -> ExecutorSettings | None:
        return ExecutorSettings(api_url=self.simulator.url, api_key=self.simulator.api_key,
                                no_reuse=True, status_interval=0.2, offline_grace=5)

    def get_assume_shared_fs(self) -> bool:
        return False  # as the googlebatch and kubernetes plugins say: no shared file system

    def run_workflow(self, test_name, tmp_path, deployment_method=frozenset()):
        self.workdir = Path(tmp_path) / test_name
        return super().run_workflow(test_name, tmp_path, deployment_method)

    def cleanup_test(self):
        """After every case (the base calls this also when the case failed)."""
        super().cleanup_test()
        left = alive(self.simulator.truth())
        assert left == [], f"instances still alive after the test case: {left}"


class InGit:
    """The test case copied, then made a git repository (all files committed)."""

    def _copy_test_files(self, test_path, tmp_path):
        shutil.copytree(test_path, tmp_path)
        git_repository(Path(tmp_path))


# -- SSH mode ------------------------------------------------------------------------------
class TestSSHAsShipped(OnTheSimulator, sm_tests.TestWorkflowsLocalStorageBase):
    """The base's test cases exactly as Snakemake ships them (no git repository)."""

    __test__ = True


class TestSSHInGit(InGit, OnTheSimulator, sm_tests.TestWorkflowsLocalStorageBase):
    """The same test cases, each made a git repository first."""

    __test__ = True


# -- storage mode --------------------------------------------------------------------------
class OnMoto(OnTheSimulator):
    """The base's storage hooks (``TestWorkflowsMinioPlayStorageBase``: bucket, endpoint,
    keys) pointed at the moto server. The plugin refuses a bucket that does not exist
    (jobs would not create it), so the bucket is made first; the base deletes it."""

    @pytest.fixture(autouse=True)
    def _on_moto(self, s3_server, monkeypatch):  # noqa: F811
        self.s3 = s3_server
        for name, value in (("AWS_ACCESS_KEY_ID", ACCESS_KEY),
                            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
                            ("AWS_DEFAULT_REGION", "us-east-1")):
            monkeypatch.setenv(name, value)
        s3_server.create_bucket(self.bucket)

    def cleanup_test(self):
        """Also: no instance ran its job in this machine's working directory. Simulated
        instances share this machine's file system, so a remote Snakemake handed this
        machine's path (``--directory /tmp/...``) runs there, and its local copies of
        storage objects (``.snakemake/storage/...``) show up here; the main process leaves
        none (nor does a run whose jobs stay in their job directories)."""
        super().cleanup_test()
        root = None if self.workdir is None else self.workdir / ".snakemake" / "storage"
        stray = [] if root is None else sorted(
            p.relative_to(self.workdir).as_posix() for p in root.rglob("*") if p.is_file())
        assert stray == [], f"an instance wrote into this machine's working directory: {stray}"

    @property
    def endpoint_url(self):
        return self.s3.endpoint

    @property
    def access_key(self):
        return ACCESS_KEY

    @property
    def secret_key(self):
        return SECRET_KEY


class TestStorageAsShipped(OnMoto, sm_tests.TestWorkflowsMinioPlayStorageBase):
    """Storage mode, the test cases as shipped."""

    __test__ = True


class TestStorageInGit(InGit, OnMoto, sm_tests.TestWorkflowsMinioPlayStorageBase):
    """Storage mode, the test cases made git repositories. ``groups`` passes today (its
    jobs write no log, so nothing of theirs is left where they ran); ``simple`` shows
    where its jobs ran."""

    __test__ = True

    def test_simple_workflow(self, tmp_path):
        super().test_simple_workflow(tmp_path)
