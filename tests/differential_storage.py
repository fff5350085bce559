"""Storage-mode differential runs: the local executor is the oracle, the bucket is the tree.

Each case is laid out twice (a git repository each time). One copy runs under Snakemake's
local executor, the other under ``--executor vastai`` against the simulator; both with the
same default storage provider settings (S3 on a moto server, see ``tests/s3.py``), each
into its own bucket. What the runs leave under the prefix is then compared byte for byte,
except Snakemake's source archive (only remote executors upload one). The vastai run must
also have opened no SSH connection carrying a byte, and leave no instance alive.

The catalogue has the shape of ``tests/differential_cases.py`` (issue 13) so the two can be
merged: ``name -> {"files", "targets", "promise", "slow", ...}``, every key a field of that
module's ``Case``. A case with ``"slow": True`` runs only on demand
(``pytest -m differential_slow``).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.e2e import alive, snakemake_argv, write_workflow
from tests.test_e2e_storage import s3_env

PREFIX = "wf"
SOURCE_ARCHIVE = f"{PREFIX}/snakemake-workflow-sources."
TIMEOUT = 300.0

# A file of a few tens of MB, the same bytes on every run (so the buckets can be compared).
BIG_BYTES = 24 * 2**20
BIG_WRITER = f'''\
import random, sys
data = random.Random(19).randbytes({BIG_BYTES})
open(sys.argv[1], "wb").write(data)
'''

STORAGE_CASES: Mapping[str, Mapping[str, Any]] = {
    "directory_tree": {
        "promise": "a directory() output with nested directories and a large file reaches "
                   "the bucket and is read back whole by the next job",
        "files": {
            "Snakefile": '''\
rule all:
    input: "results/listing.txt"

rule tree:
    output: directory("results/tree")
    shell:
        "mkdir -p {output}/a/b/c {output}/empty-not-kept && "
        "echo top > {output}/top.txt && echo deep > {output}/a/b/c/deep.txt && "
        "python big.py {output}/a/big.bin"

rule listing:
    input: "results/tree"
    output: "results/listing.txt"
    shell:
        "(cd {input} && find . -type f ! -name .snakemake_timestamp | sort && "
        "sha256sum a/big.bin a/b/c/deep.txt) > {output}"
''',
            "big.py": BIG_WRITER,
        },
        "targets": ["results/listing.txt"],
        "slow": False,
        "rents": 2,
    },
    "checkpoint_directory": {
        "promise": "a checkpoint whose output is a directory() decides the rest of the DAG",
        "files": {
            "Snakefile": '''\
import os

rule all:
    input: "merged.txt"

checkpoint split:
    output: directory("parts")
    shell: "mkdir -p {output} && for i in 1 2 3; do echo part$i > {output}/p$i.txt; done"

rule upper:
    input: "parts/{i}.txt"
    output: "upper/{i}.txt"
    shell: "tr a-z A-Z < {input} > {output}"

def parts(wildcards):
    out = checkpoints.split.get().output[0]
    names = glob_wildcards(os.path.join(out, "{i}.txt")).i
    return expand("upper/{i}.txt", i=sorted(names))

rule merge:
    input: parts
    output: "merged.txt"
    shell: "cat {input} > {output}"
''',
        },
        "targets": ["merged.txt"],
        "slow": False,
        "rents": 5,
    },
    "fanout_nested": {
        "promise": "a fan-out of 12 into nested directories, gathered by one job",
        "files": {
            "Snakefile": '''\
N = [f"{i:02d}" for i in range(12)]

rule all:
    input: "out/deep/er/gathered.txt"

rule make:
    output: "out/{i}/x/y/part.txt"
    shell: "echo part-{wildcards.i} > {output}"

rule gather:
    input: expand("out/{i}/x/y/part.txt", i=N)
    output: "out/deep/er/gathered.txt"
    shell: "cat {input} > {output}"
''',
        },
        "targets": ["out/deep/er/gathered.txt"],
        "slow": True,
        "rents": 13,
    },
    "checkpoint_nested": {
        "promise": "a checkpoint's directory() with nested sample directories, two levels of "
                   "data-dependent jobs after it",
        "files": {
            "Snakefile": '''\
import os

rule all:
    input: "summary.txt"

checkpoint discover:
    output: directory("found")
    shell:
        "for s in alpha beta; do mkdir -p {output}/$s/reads && "
        "echo $s > {output}/$s/reads/r.txt; done"

rule count:
    input: "found/{s}/reads/r.txt"
    output: "counts/{s}/n.txt"
    shell: "wc -c < {input} > {output}"

def counted(wildcards):
    out = checkpoints.discover.get().output[0]
    names = glob_wildcards(os.path.join(out, "{s}/reads/r.txt")).s
    return expand("counts/{s}/n.txt", s=sorted(names))

rule summary:
    input: counted
    output: "summary.txt"
    shell: "cat {input} > {output}"
''',
        },
        "targets": ["summary.txt"],
        "slow": True,
        "rents": 4,
    },
    "group_directory": {
        "promise": "a group job whose members make and read a directory() output",
        "files": {
            "Snakefile": '''\
rule all:
    input: "g/report.txt"

rule make:
    output: directory("g/made")
    group: "g"
    shell: "mkdir -p {output}/in && echo one > {output}/in/1.txt"

rule report:
    input: "g/made"
    output: "g/report.txt"
    group: "g"
    shell: "cat {input}/in/1.txt > {output}"
''',
        },
        "targets": ["g/report.txt"],
        "slow": True,
        "rents": 1,
    },
}

FAST_STORAGE_CASES = tuple(name for name, case in STORAGE_CASES.items() if not case["slow"])
SLOW_STORAGE_CASES = tuple(name for name, case in STORAGE_CASES.items() if case["slow"])


@dataclass(frozen=True)
class BucketOutcome:
    """One run: its exit code, its output, and what it left under the prefix."""

    returncode: int
    output: str
    objects: dict[str, bytes]

    @property
    def tail(self) -> str:
        return self.output[-5000:]


@dataclass(frozen=True)
class StorageDifferential:
    """Both runs of a case, how the buckets differ, and what the simulator saw."""

    name: str
    local: BucketOutcome
    remote: BucketOutcome
    differences: list[str]
    instances: list[dict]  # ours (not foreign), from the simulator's truth
    alive_after: list[dict]

    @property
    def ssh_bytes(self) -> int:
        return sum(int(i["ssh_bytes_in"]) + int(i["ssh_bytes_out"]) for i in self.instances)

    def explain(self) -> str:
        diff = "\n  ".join(self.differences[:30]) or "(buckets equal)"
        return (f"case {self.name}: local rc {self.local.returncode}, vastai rc "
                f"{self.remote.returncode}, {len(self.instances)} rented, {self.ssh_bytes} SSH "
                f"bytes\n  {diff}\n--- local output tail:\n{self.local.tail}\n"
                f"--- vastai output tail:\n{self.remote.tail}")

    def assert_same(self, rents: int | None = None) -> None:
        """Both succeed, same objects byte for byte, no SSH, nothing left alive."""
        assert self.local.returncode == 0, self.explain()
        assert self.remote.returncode == 0, self.explain()
        assert self.local.objects, self.explain()  # an empty comparison proves nothing
        assert self.differences == [], self.explain()
        assert self.ssh_bytes == 0, self.explain()
        assert self.alive_after == [], self.explain()
        if rents is not None:
            assert len(self.instances) == rents, self.explain()


def storage_args(endpoint: str, bucket: str) -> list[str]:
    return ["--default-storage-provider", "s3", "--default-storage-prefix",
            f"s3://{bucket}/{PREFIX}", "--storage-s3-endpoint-url", endpoint]


def bucket_objects(server, bucket: str) -> dict[str, bytes]:
    """Every object under the prefix (relative key -> bytes), the source archive left out."""
    return {key[len(PREFIX) + 1:]: server.read(bucket, key) for key in server.keys(bucket)
            if key.startswith(PREFIX + "/") and not key.startswith(SOURCE_ARCHIVE)}


def compare(local: Mapping[str, bytes], remote: Mapping[str, bytes]) -> list[str]:
    """Human-readable differences between the two buckets ([] when equal)."""
    problems = []
    for key in sorted(local.keys() | remote.keys()):
        a, b = local.get(key), remote.get(key)
        if a is None:
            problems.append(f"only after vastai: {key!r}")
        elif b is None:
            problems.append(f"only after local: {key!r}")
        elif a != b:
            problems.append(f"{key!r}: contents differ ({len(a)} vs {len(b)} bytes): "
                            f"{a[:120]!r} vs {b[:120]!r}")
    return problems


def _run(workdir: Path, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)


def run_storage_case(name: str, base: Path, simulator, server) -> StorageDifferential:
    """Run catalogue case ``name`` both ways below ``base`` and compare the buckets."""
    case = STORAGE_CASES[name]
    buckets = {side: f"diff-{side}-{name.replace('_', '-')}" for side in ("local", "vastai")}
    for bucket in buckets.values():
        server.create_bucket(bucket)
    env = s3_env(simulator.api_key)
    targets = list(case["targets"])
    local_dir = write_workflow(base / "local" / "wf", dict(case["files"]),
                               track=list(case["files"]))
    remote_dir = write_workflow(base / "vastai" / "wf", dict(case["files"]),
                                track=list(case["files"]))
    local_argv = [sys.executable, "-m", "snakemake", "-c2", *targets,
                  *storage_args(server.endpoint, buckets["local"])]
    remote_argv = snakemake_argv(simulator.url, *targets,
                                 *storage_args(server.endpoint, buckets["vastai"]), jobs=4)
    outcomes = {}
    for side, workdir, argv in (("local", local_dir, local_argv),
                                ("vastai", remote_dir, remote_argv)):
        done = _run(workdir, argv, env)
        outcomes[side] = BucketOutcome(done.returncode, done.stdout + done.stderr,
                                       bucket_objects(server, buckets[side]))
    truth = simulator.truth()
    ours = [i for i in truth["instances"] if not i.get("foreign")]
    return StorageDifferential(name, outcomes["local"], outcomes["vastai"],
                               compare(outcomes["local"].objects, outcomes["vastai"].objects),
                               ours, alive(truth))
