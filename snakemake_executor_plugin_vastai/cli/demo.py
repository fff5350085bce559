"""``snakemake-vastai demo``: the whole product, free, in a minute.

Starts the bundled Vast.ai simulator, lays out a small example workflow (a git
repository with a Snakefile, a config file, a ``script:`` and inputs), runs the
real ``snakemake --executor vastai`` on it with live output, and ends with
where the outputs are, what the simulated GPUs cost, proof that no instance
was left running, and the run's timeline (an HTML page to open in a browser).
The commands it prints to try next are spelled by ``run/commands.py``, so they
run as printed from any directory.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

SNAKEFILE = '''\
configfile: "config/config.yaml"

SEEDS = config["seeds"]


rule all:
    input:
        "results/summary.txt",


rule prepare:
    input:
        "data/raw.csv",
    output:
        "results/prepared/data.csv",
    resources:
        gpu=1,
    shell:
        "tr 'a-z' 'A-Z' < {input} > {output}"


rule train:
    input:
        "results/prepared/data.csv",
    output:
        "results/models/seed{seed}/model.txt",
    params:
        epochs=config["epochs"],
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
    log:
        "logs/train/seed{seed}.log",
    script:
        "scripts/train.py"


rule summarize:
    input:
        expand("results/models/seed{seed}/model.txt", seed=SEEDS),
    output:
        "results/summary.txt",
    resources:
        gpu=1,
    shell:
        "cat {input} > {output}"
'''

TRAIN_SCRIPT = '''\
"""A stand-in for a training script: reads the data, 'trains', writes a model."""
import hashlib
import os

data = open(snakemake.input[0]).read()
seed = snakemake.wildcards.seed
digest = hashlib.sha256(f"{data}{seed}{snakemake.params.epochs}".encode()).hexdigest()[:16]
with open(snakemake.log[0], "w") as log:
    log.write(f"training seed {seed} for {snakemake.params.epochs} epochs on "
              f"{os.environ.get('HOSTNAME', 'a simulated GPU')}\\n")
with open(snakemake.output[0], "w") as out:
    out.write(f"seed={seed} model={digest}\\n")
'''

CONFIG = "seeds: [1, 2, 3, 4]\nepochs: 3\n"
RAW = "id,value\na,1\nb,2\nc,3\n"


def lay_out_workflow(root: Path) -> Path:
    """Write the example workflow into ``root`` and make it a git repository."""
    root.mkdir(parents=True, exist_ok=True)
    files = {
        "Snakefile": SNAKEFILE,
        "scripts/train.py": TRAIN_SCRIPT,
        "config/config.yaml": CONFIG,
        "data/raw.csv": RAW,
    }
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    git = ["git", "-c", "user.name=demo", "-c", "user.email=demo@example.invalid"]
    subprocess.run([*git, "init", "-q"], cwd=root, check=True)
    subprocess.run([*git, "add", "Snakefile", "scripts", "config"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "example workflow"], cwd=root, check=True)
    return root


def snakemake_command(url: str, jobs: int = 4, extra: list[str] | None = None) -> list[str]:
    """The command a user would type, aimed at the simulator."""
    return [sys.executable, "-m", "snakemake", "--executor", "vastai", "--jobs", str(jobs),
            "--retries", "1", "--vastai-api-url", url, "--vastai-status-interval", "0.3",
            *(extra or [])]


def main(argv: list[str] | None = None) -> int:
    import argparse

    from ..simulator.server import SimConfig, Simulator

    parser = argparse.ArgumentParser(prog="snakemake-vastai demo",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("directory", nargs="?", help="where to lay out the example workflow "
                        "(default: a new temporary directory)")
    parser.add_argument("--jobs", type=int, default=4)
    args = parser.parse_args(argv)
    root = Path(args.directory or tempfile.mkdtemp(prefix="vastai-demo-")).resolve()
    if (root / "Snakefile").exists():
        print(f"{root} already holds a Snakefile; choose an empty directory", file=sys.stderr)
        return 2
    lay_out_workflow(root)
    print(f"Example workflow laid out in {root}")
    with Simulator(SimConfig(boot_delay=0.5)) as sim:
        sim.start()
        print(f"Simulated Vast.ai running at {sim.url}\n")
        env = {**os.environ, "VAST_API_KEY": sim.api_key}
        command = snakemake_command(sim.url, args.jobs)
        print("Running: " + " ".join(["snakemake", *command[3:]]) + "\n", flush=True)
        code = subprocess.run(command, cwd=root, env=env).returncode
        truth = sim.truth()
    alive = truth["alive_count"]
    dollars = sum(i["billed_dollars"] for i in truth["instances"])
    seconds = sum(i["billed_seconds"] for i in truth["instances"])
    print()
    print(textwrap.dedent(f"""\
        Outputs:   {root / 'results'}
        Job logs:  {root / '.snakemake/auxiliary/vastai-logs'}
        Instances: {truth['created_count']} rented, {alive} still alive
        Billed:    {seconds:.1f} instance-seconds, ${dollars:.5f} (simulated)"""))
    timeline = write_timeline(root)
    if timeline is not None:
        print(f"Timeline:  {timeline}  (open it in a browser)")
    print("\nTry next (each runs as printed, from any directory):")
    for line in next_commands(root):
        print(f"  {line}")
    return code if alive == 0 else 1


def next_commands(root: Path) -> list[str]:
    """The journal commands worth a look after the demo, aimed at its journal."""
    from ..journal.store import RELATIVE_PATH
    from ..run.commands import own_command

    journal = f"{own_command()} journal --journal {shlex.quote(str(root / RELATIVE_PATH))}"
    return [f"{journal} runs", f"{journal} jobs", f"{journal} cost"]


def write_timeline(root: Path) -> Path | None:
    """The run's timeline page beside its journal; None when no run was journaled."""
    from ..journal.store import RELATIVE_PATH, Journal
    from . import timeline

    path = root / RELATIVE_PATH
    if not path.is_file():
        return None
    with Journal(path) as journal:
        run_id = journal.latest_run_id()
        if run_id is None:
            return None
        view = timeline.build(journal, run_id)
        return timeline.write_html(view, timeline.default_path(journal, run_id))
