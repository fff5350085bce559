"""The resume fingerprint: every part that decides a job's result changes it.

The objects stand in for Snakemake's job and rule with the attributes the
fingerprint reads; tests/e2e/test_e2e_safety.py checks the same end to end.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

from snakemake_executor_plugin_vastai.run import fingerprint


def run_block(x):  # a run: block as Snakemake compiles it: a plain function
    return x + 1


def other_run_block(x):
    return x + 2


def make_job(tmp_path: Path, **over):
    rule = SimpleNamespace(name="score", script=over.pop("script", "scripts/score.py"),
                           notebook=None, wrapper=None, run_func=over.pop("run_func", None),
                           shellcmd=None, basedir=str(tmp_path),
                           conda_env=over.pop("conda_env", None))
    job = SimpleNamespace(rule=rule, output=["out/a.txt"], input=["data/in.txt"],
                          params=over.pop("params", {"factor": 3}),
                          resources=over.pop("resources", {"gpu": 1, "mem_mb": 1000,
                                                           "_cores": 4, "tmpdir": "/tmp/x"}),
                          threads=over.pop("threads", 1), container_img_url=None,
                          shellcmd=over.pop("shellcmd", None), is_group=lambda: False)
    assert not over
    return job


def parts(tmp_path: Path, image: str = "img", **over) -> dict[str, str]:
    return fingerprint.job_parts(make_job(tmp_path, **over), tmp_path, image)


def setup(tmp_path: Path) -> None:
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts/score.py").write_text("print('v1')\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data/in.txt").write_text("hello\n")


def test_the_same_job_has_the_same_fingerprint(tmp_path):
    setup(tmp_path)
    assert parts(tmp_path) == parts(tmp_path)
    assert len(fingerprint.combine(parts(tmp_path))) == 32


def test_a_changed_script_changes_only_the_code_part(tmp_path):
    setup(tmp_path)
    before = parts(tmp_path)
    (tmp_path / "scripts/score.py").write_text("print('v2')\n")
    after = parts(tmp_path)
    assert fingerprint.changed(before, after) == ["script or run: code"]
    assert fingerprint.combine(before) != fingerprint.combine(after)


def test_run_blocks_params_resources_threads_image_and_conda_count(tmp_path):
    setup(tmp_path)
    (tmp_path / "env.yaml").write_text("dependencies: [python]\n")
    base = parts(tmp_path, script=None, run_func=run_block, conda_env="env.yaml")
    cases = {
        "script or run: code": dict(run_func=other_run_block, conda_env="env.yaml"),
        "params": dict(run_func=run_block, conda_env="env.yaml", params={"factor": 4}),
        "resources": dict(run_func=run_block, conda_env="env.yaml",
                          resources={"gpu": 2, "mem_mb": 1000}),
    }
    for what, over in cases.items():
        assert what in fingerprint.changed(base, parts(tmp_path, script=None, **over)), what
    assert "software environment" in fingerprint.changed(
        base, parts(tmp_path, image="other", script=None, run_func=run_block,
                    conda_env="env.yaml"))
    (tmp_path / "env.yaml").write_text("dependencies: [python, numpy]\n")
    assert fingerprint.changed(
        base, parts(tmp_path, script=None, run_func=run_block, conda_env="env.yaml")
    ) == ["software environment"]


def test_volatile_resources_do_not_count(tmp_path):
    setup(tmp_path)
    base = parts(tmp_path, resources={"gpu": 1, "_cores": 4, "tmpdir": "/tmp/a"})
    assert base == parts(tmp_path, resources={"gpu": 1, "_cores": 8, "tmpdir": "/tmp/b"})


def test_an_input_rewritten_with_the_same_size_and_mtime_still_counts(tmp_path):
    setup(tmp_path)
    target = tmp_path / "data/in.txt"
    stat = target.stat()
    before = parts(tmp_path)
    target.write_text("HELLO\n")  # same size
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # mtime put back
    assert fingerprint.changed(before, parts(tmp_path)) == ["input files"]


def test_the_formatted_shell_command_counts(tmp_path):
    setup(tmp_path)
    base = parts(tmp_path, script=None, shellcmd="echo 1 > out/a.txt")
    assert fingerprint.changed(
        base, parts(tmp_path, script=None, shellcmd="echo 2 > out/a.txt")) == ["shell command"]


def test_the_content_of_any_shipped_source_file_changes_the_fingerprint(tmp_path):
    """A shell: rule that runs ``python train.py`` ships train.py in the source archive: its
    content is part of what the job runs, whatever the command line says."""
    (tmp_path / "train.py").write_text("print('old')\n")
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "util.py").write_text("X = 1\n")

    def digest() -> str:
        workflow = SimpleNamespace(dag=SimpleNamespace(
            get_sources=lambda: {"train.py", "lib/util.py"}))
        return fingerprint.shipped_sources_digest(workflow, tmp_path)

    before = digest()
    assert digest() == before  # stable for the same content
    (tmp_path / "lib" / "util.py").write_text("X = 2\n")
    after = digest()
    assert after != before
    assert fingerprint.changed({"sources": before}, {"sources": after}) == [
        "shipped source files"]
