"""Scoped shipping: bytes uploaded and upload time with and without ``deploy``.

``python benchmarks/deploy_scope.py [--repeats 5] [--files 2000] [--json PATH]``

A git repository of ``--files`` tracked files (a monorepo: source-like text of
1-8 KiB each, plus the workflow) where the one rule needs three of them
(``tools/fit.py``, which imports ``tools/util.py`` and reads ``conf/params.json``).
The same workflow runs through the real ``snakemake --executor vastai`` CLI
against the simulator (in its own process) twice per repeat, side by side and
in alternating order: once as is (every tracked file ships, the default) and
once with ``resources: deploy="tools/fit.py,tools/util.py,conf/params.json"``.
Each run starts from a fresh clone, so both build their source archive.

Per run, from independent witnesses:

- ``bytes up``: what the journal's ``uploaded`` transition recorded for the job
  (the compressed source archive plus the declared inputs);
- ``ssh bytes in``: what the simulated instance's SSH server received (the above
  plus SSH framing and the control commands);
- ``upload s``: journal ``booted`` -> ``uploaded``: building Snakemake's
  ``tar.xz`` of the sources (done once per run, by the first upload) plus
  moving it and the inputs;
- ``run s``: the whole ``snakemake`` command, start to exit.

It prints medians with [min..max] over the repeats and the ratio scoped/whole,
and writes the raw numbers as JSON (default ``benchmarks/results/deploy_scope.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.simproc import SimProcess  # noqa: E402
from benchmarks.timeline import journal_jobs  # noqa: E402

DEPLOY = "tools/fit.py,tools/util.py,conf/params.json"
RUN_TIMEOUT = 600.0
DEFAULT_JSON = REPO / "benchmarks" / "results" / "deploy_scope.json"
WORDS = (
    "def", "class", "return", "import", "self", "value", "index", "batch", "model", "layer",
    "tensor", "loss", "grad", "config", "path", "read", "write", "open", "data", "train",
    "eval", "score", "merge", "split", "token", "shard", "None", "True", "False", "for",
    "while", "if", "else", "try", "except", "with", "as", "yield", "lambda"
)

SNAKEFILE = """\
rule fit:
    input: "data/train.csv"
    output: "out/model.txt"
    resources:
        gpu=1,{deploy}
    shell: "python tools/fit.py {{input}} {{output}}"
"""
FIT_PY = """\
import json
import sys

sys.path.insert(0, "tools")
from util import total

