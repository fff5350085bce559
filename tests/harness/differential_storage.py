"""Storage-mode differential runs: the local executor is the oracle, the bucket is the tree.

Each case is laid out twice (a git repository each time, unless ``git=False``) and started
as the case says (``differential.launch``; ``via_api``: through the Python API with the
same storage settings). One copy runs under Snakemake's local executor, the other under
``--executor vastai`` against the simulator; both with the same default storage provider
settings (S3 on a moto server, see ``tests/harness/s3.py``), each
into its own bucket. What the runs leave under the prefix is then compared byte for byte,
except Snakemake's source archive (only remote executors upload one). The vastai run must
also have opened no SSH connection carrying a byte, and leave no instance alive.

The runner takes issue 13's :class:`~tests.harness.differential_cases.Case`: this module's own
catalogue (``name -> {"files", "targets", "promise", "slow", ...}``, every key a field of
``Case``) is converted by :func:`storage_case`, and issue 13's catalogue runs unchanged.
Every file of a case is also put into both buckets before the runs: with a default storage
provider, Snakemake reads every input (tracked in git or not) from the bucket, at its path
relative to the working directory (:func:`storage_key`; a ``workdir:`` directive moves it);
what the runs *produce* is what must be equal. A case with ``"slow": True`` runs only on
demand (``pytest -m differential_slow``).

Cases of issue 13 that say nothing in storage mode, or name a feature storage mode cannot
have, are listed in :data:`NOT_IN_STORAGE_MODE` with the reason (also in README.md,
"Storage mode: what works").
"""

from __future__ import annotations

import posixpath
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tests.e2e.test_e2e_storage import s3_env
from tests.harness.differential import api_argv, launch, lay_out
from tests.harness.differential_cases import CHECKPOINT, Case
from tests.harness.e2e import alive, snakemake_argv

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
        # issue 13's checkpoint workflow, run here in storage mode (and in CI)
        "files": dict(CHECKPOINT.files),
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

def storage_case(name: str, fields: Mapping[str, Any]) -> Case:
    """One entry of :data:`STORAGE_CASES` as issue 13's ``Case``."""
    return Case(name=name, **{k: tuple(v) if k == "targets" else v for k, v in fields.items()})


CASES_OF_STORAGE: Mapping[str, Case] = {name: storage_case(name, fields)
                                        for name, fields in STORAGE_CASES.items()}
FAST_STORAGE_CASES = tuple(name for name, case in CASES_OF_STORAGE.items() if not case.slow)
SLOW_STORAGE_CASES = tuple(name for name, case in CASES_OF_STORAGE.items() if case.slow)

# Issue 13's cases that do not run in storage mode, each with why (README.md repeats these).
NOT_IN_STORAGE_MODE: Mapping[str, str] = {
    "report": "--report writes report.html on this machine, not into the bucket: nothing "
              "to compare there (the report of a storage run is a local file)",
}

# Issue 13's cases that end differently in storage mode, under every executor alike: what
# changes in the case, and the message both runs must print (README.md repeats these).
STORAGE_MODE_ENDINGS: Mapping[str, tuple[dict[str, Any], str]] = {
    # Snakemake refuses --touch while building the DAG: the S3 storage plugin cannot touch.
    "touch": ({"expect_failure": True, "rents": 0}, "Touching output files is impossible"),
    # The shell reaches ref.txt as ``../ref.txt`` from inside the tree: in storage mode the
    # inputs are staged under .snakemake/storage/<bucket>/..., so the relative path misses.
    "directory_ancient": ({"expect_failure": True}, "Error in rule listing"),
    # A temp() consumed only inside its group never leaves the instance, so never reaches
    # the bucket; the local executor ignores groups and stores it (and, like every temp()
    # object here, Snakemake leaves it in the bucket after "Removing temporary output").
    "group_temp": ({"ignored": ("tmp/inner.txt",)}, ""),
}


def in_storage_mode(case: Case) -> Case:
    """Issue 13's case as storage mode runs it (see :data:`STORAGE_MODE_ENDINGS`)."""
    changes = STORAGE_MODE_ENDINGS.get(case.name, ({}, ""))[0]
    return replace(case, **changes)


# Issue 13's cases that run in CI in storage mode (at most two: the rest is on demand).
STORAGE_CI_CASES = ("odd_names", "group")


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

    case: Case
    local: BucketOutcome
    remote: BucketOutcome
    seeded: dict[str, bytes]  # what both buckets held before the runs
    differences: list[str]
    instances: list[dict]  # ours (not foreign), from the simulator's truth
    alive_after: list[dict]

    @property
    def name(self) -> str:
        return self.case.name

    @property
    def ssh_bytes(self) -> int:
        return sum(int(i["ssh_bytes_in"]) + int(i["ssh_bytes_out"]) for i in self.instances)

    @property
    def produced(self) -> dict[str, bytes]:
        """What the local run added or changed in its bucket."""
        return {k: v for k, v in self.local.objects.items() if self.seeded.get(k) != v}

    def explain(self) -> str:
        diff = "\n  ".join(self.differences[:30]) or "(buckets equal)"
        return (f"case {self.name}: local rc {self.local.returncode}, vastai rc "
                f"{self.remote.returncode}, {len(self.instances)} rented, {self.ssh_bytes} SSH "
                f"bytes\n  {diff}\n--- local output tail:\n{self.local.tail}\n"
                f"--- vastai output tail:\n{self.remote.tail}")

    def assert_same(self, rents: int | None = None) -> None:
        """Both end alike (as the case expects), same objects byte for byte, no SSH,
        nothing left alive."""
        ok = not self.case.expect_failure
        assert (self.local.returncode == 0) == ok, self.explain()
        assert (self.remote.returncode == 0) == ok, self.explain()
        if ok and self.case.rents != 0:
            assert self.produced, self.explain()  # an empty comparison proves nothing
        assert self.differences == [], self.explain()
        assert self.ssh_bytes == 0, self.explain()
        assert self.alive_after == [], self.explain()
        rents = self.case.rents if rents is None else rents
        if rents is not None:
            assert len(self.instances) == rents, self.explain()


