"""What travels to an instance and back, and the job fingerprint."""

from __future__ import annotations

import subprocess
import sys
import tarfile

import pytest

from snakemake_executor_plugin_vastai.workflow import payload


class IOFile(str):
    """Stands in for Snakemake's IOFile: a str with an is_directory flag."""

    def __new__(cls, value: str, is_directory: bool = False):
        obj = super().__new__(cls, value)
        obj.is_directory = is_directory
        return obj


def test_shipment_lists_archive_and_inputs_relative_to_workdir(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("aaa")
    (tmp_path / "b.txt").write_text("bb")
    archive = tmp_path / "src.tar.xz"
    archive.write_bytes(b"12345")
    ship = payload.shipment(["data/a.txt", str(tmp_path / "b.txt"), "data/a.txt"], tmp_path,
                            "r", archive)
    assert [rel for _, rel in ship.files] == [payload.SOURCES_MEMBER, "data/a.txt", "b.txt"]
    assert ship.total_bytes == 10


@pytest.mark.parametrize("bad", ["../outside.txt", "/etc/passwd"])
def test_inputs_outside_the_workdir_are_refused_with_the_rule_named(tmp_path, bad):
    with pytest.raises(payload.PayloadError, match=r"rule train: input .* outside"):
        payload.shipment([bad], tmp_path / "wf", "train", None)


def test_missing_input_is_named(tmp_path):
    with pytest.raises(payload.PayloadError, match=r"nope\.txt"):
        payload.shipment(["nope.txt"], tmp_path, "r", None)


def test_homecoming_splits_files_and_directories_and_skips_outputs_on_failure(tmp_path):
    outputs = [IOFile("res/out.txt"), IOFile("res/tree", is_directory=True)]
    logs = [IOFile("logs/r.log")]
    ok = payload.homecoming(outputs, logs, "bench/r.tsv", tmp_path, "r", succeeded=True)
    assert ok.files == ["res/out.txt", "logs/r.log", "bench/r.tsv"]
    assert ok.directories == ["res/tree"]
    failed = payload.homecoming(outputs, logs, "bench/r.tsv", tmp_path, "r", succeeded=False)
    assert failed.paths == ["logs/r.log"]


def test_forwarded_environment_keeps_declared_and_credentials_unless_opted_out():
    environ = {"AWS_ACCESS_KEY_ID": "AKIA", "AZURE_STORAGE_KEY": "az", "HOME": "/root"}
    env = payload.forwarded_environment(environ, {"HF_TOKEN": "hf"}, forward_credentials=True)
    assert env == {"HF_TOKEN": "hf", "AWS_ACCESS_KEY_ID": "AKIA", "AZURE_STORAGE_KEY": "az"}
    env = payload.forwarded_environment(environ, {"HF_TOKEN": "hf"}, forward_credentials=False)
    assert env == {"HF_TOKEN": "hf"}


def test_job_script_unpacks_sources_and_runs_the_command(tmp_path):
    """Run the generated script for real with sh, in a directory like the remote one."""
    src = tmp_path / "src"
    (src / "scripts").mkdir(parents=True)
    (src / "scripts" / "x.py").write_text("print('hi')\n")
    work = tmp_path / "remote"
    (work / ".vastai").mkdir(parents=True)
    with tarfile.open(work / payload.SOURCES_MEMBER, "w:xz") as tar:
        tar.add(src / "scripts", arcname="scripts")
    script = payload.job_script("python scripts/x.py; exit 7", "9.27.1")
    (work / "job.sh").write_text(script)
    bindir = str(__import__("pathlib").Path(sys.executable).parent)
    done = subprocess.run(["sh", "job.sh"], cwd=work, capture_output=True, text=True,
                          env={"PATH": f"{bindir}:/usr/bin:/bin"})
    assert done.returncode == 7
    assert done.stdout == "hi\n"


def test_job_script_refuses_odd_versions_in_the_pin():
    assert "pip install --quiet snakemake==9.27.1\n" in payload.job_script("true", "9.27.1")
    script = payload.job_script("true", "1.0; rm -rf /")
    assert "rm -rf" not in script
    assert "pip install --quiet snakemake\n" in script
