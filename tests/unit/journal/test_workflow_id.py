"""The workflow id (and so the instance label prefix) of a new journal is derived from the
machine and the working directory (issue 30): after ``rm -rf .snakemake`` a run gets the
same prefix back and finds what a crashed run left, instead of being blind to it."""

from __future__ import annotations

import shutil

from snakemake_executor_plugin_vastai.journal.store import Journal


def test_a_lost_snakemake_directory_gives_the_same_prefix_back(tmp_path):
    with Journal.for_workdir(tmp_path / "wf") as first:
        prefix = first.label_prefix
    shutil.rmtree(tmp_path / "wf" / ".snakemake")
    with Journal.for_workdir(tmp_path / "wf") as again:
        assert again.label_prefix == prefix


def test_another_directory_gets_another_prefix(tmp_path):
    with Journal.for_workdir(tmp_path / "a") as a, Journal.for_workdir(tmp_path / "b") as b:
        assert a.label_prefix != b.label_prefix
        assert a.label_prefix.startswith("smk-") and len(a.workflow_id) == 8


def test_a_kept_workflow_id_file_still_wins(tmp_path):
    """A journal moved aside (corrupt) leaves the id file: the fresh journal takes it."""
    (tmp_path / "wf" / ".snakemake" / "vastai").mkdir(parents=True)
    (tmp_path / "wf" / ".snakemake" / "vastai" / "workflow-id").write_text("0badc0de\n")
    with Journal.for_workdir(tmp_path / "wf") as journal:
        assert journal.workflow_id == "0badc0de"