def storage_args(endpoint: str, bucket: str) -> list[str]:
    return ["--default-storage-provider", "s3", "--default-storage-prefix",
            f"s3://{bucket}/{PREFIX}", "--storage-s3-endpoint-url", endpoint]


def bucket_objects(server, bucket: str, ignored: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Every object under the prefix (relative key -> bytes), the source archive and the
    case's ignored paths left out."""
    objects = {}
    for key in server.keys(bucket):
        rel = key[len(PREFIX) + 1:]
        if not key.startswith(PREFIX + "/") or key.startswith(SOURCE_ARCHIVE):
            continue
        if any(rel == i or rel.startswith(i + "/") for i in ignored):
            continue
        objects[rel] = server.read(bucket, key)
    return objects


def compare(case: Case, local: Mapping[str, bytes], remote: Mapping[str, bytes]) -> list[str]:
    """Human-readable differences between the two buckets ([] when equal); files the case
    names in ``fuzzy`` are compared after its normaliser."""
    problems = []
    for key in sorted(local.keys() | remote.keys()):
        a, b = local.get(key), remote.get(key)
        if a is None:
            problems.append(f"only after vastai: {key!r}")
        elif b is None:
            problems.append(f"only after local: {key!r}")
        elif case.normaliser(key)(a) != case.normaliser(key)(b):
            problems.append(f"{key!r}: contents differ ({len(a)} vs {len(b)} bytes): "
                            f"{a[:120]!r} vs {b[:120]!r}")
    return problems


def storage_key(case: Case, rel: str) -> str | None:
    """Where a file of the case (``rel``, relative to the workflow directory) lies below the
    prefix: storage paths are relative to the working directory, which a ``workdir:``
    directive moves (``case.working_dir``); None for a file outside it."""
    if not case.working_dir:
        return rel
    inside = posixpath.relpath(rel, case.working_dir)
    return None if inside == ".." or inside.startswith("../") else inside


def seed(server, bucket: str, case: Case) -> dict[str, bytes]:
    """Put every file of the case into the bucket (inputs are read from there)."""
    seeded = {}
    for rel, content in case.files.items():
        key = storage_key(case, rel)
        if key is None:
            continue
        data = content.encode() if isinstance(content, str) else content
        server.put(bucket, f"{PREFIX}/{key}", data)
        seeded[key] = data
    return seeded


def _run(workdir: Path, argv: list[str], env: dict[str, str],
         case: Case | None = None) -> subprocess.CompletedProcess:
    """One run in ``workdir``, started as ``case`` says (see ``differential.launch``)."""
    cwd, argv = launch(case, workdir, argv) if case is not None else (workdir, argv)
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)


def _run_steps(case: Case, workdir: Path, argv: list[str], storage: list[str],
               env: dict[str, str]) -> tuple[int, str]:
    """The main run, then the case's follow-up runs (plain ``snakemake``, same storage)."""
    done = _run(workdir, argv, env, case)
    for step in case.then:
        if done.returncode != 0:
            break
        done = _run(workdir, [sys.executable, "-m", "snakemake", "-c1", *step, *storage], env,
                    case)
    return done.returncode, done.stdout + done.stderr


def run_storage_case(case: Case | str, base: Path, simulator, server) -> StorageDifferential:
    """Run ``case`` (a ``Case``, or the name of one of :data:`STORAGE_CASES`) both ways
    below ``base`` and compare the buckets."""
    if isinstance(case, str):
        case = CASES_OF_STORAGE[case]
    tag = "".join(c if c.isalnum() else "-" for c in case.name.lower())
    buckets = {side: f"diff-{side}-{tag}" for side in ("local", "vastai")}
    env = s3_env(simulator.api_key)
    seeded = {}
    for bucket in buckets.values():
        server.create_bucket(bucket)
        seeded = seed(server, bucket, case)
    storage = {side: storage_args(server.endpoint, bucket) for side, bucket in buckets.items()}
    local_argv = [sys.executable, "-m", "snakemake", "-c2", *case.args, *case.local_args,
                  *case.targets, *storage["local"]]
    remote_argv = snakemake_argv(simulator.url, *case.targets, *case.args, *case.remote_args,
                                 *storage["vastai"], jobs=4)
    outcomes = {}
    for side, argv in (("local", local_argv), ("vastai", remote_argv)):
        workdir = lay_out(base / side / case.workdir_name, case)
        if case.via_api:  # issue 28: through Snakemake's Python API, same storage
            argv = api_argv(case, workdir, "local" if side == "local" else "vastai",
                            url=None if side == "local" else simulator.url,
                            storage=(f"s3://{buckets[side]}/{PREFIX}", server.endpoint))
        returncode, output = _run_steps(case, workdir, argv, storage[side], env)
        outcomes[side] = BucketOutcome(returncode, output,
                                       bucket_objects(server, buckets[side], case.ignored))
    truth = simulator.truth()
    ours = [i for i in truth["instances"] if not i.get("foreign")]
    return StorageDifferential(case, outcomes["local"], outcomes["vastai"], seeded,
                               compare(case, outcomes["local"].objects,
                                       outcomes["vastai"].objects),
                               ours, alive(truth))
