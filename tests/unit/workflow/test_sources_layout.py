"""The source archive under a moved working directory (issue 28): with ``workdir: "work"``
the Snakefile is ``../Snakefile`` and a script ``../scripts/x.py``; Snakemake's own writer
drops such paths, so the archive is rooted above the working directory and the job runs
that far below its own directory on the instance."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path
from types import SimpleNamespace

from snakemake_executor_plugin_vastai.transports.storage.setup import StorageSetup
from snakemake_executor_plugin_vastai.workflow import payload, sources
from snakemake_executor_plugin_vastai.workflow.jobspec import Workspace


def laid_out(root: Path) -> Path:
    """A workflow whose working directory ``work`` lies below its Snakefile."""
    for name, text in {"Snakefile": 'workdir: "work"\n', "scripts/x.py": "print(1)\n",
                       "scripts/helper.py": "X = 1\n", "work/config.yaml": "a: 1\n",
                       "work/data/in.txt": "input\n"}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root / "work"


def workflow_at(root: Path, configfiles: list[str] = ()) -> SimpleNamespace:
    """Snakemake's Workflow, reduced to what the layout reads: the Snakefile was loaded
    from the root, the rule's script is named relative to it."""
    rule = SimpleNamespace(script="scripts/x.py", notebook=None,
                           basedir=SimpleNamespace(join=lambda f: str(root / f)))
    return SimpleNamespace(main_snakefile=str(root / "Snakefile"),
                           included=[str(root / "Snakefile")], rules=[rule],
                           configfiles=[str(root / "work" / "config.yaml"), *configfiles],
                           dag=SimpleNamespace(jobs=[]))


def members(path: Path) -> list[str]:
    with tarfile.open(path) as archive:
        return sorted(archive.getnames())


def test_the_root_holds_the_working_directory_and_every_source(tmp_path, monkeypatch):
    workdir = laid_out(tmp_path / "wf")
    monkeypatch.chdir(workdir)
    where = sources.layout(workflow_at(tmp_path / "wf"), workdir)
    assert where.root == tmp_path / "wf"
    assert where.workdir_rel == "work"
    assert where.member("../scripts/x.py") == "scripts/x.py"
    assert where.member("config.yaml") == "work/config.yaml"


def test_without_a_directive_the_root_is_the_working_directory(tmp_path, monkeypatch):
    root = tmp_path / "wf"
    laid_out(root)
    monkeypatch.chdir(root)
    workflow = workflow_at(root)
    workflow.configfiles = []
    where = sources.layout(workflow, root)
    assert (where.root, where.workdir_rel) == (root, "")


def test_the_archive_names_sources_from_the_root_and_leaves_out_what_it_cannot_ship(
        tmp_path, monkeypatch):
    workdir = laid_out(tmp_path / "wf")
    big = tmp_path / "wf" / "scripts" / "weights.bin"
    with open(big, "wb") as f:
        f.truncate(sources.MAX_SOURCE_BYTES + 1)  # sparse: costs no disk
    monkeypatch.chdir(workdir)
    # a config file that shares nothing with the working directory but "/"
    far = "/etc/hostname" if os.path.isfile("/etc/hostname") else "/etc/passwd"
    workflow = workflow_at(tmp_path / "wf", configfiles=[far])
    warnings: list[str] = []
    sources.install(workflow, workdir, warnings.append)
    archive = tmp_path / "sources.tar.xz"
    workflow.write_source_archive(archive)
    assert members(archive) == ["Snakefile", "scripts/helper.py", "scripts/x.py",
                                "work/config.yaml"]
    assert len(warnings) == 2, warnings
    assert any("weights.bin" in w and "10 MB" in w for w in warnings)
    assert any(far in w and "outside" in w for w in warnings)
    # the root and working directory did not move up to "/" for the far file
    assert sources.layout(workflow, workdir).root == tmp_path / "wf"


def test_the_job_unpacks_its_sources_at_the_root_and_runs_in_its_working_directory(tmp_path):
    space = Workspace(workdir=tmp_path, job_command=str, declared_envvars=dict,
                      snakemake_version="9.0.0", workdir_rel="a b/work")
    assert space.remote_dir("vastai-jobs/j1") == "vastai-jobs/j1/a b/work"
    assert space.up() == "../.."
    script = payload.job_script("snakemake --snakefile ../../Snakefile", "9.0.0",
                                unpack_to=space.up())
    assert "t.extractall('../..', filter='data')" in script
    plain = Workspace(workdir=tmp_path, job_command=str, declared_envvars=dict,
                      snakemake_version="9.0.0")
    assert (plain.remote_dir("vastai-job"), plain.up()) == ("vastai-job", ".")


def test_storage_jobs_step_into_the_working_directory_after_the_sources_unpack():
    setup = StorageSetup(mode=None, deploy_command="python -m snakemake --deploy-sources q c",
                         outputs=None, checkpoint_fetch=lambda job: "fetch checkpoints",
                         workdir_rel="my work")
    assert setup.prepare_command(None).splitlines() == [
        "python -m snakemake --deploy-sources q c",
        "mkdir -p -- 'my work' && cd -- 'my work'",
        "fetch checkpoints",
    ]
    plain = StorageSetup(mode=None, deploy_command="deploy", outputs=None)
    assert plain.prepare_command(None) == "deploy"
