"""Any file name POSIX and git allow travels intact: the source archive, the job arguments
of the remote Snakemake command line, and the early refusal of newlines."""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from snakemake_executor_plugin_vastai.workflow import sources
from snakemake_executor_plugin_vastai.workflow.jobargs import job_args

ODD_NAMES = [
    "in put/h\u00e9llo w\u00f6rld.txt",
    "quotes/\"double\" 'single'.txt",
    "dollar/$HOME $(id).txt",
    "back\\slash.txt",
    "-n",
    "--help",
    "tab\there.txt",
]


def git_repo(root: Path, names: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"content of {name}\n")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["git", "add", "--", *names], cwd=root, check=True)
    return root


def test_git_files_are_read_nul_separated_so_no_name_comes_back_quoted(tmp_path):
    repo = git_repo(tmp_path / "wf", ODD_NAMES)
    assert sorted(sources.git_files(repo)) == sorted(ODD_NAMES)
    # git's default output quotes these names; that is what broke the upload before
    plain = subprocess.run(["git", "ls-files"], cwd=repo, capture_output=True, text=True)
    assert any(line.startswith('"') for line in plain.stdout.splitlines())


def test_untracked_files_are_listed_the_same_way(tmp_path):
    repo = git_repo(tmp_path / "wf", ["Snakefile"])
    (repo / "new w\u00f6rld.txt").write_text("x")
    assert sources.git_files(repo, "--others", "--exclude-standard") == ["new w\u00f6rld.txt"]


def test_a_git_failure_names_the_directory(tmp_path):
    with pytest.raises(sources.SourcesError, match="git ls-files"):
        sources.git_files(tmp_path)


def fake_workflow(included: list[str] = ()) -> SimpleNamespace:
    """Snakemake's Workflow, reduced to what registered_sources reads."""
    return SimpleNamespace(included=list(included), rules=[], configfiles=[],
                           dag=SimpleNamespace(jobs=[]))


def test_the_source_listing_snakemake_archives_holds_every_odd_name(tmp_path, monkeypatch):
    repo = git_repo(tmp_path / "wf \u00e9 $x 'q'", ["Snakefile", *ODD_NAMES])
    monkeypatch.chdir(repo)
    workflow = fake_workflow(["Snakefile"])
    warnings: list[str] = []
    sources.install(workflow, repo, warnings.append)
    listed = workflow.dag.get_sources()
    assert listed == {"Snakefile", *ODD_NAMES}
    workflow.write_source_archive(repo.parent / "sources.tar.xz")
    with tarfile.open(repo.parent / "sources.tar.xz") as archive:
        assert sorted(archive.getnames()) == sorted(listed)
    assert warnings == []


def test_names_with_newlines_are_found():
    assert sources.newline_paths(["a.txt", "b\nc.txt", "d\re"]) == ["b\nc.txt", "d\re"]


class FakeJob:
    """The parts of a Snakemake job that job_args reads."""

    def __init__(self, wildcards: dict[str, str], group: bool = False):
        from snakemake_interface_executor_plugins.utils import TargetSpec

        self._spec = [TargetSpec("copy", wildcards)]
        self.rules = ["copy"]
        self.jobid = 7
        self.attempt = 2
        self._group = group

    def get_target_spec(self):
        return self._spec

    def is_group(self):
        return self._group


@pytest.mark.parametrize("value", ["-x $y 'z' \u00fc", 'say "hi" \\ $(id)', "`id`;rm -rf x"])
def test_job_arguments_survive_the_remote_shell_unchanged(value):
    from snakemake.target_jobs import parse_target_jobs_cli_args

    args = job_args(FakeJob({"name": value}), cores=2, unneeded_temp_files=["t $x.txt"])
    words = sh_words(args)
    targets = words[words.index("--target-jobs") + 1]
    (spec,) = parse_target_jobs_cli_args([targets])
    assert spec.rulename == "copy" and spec.wildcards_dict == {"name": value}
    assert words[words.index("--unneeded-temp-files") + 1] == "t $x.txt"
    assert words[words.index("--attempt") + 1] == "2"
    assert "--force-use-threads" in words and "--local-groupid" not in words


def sh_words(args: str) -> list[str]:
    """The argv a real ``sh`` hands the remote Snakemake for these arguments."""
    done = subprocess.run(["sh", "-c", f'printf "%s\\0" {args}'], capture_output=True,
                          check=True, env={"PATH": "/usr/bin:/bin", "y": "EXPANDED"})
    return done.stdout.decode().split("\0")[:-1]


def test_snakemakes_own_quoting_would_let_the_shell_expand_a_wildcard():
    """Why jobargs.py exists: repr() is not shell quoting."""
    from snakemake_interface_executor_plugins.utils import (
        encode_target_jobs_cli_args,
        format_cli_arg,
    )

    job = FakeJob({"name": "-x $y 'z'"})  # repr() picks double quotes: $y expands
    theirs = sh_words(format_cli_arg("--target-jobs",
                                     encode_target_jobs_cli_args(job.get_target_spec())))
    ours = sh_words(job_args(job, cores=1, unneeded_temp_files=[]))
    assert theirs[1] == "copy:name=-x EXPANDED 'z'"
    assert ours[1] == "copy:name=-x $y 'z'"


def test_group_jobs_carry_their_local_group_id():
    words = sh_words(job_args(FakeJob({}, group=True), cores=4, unneeded_temp_files=[]))
    assert words[words.index("--local-groupid") + 1] == "7"
    assert "--force-use-threads" not in words and "--unneeded-temp-files" not in words
