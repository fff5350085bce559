"""The differential harness itself: it must see every kind of difference it promises to."""

from __future__ import annotations

import os
import subprocess

from tests.harness.differential import compare, lay_out, snapshot
from tests.harness.differential_cases import CASES, Case

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
