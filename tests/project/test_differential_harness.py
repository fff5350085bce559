"""The differential harness itself: it must see every kind of difference it promises to."""

from __future__ import annotations

import os
import subprocess
from dataclasses import replace

from tests.harness.differential import api_argv, bookkeeping, compare, launch, lay_out, snapshot
from tests.harness.differential_cases import CASES, Case
from tests.harness.differential_storage import storage_key

CASE = Case(name="t", promise="harness", files={"Snakefile": "", "data/in.txt": "x\n"},
            untracked=("data/in.txt",), fuzzy={"bench/*": "benchmark", "r.html": "exists"})


def test_lay_out_tracks_all_but_the_untracked_files(tmp_path):
    root = lay_out(tmp_path / "wf dir $x", CASE)
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True,
                             check=True).stdout.split(b"\0")
    assert b"Snakefile" in tracked and b"data/in.txt" not in tracked
    assert (root / "data/in.txt").read_text() == "x\n"


def test_bookkeeping_is_left_out_of_the_snapshot(tmp_path):
    root = lay_out(tmp_path / "wf", CASE)
    (root / ".snakemake/log").mkdir(parents=True)
    (root / ".snakemake/log/x.log").write_text("differs every run")
    assert set(snapshot(root)) == {"Snakefile", "data", "data/in.txt"}


def test_content_presence_kind_and_write_protection_differences_are_reported(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        (root / "d").mkdir(parents=True)
        (root / "same.txt").write_text("same")
        (root / "ro.txt").write_text("ro")
    (a / "content.txt").write_text("one")
    (b / "content.txt").write_text("two")
    (a / "only_a.txt").write_text("a")
    (a / "kind").mkdir()
    (b / "kind").write_text("file")
    os.chmod(a / "ro.txt", 0o444)
    problems = compare(CASE, snapshot(a), snapshot(b))
    assert any("'content.txt': contents differ" in p for p in problems)
    assert "only after local: 'only_a.txt'" in problems
    assert any("'kind': dir locally, file after vastai" in p for p in problems)
    assert "'ro.txt': writable False locally, True after vastai" in problems
    assert not any("same.txt" in p for p in problems)


def test_fuzzy_files_compare_by_shape_only():
    local = {"bench/x.tsv": ("file", b"s\th:m:s\n1.5\t0:00:01\n", True),
             "r.html": ("file", b"<html>13:01</html>", True)}
    remote = {"bench/x.tsv": ("file", b"s\th:m:s\n2.7\t0:00:02\n", True),
              "r.html": ("file", b"<html>13:02</html>", True)}
    assert compare(CASE, local, remote) == []
    remote["bench/x.tsv"] = ("file", b"s\th:m:s\n2.7\n", True)  # a column went missing
    assert compare(CASE, local, remote) != []


def test_the_catalogue_has_at_least_15_distinct_workflows():
    names = [c.name for c in CASES]
    assert len(names) >= 15 and len(set(names)) == len(names)
    assert all(c.promise for c in CASES)


# -- issue 28: how a run starts, and layouts without git -----------------------------------
def test_a_case_without_git_is_laid_out_without_a_repository(tmp_path):
    root = lay_out(tmp_path / "wf", replace(CASE, git=False))
    assert not (root / ".git").exists()
    assert (root / "data/in.txt").read_text() == "x\n"


def test_runs_start_in_the_workflow_directory_or_its_parent(tmp_path):
    wf = tmp_path / "wf"
    assert launch(CASE, wf, ["snakemake"]) == (wf, ["snakemake"])
    assert launch(replace(CASE, from_parent=True), wf, ["snakemake"]) == (
        tmp_path, ["snakemake", "--directory", "wf", "--snakefile", "wf/Snakefile"])
    api = replace(CASE, via_api=True, targets=("a.txt",))
    argv = api_argv(api, wf, "vastai", url="http://sim", storage=("s3://b/wf", "http://s3"))
    assert launch(api, wf, argv) == (tmp_path, argv)
    assert argv[1].endswith("api_run.py") and argv[-2:] == ["--", "a.txt"]
    assert argv[argv.index("--workdir") + 1] == str(wf)
    assert argv[argv.index("--api-url") + 1] == "http://sim"
    assert argv[argv.index("--storage-prefix") + 1] == "s3://b/wf"


def test_a_workdir_directive_moves_bookkeeping_and_storage_keys():
    moved = replace(CASE, working_dir="work", ignored=("x",))
    assert bookkeeping(moved) == ("x", "work/.snakemake")
    assert storage_key(moved, "work/data/in.txt") == "data/in.txt"
    assert storage_key(moved, "scripts/x.py") is None  # outside the working directory
    assert storage_key(CASE, "data/in.txt") == "data/in.txt"


def test_api_run_runs_a_workflow_through_the_api_from_another_directory(tmp_path):
    case = Case(name="api", promise="harness", via_api=True,
                files={"Snakefile": 'rule a:\n    output: "a.txt"\n'
                                    '    shell: "pwd > {output}"\n'})
    wf = lay_out(tmp_path / "wf", case)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run(api_argv(case, wf, "local"), cwd=elsewhere, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (wf / "a.txt").read_text().strip() == str(wf.resolve())
    assert list(elsewhere.iterdir()) == []
