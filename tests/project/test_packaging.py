"""What ``uv build`` produces: a wheel with the plugin and the simulator and nothing else.

The contents check runs everywhere (building the wheel takes about a second).
Installing the wheel and the sdist into fresh virtual environments and running
the demo from each takes minutes and downloads the dependencies, so it runs on
demand: ``SNAKEMAKE_VASTAI_PACKAGING=1 uv run --no-sync python -m pytest
tests/project/test_packaging.py -m packaging``.
"""

from __future__ import annotations

import email
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import snakemake_executor_plugin_vastai as plugin

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "snakemake_executor_plugin_vastai"
TOOLING = {f"{PACKAGE}/cli/statechart.py"}  # writes statecharts/ of a checkout
UV = shutil.which("uv")

pytestmark = pytest.mark.skipif(UV is None, reason="needs uv on PATH (tests/run.sh installs it)")


def build(kind: str, out: Path) -> Path:
    """``uv build --wheel`` or ``--sdist`` of this checkout into ``out``."""
    done = subprocess.run([UV, "build", f"--{kind}", "--out-dir", str(out), str(REPO)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (artifact,) = out.glob("*.whl" if kind == "wheel" else "*.tar.gz")
    return artifact


def checkout_modules() -> set[str]:
    """Every module of the package in this checkout, as wheel paths."""
    root = REPO / PACKAGE
    return {f"{PACKAGE}/{p.relative_to(root).as_posix()}" for p in root.rglob("*.py")}


def test_the_wheel_holds_the_plugin_and_the_simulator_and_no_tests_benchmarks_or_tooling(
        tmp_path):
    wheel = build("wheel", tmp_path)
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        dist_info = f"{PACKAGE}-{plugin.__version__}.dist-info"
        metadata = email.message_from_bytes(zf.read(f"{dist_info}/METADATA"))
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
    code = {n for n in names if not n.startswith(dist_info + "/")}

    assert code == checkout_modules() - TOOLING  # every module but the tooling, nothing else
    assert all(n.startswith(PACKAGE + "/") for n in code)
    for unwanted in ("tests/", "benchmarks/", "statecharts/", ".ci/", "__pycache__", ".pyc"):
        assert not any(unwanted in n for n in names), unwanted
    simulator = {n for n in code if n.startswith(f"{PACKAGE}/simulator/")}
    assert {f"{PACKAGE}/simulator/{m}.py" for m in ("server", "api", "sshd", "instances",
                                                     "market", "cli")} <= simulator
    assert f"{PACKAGE}/cli/demo.py" in code

    assert metadata["Name"] == "snakemake-executor-plugin-vastai"
    assert metadata["Version"] == plugin.__version__
    assert "simulator" in metadata.get_all("Provides-Extra")
    simulator_deps = [r for r in metadata.get_all("Requires-Dist") if "simulator" in r]
    assert any(r.startswith("asyncssh") for r in simulator_deps), simulator_deps
    # the console script: `snakemake-vastai COMMAND` is `python -m snakemake_executor_plugin_vastai`
    scripts = entry_points.split("[console_scripts]", 1)[1].split("[", 1)[0].split()
    assert scripts[:3] == ["snakemake-vastai", "=", f"{PACKAGE}.cli.main:main"]


def test_the_version_is_above_the_published_0_1_4_and_agrees_everywhere():
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'\nversion = "{plugin.__version__}"\n' in pyproject
    assert tuple(int(x) for x in plugin.__version__.split(".")[:3]) > (0, 1, 4)
    assert f"## {plugin.__version__}" in (REPO / "CHANGELOG.md").read_text()


def test_the_statechart_command_says_it_needs_a_checkout_when_the_tool_is_absent(
        monkeypatch, capsys):
    from snakemake_executor_plugin_vastai.cli import main as cli

    monkeypatch.setitem(sys.modules, f"{PACKAGE}.cli.statechart", None)  # as in the wheel
    assert cli.main(["statechart", "--check"]) == 2
    assert "source checkout" in capsys.readouterr().err


DEMO_TIMEOUT = 600


def install_and_run_demo(artifact: Path, venv: Path, demo_dir: Path) -> str:
    """A fresh venv with ``artifact[simulator]`` installed; the demo run from outside the
    checkout, so the installed package (not this one) is what runs."""
    subprocess.run([UV, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True,
                   timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([UV, "pip", "install", "--quiet", "--python", str(python),
                    f"{PACKAGE}[simulator] @ {artifact.as_uri()}"],
                   check=True, timeout=DEMO_TIMEOUT)
    env = {k: v for k, v in os.environ.items()
           if k not in ("VAST_API_KEY", "SNAKEMAKE_VASTAI_API_KEY", "VAST_URL", "PYTHONPATH",
                        "VIRTUAL_ENV")}
    where = subprocess.run([str(python), "-c", f"import {PACKAGE} as p; print(p.__file__)"],
                           cwd=venv, capture_output=True, text=True, env=env, check=True)
    assert str(venv) in where.stdout, where.stdout
    script = python.parent / "snakemake-vastai"  # the console script the package declares
    done = subprocess.run([str(script), "demo", str(demo_dir)], cwd=venv,
                          capture_output=True, text=True, env=env, timeout=DEMO_TIMEOUT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.mark.packaging
@pytest.mark.timeout(1800)
@pytest.mark.skipif(os.environ.get("SNAKEMAKE_VASTAI_PACKAGING") != "1",
                    reason="slow, downloads dependencies: set SNAKEMAKE_VASTAI_PACKAGING=1")
@pytest.mark.parametrize("kind", ["wheel", "sdist"])
def test_the_built_package_installs_in_a_fresh_venv_and_runs_the_demo(tmp_path, kind):
    artifact = build(kind, tmp_path / "dist")
    out = install_and_run_demo(artifact, tmp_path / "venv", tmp_path / "demo")
    assert "still alive" in out and ", 0 still alive" in out, out[-2000:]
    assert (tmp_path / "demo" / "results" / "summary.txt").exists()
    assert list((tmp_path / "demo" / ".snakemake" / "vastai").glob("timeline-*.html"))