params = json.load(open("conf/params.json"))
rows = open(sys.argv[1]).read().split()
open(sys.argv[2], "w").write(f"{total(rows) * params['scale']}\\n")
"""


def source_text(rng: random.Random, size: int) -> str:
    """Code-like text: compresses like real sources do (about 4-6x with xz)."""
    lines, length = [], 0
    while length < size:
        line = "    " * rng.randint(0, 3) + " ".join(rng.choices(WORDS, k=rng.randint(3, 12)))
        lines.append(line)
        length += len(line) + 1
    return "\n".join(lines)[:size] + "\n"


def make_repository(root: Path, files: int, seed: int = 7) -> int:
    """The monorepo: ``files`` tracked files in total, three of them needed. Returns bytes."""
    rng = random.Random(seed)
    needed = {
        "tools/fit.py": FIT_PY,
        "tools/util.py": "def total(rows):\n    return sum(int(r) for r in rows)\n",
        "conf/params.json": json.dumps({"scale": 3}) + "\n",
        "data/train.csv": "1\n2\n3\n",
        "Snakefile": SNAKEFILE.format(deploy=""),
    }
    for rel, text in needed.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    for i in range(files - len(needed)):
        path = root / f"pkg{i % 40:02d}" / f"sub{i % 7}" / f"module_{i:04d}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source_text(rng, rng.randint(1024, 8192)))
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "monorepo")
    listed = git(root, "ls-files").stdout.split()
    assert len(listed) == files, len(listed)
    return sum((root / f).stat().st_size for f in listed)


def git(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-c", "user.name=b", "-c", "user.email=b@example.invalid",
                           *args], cwd=cwd, check=True, capture_output=True, text=True)


def fresh_clone(base: Path, target: Path, scoped: bool) -> Path:
    git(base.parent, "clone", "-q", str(base), str(target))
    shutil.copy(base / "data" / "train.csv", target / "data" / "train.csv")
    if scoped:
        deploy = f'\n        deploy="{DEPLOY}",'
        (target / "Snakefile").write_text(SNAKEFILE.format(deploy=deploy))
        git(target, "commit", "-q", "-am", "deploy only what fit needs")
    return target


def run_one(sim: SimProcess, workdir: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("VAST_API_KEY", "SNAKEMAKE_VASTAI_API_KEY", "VAST_URL")}
    env["VAST_API_KEY"] = sim.api_key
    argv = [sys.executable, "-m", "snakemake", "--executor", "vastai", "--jobs", "1",
            "--vastai-api-url", sim.url, "--vastai-status-interval", "0.2"]
    start = time.monotonic()
    done = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT)
    run_seconds = time.monotonic() - start
    if done.returncode != 0 or (workdir / "out" / "model.txt").read_text() != "18\n":
        raise RuntimeError(f"run in {workdir} failed: {done.stderr[-2000:]}")
    (job,) = journal_jobs(workdir)
    at = {t["trigger"]: t for t in job["transitions"]}
    detail = json.loads(at["uploaded"]["detail"] or "{}")
    instance = next(i for i in sim.truth()["instances"] if i["id"] == job["instance_id"])
    (archive,) = (workdir / ".snakemake" / "vastai").glob("sources-*.tar.xz")
    return {"bytes_up": int(detail.get("bytes", 0)), "ssh_bytes_in": instance["ssh_bytes_in"],
            "upload_s": at["uploaded"]["at"] - at["booted"]["at"], "run_s": run_seconds,
            "archive_bytes": archive.stat().st_size}


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def show(value: dict[str, float], unit: str) -> str:
    if unit == "B":
        return (f"{value['median'] / 1e3:,.1f} kB [{value['min'] / 1e3:,.1f}.."
                f"{value['max'] / 1e3:,.1f}]")
    return f"{value['median']:.2f} s [{value['min']:.2f}..{value['max']:.2f}]"


METRICS = (("bytes_up", "B"), ("ssh_bytes_in", "B"), ("archive_bytes", "B"),
           ("upload_s", "s"), ("run_s", "s"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/deploy_scope.py",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="vastai-deploy-bench-"))
    try:
        base = work / "base"
        base.mkdir()
        tracked = make_repository(base, args.files)
        runs: dict[str, list[dict[str, Any]]] = {"whole": [], "scoped": []}
        with SimProcess(work / "sim", job_priority="normal") as sim:
            for repeat in range(args.repeats):
                order = ("whole", "scoped") if repeat % 2 == 0 else ("scoped", "whole")
                for name in order:
                    wf = fresh_clone(base, work / f"{name}-{repeat}", name == "scoped")
                    runs[name].append(run_one(sim, wf))
                    shutil.rmtree(wf)
        figures = {name: {m: summary([r[m] for r in rows]) for m, _ in METRICS}
                   for name, rows in runs.items()}
        print(f"repository: {args.files} tracked files, {tracked / 1e6:.1f} MB; the rule "
              f"needs 3 ({DEPLOY}); {args.repeats} repeats each, alternating order")
        print(f"{'metric':<14} {'whole tree':>28} {'deploy (3 files)':>28} {'ratio':>8}")
        for metric, unit in METRICS:
            whole, scoped = figures["whole"][metric], figures["scoped"][metric]
            ratio = whole["median"] / scoped["median"] if scoped["median"] else float("inf")
            print(f"{metric:<14} {show(whole, unit):>28} {show(scoped, unit):>28} "
                  f"{ratio:>7.1f}x")
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"files": args.files, "tracked_bytes": tracked,
                                         "repeats": args.repeats, "figures": figures,
                                         "runs": runs}, indent=2) + "\n")
        print(f"raw numbers: {args.json}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
