"""Helpers for end-to-end tests: the real ``snakemake`` CLI against the simulator."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from snakemake_executor_plugin_vastai.cli.demo import lay_out_workflow

# A workflow for the acceptance tests: fan-out of 8, nested output
# directories, a directory() output, a script: file and a config file.
FANOUT_SNAKEFILE = '''\
configfile: "config/config.yaml"

SAMPLES = [f"s{i}" for i in range(config["n"])]


rule all:
    input:
        "results/final/report.txt",
        "results/tree",


rule split:
    input:
        "data/input.txt",
    output:
        "results/parts/{sample}/part.txt",
    resources:
        gpu=1,
    shell:
        "mkdir -p $(dirname {output}) && (cat {input}; echo {wildcards.sample}) > {output}"


rule score:
    input:
        "results/parts/{sample}/part.txt",
    output:
        "results/scores/deep/{sample}/score.txt",
    params:
        factor=config["factor"],
    log:
        "logs/score/{sample}.log",
    script:
        "scripts/score.py"


rule tree:
    input:
        expand("results/scores/deep/{sample}/score.txt", sample=SAMPLES[:2]),
    output:
        directory("results/tree"),
    shell:
        "mkdir -p {output}/a/b && cp {input[0]} {output}/a/b/first.txt && "
        "echo tree > {output}/top.txt"


rule report:
    input:
        expand("results/scores/deep/{sample}/score.txt", sample=SAMPLES),
    output:
        "results/final/report.txt",
    shell:
        "cat {input} > {output}"
'''

SCORE_SCRIPT = '''\
text = open(snakemake.input[0]).read()
with open(snakemake.log[0], "w") as log:
    log.write("scoring " + snakemake.wildcards.sample + "\\n")
with open(snakemake.output[0], "w") as out:
    out.write(f"{snakemake.wildcards.sample} {len(text) * snakemake.params.factor}\\n")
'''


def fanout_workflow(root: Path, n: int = 8, factor: int = 3) -> Path:
    """Write the fan-out workflow into ``root`` as a git repository."""
    files = {
        "Snakefile": FANOUT_SNAKEFILE,
        "scripts/score.py": SCORE_SCRIPT,
        "config/config.yaml": f"n: {n}\nfactor: {factor}\n",
        "data/input.txt": "hello\n",
    }
    return write_workflow(root, files, track=["Snakefile", "scripts", "config"])


def write_workflow(root: Path, files: dict[str, str], track: list[str] | None = None) -> Path:
    """Lay out files and commit the tracked ones (git is how sources are shipped)."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text) if rel != "Snakefile" else text)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "init", "-q"], cwd=root, check=True)
    subprocess.run([*git, "add", *(track or ["Snakefile"])], cwd=root, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "wf"], cwd=root, check=True)
    return root


def demo_workflow(root: Path) -> Path:
    return lay_out_workflow(root)


# VASTAI_TEST_REUSE=1 runs every end-to-end test with warm instances (the plugin's default)
REUSE_ENV = "VASTAI_TEST_REUSE"


def snakemake_argv(url: str, *extra: str, jobs: int = 8, reuse: bool = False) -> list[str]:
    """The CLI against the simulator. Warm instances are off unless ``reuse`` (or
    VASTAI_TEST_REUSE=1): most tests pin one instance per job (their instance counts and
    crash points assume it); the reuse tests (test_e2e_reuse.py) turn them on."""
    reuse = reuse or os.environ.get(REUSE_ENV) == "1"
    warm = [] if reuse or "--vastai-no-reuse" in extra else ["--vastai-no-reuse"]
    return [sys.executable, "-m", "snakemake", "--executor", "vastai", "--jobs", str(jobs),
            "--vastai-api-url", url, "--vastai-status-interval", "0.2",
            "--vastai-offline-grace", "5", *warm, *extra]


def sim_env(api_key: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("VAST_API_KEY", "SNAKEMAKE_VASTAI_API_KEY", "VAST_URL")}
    if api_key is not None:
        env["VAST_API_KEY"] = api_key
    env.update(extra)
    return env


def run_snakemake(workdir: Path, url: str, api_key: str | None, *extra: str, jobs: int = 8,
                  timeout: float = 240, env: dict | None = None,
                  reuse: bool = False) -> subprocess.CompletedProcess:
    """Run the snakemake CLI to completion; output captured as text."""
    return subprocess.run(snakemake_argv(url, *extra, jobs=jobs, reuse=reuse), cwd=workdir,
                          env=env or sim_env(api_key), capture_output=True, text=True,
                          timeout=timeout)


def start_snakemake(workdir: Path, url: str, api_key: str, *extra: str,
                    jobs: int = 8, reuse: bool = False) -> subprocess.Popen:
    """Start the snakemake CLI in the background (for signal tests)."""
    return subprocess.Popen(snakemake_argv(url, *extra, jobs=jobs, reuse=reuse), cwd=workdir,
                            env=sim_env(api_key), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def interrupt(proc: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 120) -> str:
    """Send ``sig`` to snakemake only (not its group) and collect its output."""
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=timeout)
    return out


def alive(truth: dict) -> list[dict]:
    return [i for i in truth["instances"] if i["alive"] and not i.get("foreign")]
