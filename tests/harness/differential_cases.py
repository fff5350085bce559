"""The catalogue of differential workflows, as data.

Each :class:`Case` is a small workflow (a dict of files) plus the command-line words both
runs share. ``tests/harness/differential.py`` runs a case under the local executor and under
``--executor vastai`` and compares the trees; any other mode (storage mode, say) can run
the same catalogue with its own argv. A case marked ``slow`` runs only on demand
(``pytest -m differential_slow``); the others run in CI.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


def _same(data: bytes) -> bytes:
    return data


def _benchmark(data: bytes) -> bytes:
    """Benchmark files hold timings: compare the header and the shape of each row."""
    lines = data.decode("utf-8", "replace").splitlines()
    return "\n".join([lines[0], *(f"{len(line.split(chr(9)))} columns" for line in lines[1:])]
                     ).encode() if lines else b""


def _exists(_data: bytes) -> bytes:
    """Files whose content carries times and paths (a report): presence is what counts."""
    return b""


NORMALISERS: Mapping[str, Callable[[bytes], bytes]] = MappingProxyType({
    "same": _same, "benchmark": _benchmark, "exists": _exists,
})


@dataclass(frozen=True)
class Case:
    """One workflow, run both ways. Paths are relative to the workflow directory."""

    name: str
    files: Mapping[str, str | bytes]
    promise: str  # what the case shows, one line
    untracked: tuple[str, ...] = ()  # files left out of git (shipped as declared inputs)
    targets: tuple[str, ...] = ()
    args: tuple[str, ...] = ()  # for both runs
    local_args: tuple[str, ...] = ()
    remote_args: tuple[str, ...] = ()
    then: tuple[tuple[str, ...], ...] = ()  # follow-up runs with the same executor
    expect_failure: bool = False
    fuzzy: Mapping[str, str] = field(default_factory=dict)  # glob -> NORMALISERS key
    ignored: tuple[str, ...] = ()  # paths left out of the comparison
    workdir_name: str = "wf"
    commit: bool = True
    git: bool = True  # False: the workflow directory is no git repository at all
    # How the run starts (issue 28): in the workflow directory (the default); in its parent
    # with --directory <workdir_name> --snakefile <workdir_name>/Snakefile (from_parent);
    # through Snakemake's Python API with workdir= from the parent (via_api).
    from_parent: bool = False
    via_api: bool = False
    working_dir: str = ""  # a workdir: directive's directory, relative to the workflow's
    slow: bool = False
    rents: int | None = None  # instances the vastai run must create (None: not checked)

    def is_tracked(self, rel: str) -> bool:
        return rel not in self.untracked

    def normaliser(self, rel: str) -> Callable[[bytes], bytes]:
        for pattern, name in self.fuzzy.items():
            if fnmatch.fnmatchcase(rel, pattern):
                return NORMALISERS[name]
        return _same


# -- the workflows ------------------------------------------------------------------------
CHAIN = Case(
    name="chain",
    promise="a script:, a config file, params and a two-step chain",
    files={
        "Snakefile": '''\
configfile: "config.yaml"

rule all:
    input: "out/summary.txt"

rule count:
    input: "data/words.txt"
    output: "out/count.txt"
    params: word=config["word"]
    script: "scripts/count.py"

rule summary:
    input: "out/count.txt"
    output: "out/summary.txt"
    log: "logs/summary.log"
    shell: "(echo summary; cat {input}) > {output} 2> {log}; echo done >> {log}"
''',
        "config.yaml": "word: gpu\n",
        "scripts/count.py": '''\
text = open(snakemake.input[0]).read()
with open(snakemake.output[0], "w") as out:
    out.write(f"{snakemake.params.word} {text.count(snakemake.params.word)}\\n")
''',
        "data/words.txt": "gpu cpu gpu tpu gpu\n",
    },
    untracked=("data/words.txt",),
    commit=False,  # git add is enough, as the README says
    rents=2,
)

# Names POSIX and git allow but shells and naive parsers trip on.
ODD = "in put/h\u00e9llo w\u00f6rld \"q\" 'a' $HOME \\back -n.txt"
ODD_WILDCARD = "-x $y 'z' \u00fc"

ODD_NAMES = Case(
    name="odd_names",
    promise="spaces, quotes, non-ASCII, $, backslashes and leading dashes in every kind of "
            "path, tracked and untracked, and in the workflow directory's own name",
    workdir_name="wf dir \u00e9 $x 'q' -n",
    files={
        "Snakefile": f'''\
ODD = {ODD!r}
WILD = {ODD_WILDCARD!r}

rule all:
    input: "res/" + WILD + "/done.txt", "res dir/-tree", "--version"

rule top:
    input: "--help.txt"
    output: "--version"
    shell: "cat -- {{input:q}} > {{output:q}}"

rule copy:
    input: tracked="data/" + ODD, shipped="more/" + ODD
    output: "res/{{name}}/done.txt"
    log: "logs/{{name}} \\\\ $l.log"
    shell: "cat {{input.tracked:q}} {{input.shipped:q}} > {{output:q}}; "
           "echo {{wildcards.name:q}} > {{log:q}}"

rule tree:
    input: "data/" + ODD
    output: directory("res dir/-tree")
    params: sub="sub $d \\ 'q'"
    shell: "mkdir -p {{output:q}}/{{params.sub:q}} && cp {{input:q}} {{output:q}}/{{params.sub:q}}/"
''',
        f"data/{ODD}": "tracked odd file\n",
        f"more/{ODD}": "untracked odd file\n",
        "scripts/-dash 'q'.py": "print('tracked script with an odd name')\n",
        "--help.txt": "a top-level input named like an option\n",
    },
    untracked=(f"more/{ODD}", "--help.txt"),
    rents=3,
)

GROUP = Case(
    name="group",
    promise="two rules in one group run on one instance; every member's output, log and "
            "benchmark comes home",
    files={
        "Snakefile": '''\
rule all:
    input: "out/c.txt"

rule a:
    output: "out/a.txt"
    log: "logs/a.log"
    group: "g"
    shell: "echo a > {output}; echo log-a > {log}"

rule b:
    input: "out/a.txt"
    output: "out/b.txt"
    log: "logs/b.log"
    benchmark: "bench/b.tsv"
    group: "g"
    resources: mem_mb=100
    shell: "(cat {input}; echo b) > {output}; echo log-b > {log}"

rule c:
    input: "out/b.txt"
    output: "out/c.txt"
    shell: "(cat {input}; echo c) > {output}"
''',
    },
    fuzzy={"bench/*": "benchmark"},
    rents=2,
)

GROUP_TEMP = Case(
    name="group_temp",
    promise="temp() outputs of a group: one consumed only inside the group, one also "
            "needed by a job outside it; both end as locally (removed once consumed)",
    files={
        "Snakefile": """\
rule all:
    input: "out/b.txt", "out/c.txt"

rule a:
    output: inner=temp("tmp/inner.txt"), shared=temp("tmp/shared.txt")
    group: "g"
    shell: "echo inner > {output.inner}; echo shared > {output.shared}"

rule b:
    input: "tmp/inner.txt", "tmp/shared.txt"
    output: "out/b.txt"
    group: "g"
    shell: "cat {input} > {output}"

rule c:
    input: "tmp/shared.txt"
    output: "out/c.txt"
    shell: "(cat {input}; echo c) > {output}"
""",
    },
    slow=True,
    rents=2,
)

FAILED_LOG = Case(
    name="failed_log_keep_going",
    promise="a failing job's log comes home, its output does not; --keep-going finishes "
            "the independent job",
    files={
        "Snakefile": '''\
rule all:
    input: "ok.txt", "bad.txt"

rule ok:
    output: "ok.txt"
    shell: "sleep 2; echo ok > {output}"

rule bad:
    output: "bad.txt"
    log: "logs/bad.log"
    shell: "echo partial > {output}; echo 'bad things happened' > {log}; exit 3"
''',
    },
    args=("--keep-going",),
    expect_failure=True,
    rents=2,
)

GROUP_FAILS = Case(
    name="group_member_fails",
    promise="a failing group member is reported with its rule and log; every member's log "
            "comes home. (The local executor ignores groups, so there rule a's output stays; "
            "Snakemake removes the outputs of every member of a failed group job, as with "
            "any remote executor: out/ is left out of the comparison.)",
    files={
        "Snakefile": '''\
rule all:
    input: "out/b.txt"

rule a:
    output: "out/a.txt"
    log: "logs/a.log"
    group: "g"
    shell: "echo a > {output}; echo log-a > {log}"

rule b:
    input: "out/a.txt"
    output: "out/b.txt"
    log: "logs/b.log"
    group: "g"
    shell: "echo 'b broke' > {log}; exit 7"
''',
    },
    expect_failure=True,
    ignored=("out",),
    rents=1,
)

RULE_SETTINGS = Case(
    name="rule_settings",
    promise="per-rule image, price cap, disk, region and reliability as resources (also "
            "via --set-resources and --default-resources); container: chooses the image",
    files={
        "Snakefile": '''\
rule all:
    input: "a.txt", "b.txt", "c.txt"

rule a:
    output: "a.txt"
    resources: vastai_max_price="0.4", vastai_disk=55, vastai_geolocation="EU"
    shell: "echo a > {output}"

rule b:
    output: "b.txt"
    container: "docker://python:3.12-slim"
    shell: "echo b > {output}"

rule c:
    output: "c.txt"
    resources: vastai_image="vastai/base-image:cuda-12.4.1-auto"
    shell: "echo c > {output}"
''',
    },
    args=("--set-resources", "c:vastai_reliability='0.99'",
          "--default-resources", "vastai_disk=66"),
    rents=3,
)

BENCHMARK = Case(
    name="benchmark",
    promise="benchmark: files come home (timings differ; header and row shape compared)",
    files={
        "Snakefile": """\
rule all:
    input: "b/x.txt"

rule x:
    output: "b/x.txt"
    benchmark: "benchmarks/x.tsv"
    shell: "echo x > {output}"
""",
    },
    fuzzy={"benchmarks/*": "benchmark"},
    slow=True,
    rents=1,
)

TEMP_PROTECTED = Case(
    name="temp_protected",
    promise="temp() intermediates are removed once consumed; protected() outputs end "
            "read-only",
    files={
        "Snakefile": """\
rule all:
    input: "final.txt"

rule make:
    output: temp("tmp/inter.txt")
    shell: "echo inter > {output}"

rule finish:
    input: "tmp/inter.txt"
    output: protected("final.txt")
    shell: "(cat {input}; echo final) > {output}"
""",
    },
    slow=True,
    rents=2,
)

DIRECTORY_ANCIENT = Case(
    name="directory_ancient",
    promise="directory() outputs come home whole; ancient() inputs do not trigger reruns",
    files={
        "Snakefile": """\
rule all:
    input: "listing.txt"

rule tree:
    output: directory("tree")
    shell: "mkdir -p {output}/x/y && echo 1 > {output}/x/y/one && echo 2 > {output}/two"

rule listing:
    input: t="tree", old=ancient("ref.txt")
    output: "listing.txt"
    shell: "(cd {input.t} && find . -type f | sort; cat ../{input.old}) > {output}"
""",
        "ref.txt": "reference\n",
    },
    untracked=("ref.txt",),
    slow=True,
    rents=2,
)

CHECKPOINT = Case(
    name="checkpoint",
    promise="a checkpoint's output decides the rest of the DAG after it came home",
    files={
        "Snakefile": """\
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
""",
    },
    slow=True,
    rents=5,
)

LOCALRULE = Case(
    name="localrule",
    promise="localrules: run on this machine, nothing rented for them",
    files={
        "Snakefile": """\
localrules: here

rule all:
    input: "there.txt"

rule here:
    output: "here.txt"
    shell: "echo here > {output}"

rule there:
    input: "here.txt"
    output: "there.txt"
    shell: "(cat {input}; echo there) > {output}"
""",
    },
    slow=True,
    rents=1,
)

THREADS_RESOURCES = Case(
    name="threads_resources",
    promise="--set-threads, --set-resources and --default-resources reach the job as "
            "locally",
    files={
        "Snakefile": """\
rule all:
    input: "t.txt"

rule t:
    output: "t.txt"
    threads: 1
    resources: level=1
    shell: "echo threads={threads} level={resources.level} extra={resources.extra} > {output}"
""",
    },
    args=("--set-threads", "t=2", "--set-resources", "t:level=5",
          "--default-resources", "extra=9"),
    slow=True,
    rents=1,
)

TOUCH = Case(
    name="touch",
    promise="--touch marks outputs up to date without running (or renting) anything",
    files={
        "Snakefile": """\
rule all:
    input: "out.txt"

rule one:
    input: "in.txt"
    output: "out.txt"
    shell: "cp {input} {output}"
""",
        "out.txt": "already here\n",
        "in.txt": "newer input\n",
    },
    untracked=("out.txt", "in.txt"),
    args=("--touch",),
    slow=True,
    rents=0,
)

DRY_RUN = Case(
    name="dry_run",
    promise="--dry-run rents nothing and writes nothing",
    files={
        "Snakefile": """\
rule one:
    output: "out.txt"
    shell: "echo one > {output}"
""",
    },
    args=("--dry-run",),
    rents=0,
)

REPORT = Case(
    name="report",
    promise="snakemake --report after a remote run builds the report from its metadata",
    files={
        "Snakefile": """\
rule all:
    input: "res/plot.txt"

rule plot:
    output: report("res/plot.txt", caption="caption.rst", category="Results")
    shell: "echo plotted > {output}"
""",
        "caption.rst": "The result.\n",
    },
    then=(("--report", "report.html"),),
    fuzzy={"report.html": "exists"},
    slow=True,
    rents=1,
)

GROUP_COMPONENTS = Case(
    name="group_components",
    promise="--group-components packs two components of a group into one group job, "
            "one instance sized for both (threads and memory added up by Snakemake)",
    files={
        "Snakefile": """\
rule all:
    input: expand("g/{i}.txt", i=range(4))

rule one:
    output: "g/{i}.txt"
    group: "fan"
    threads: 2
    resources: mem_mb=1500
    shell: "echo {wildcards.i} {threads} > {output}"
""",
    },
    args=("--group-components", "fan=2"),
    slow=True,
    rents=2,
)

GROUP_PIPE = Case(
    name="group_pipe",
    promise="a pipe() between two members of a group works on the instance",
    files={
        "Snakefile": """\
rule all:
    input: "p/counted.txt"

rule produce:
    output: pipe("p/stream")
    group: "p"
    shell: "for i in 1 2 3; do echo line$i; done > {output}"

rule consume:
    input: "p/stream"
    output: "p/counted.txt"
    group: "p"
    shell: "wc -l < {input} > {output}"
""",
    },
    slow=True,
    rents=1,
)

GROUP_SERVICE = Case(
    name="group_service",
    promise="a service() job serves a group member on the same instance",
    files={
        "Snakefile": """\
rule all:
    input: "s/client.txt"

rule server:
    output: service("s/socket")
    group: "svc"
    shell: "python3 scripts/serve.py {output}"

rule client:
    input: "s/socket"
    output: "s/client.txt"
    group: "svc"
    shell: "python3 scripts/ask.py {input} > {output}"
""",
        "scripts/serve.py": """\
import os, socket, sys
path = sys.argv[1]
srv = socket.socket(socket.AF_UNIX)
srv.bind(path)
srv.listen(1)
conn, _ = srv.accept()
conn.sendall(b"served\\n")
conn.close()
""",
        "scripts/ask.py": """\
import socket, sys, time
for _ in range(100):
    try:
        s = socket.socket(socket.AF_UNIX)
        s.connect(sys.argv[1])
        break
    except OSError:
        time.sleep(0.1)
print(s.recv(100).decode().strip())
""",
    },
    slow=True,
    rents=1,
)

CONDA = Case(
    name="conda_without_conda",
    promise="conda: rules with --software-deployment-method conda fail as locally when no "
            "conda is there, with an error naming the rule",
    files={
        "Snakefile": """\
rule one:
    output: "c.txt"
    conda: "envs/tiny.yaml"
    shell: "echo c > {output}"
""",
        "envs/tiny.yaml": "channels: [conda-forge]\ndependencies: [python]\n",
    },
    args=("--software-deployment-method", "conda"),
    expect_failure=True,
    slow=True,
)

RUN_SHADOW = Case(
    name="run_shadow",
    promise="run: blocks, input functions, params lambdas, a helper module next to a "
            "script, and shadow: rules",
    files={
        "Snakefile": """\
def source(wildcards):
    return f"data/{wildcards.x}.txt"

rule all:
    input: "r/one.txt", "r/shadowed.txt"

rule py:
    input: source
    output: "r/{x}.txt"
    params: upper=lambda wildcards: wildcards.x.upper()
    run:
        with open(input[0]) as src, open(output[0], "w") as out:
            out.write(src.read() + params.upper + "\\n")

rule shadowed:
    input: "r/one.txt"
    output: "r/shadowed.txt"
    shadow: "minimal"
    script: "scripts/shadow.py"
""",
        "scripts/shadow.py": """\
from helper import decorate
open("scratch.tmp", "w").write("never comes home")
with open(snakemake.output[0], "w") as out:
    out.write(decorate(open(snakemake.input[0]).read()))
""",
        "scripts/helper.py": "def decorate(text):\n    return '[' + text.strip() + ']\\n'\n",
        "data/one.txt": "one\n",
    },
    untracked=("data/one.txt",),
    slow=True,
    rents=2,
)

# -- issue 28: the working directory Snakemake uses, however it was set -----------------------
# One small workflow with every kind of path that depends on the working directory: a config
# file, a script: with a helper module beside it, an untracked declared input, a log.
_WORKDIR_SNAKEFILE = """\
configfile: "config.yaml"

rule all:
    input: "out/summary.txt"

rule count:
    input: "data/words.txt"
    output: "out/count.txt"
    params: word=config["word"]
    log: "logs/count.log"
    script: "scripts/count.py"

rule summary:
    input: "out/count.txt"
    output: "out/summary.txt"
    shell: "(echo summary; cat {input}) > {output}"
"""
_COUNT_SCRIPT = """\
from helper import counted
text = open(snakemake.input[0]).read()
with open(snakemake.log[0], "w") as log:
    log.write("counting " + snakemake.params.word + "\\n")
with open(snakemake.output[0], "w") as out:
    out.write(counted(text, snakemake.params.word))
"""
_HELPER = "def counted(text, word):\n    return f'{word} {text.count(word)}\\n'\n"
_WORKDIR_FILES = {
    "Snakefile": _WORKDIR_SNAKEFILE,
    "config.yaml": "word: gpu\n",
    "scripts/count.py": _COUNT_SCRIPT,
    "scripts/helper.py": _HELPER,
    "data/words.txt": "gpu cpu gpu tpu gpu\n",
}

DIRECTORY_FROM_PARENT = Case(
    name="directory_from_parent",
    promise="snakemake --directory wf --snakefile wf/Snakefile started in the parent "
            "directory: sources, inputs, outputs and logs are wf's, as locally",
    files=_WORKDIR_FILES,
    untracked=("data/words.txt",),
    from_parent=True,
    rents=2,
)

WORKDIR_DIRECTIVE = Case(
    name="workdir_directive_script_outside",
    promise="a workdir: directive moves the working directory below the Snakefile; its "
            "script: lies outside the working directory (../scripts/count.py from there) "
            "and still ships; inputs, outputs and logs are relative to the working directory",
    files={
        "Snakefile": 'workdir: "work"\n\n' + _WORKDIR_SNAKEFILE,
        "work/config.yaml": "word: gpu\n",  # configfile: is read from the working dir
        "scripts/count.py": _COUNT_SCRIPT,
        "scripts/helper.py": _HELPER,
        "work/data/words.txt": "gpu cpu gpu tpu gpu\n",
    },
    untracked=("work/data/words.txt",),
    working_dir="work",
    rents=2,
)

PYTHON_API = Case(
    name="python_api",
    promise="a run started through Snakemake's Python API (workdir=, the Snakefile's "
            "absolute path, from another directory) ends as the same run of the local "
            "executor through the API",
    files=_WORKDIR_FILES,
    untracked=("data/words.txt",),
    via_api=True,
    rents=2,
)

NOT_GIT = Case(
    name="not_git",
    promise="a workflow directory outside git runs as Snakemake's own remote execution "
            "does: the Snakefile, config file, script: and its directory ship, the declared "
            "input travels as an input",
    files=_WORKDIR_FILES,
    git=False,
    rents=2,
)

WORKDIR_CASES: tuple[Case, ...] = (DIRECTORY_FROM_PARENT, WORKDIR_DIRECTIVE, PYTHON_API,
                                   NOT_GIT)

CASES: tuple[Case, ...] = (
    CHAIN, ODD_NAMES, GROUP, GROUP_FAILS, FAILED_LOG, RULE_SETTINGS, DRY_RUN,
    BENCHMARK, TEMP_PROTECTED, DIRECTORY_ANCIENT, CHECKPOINT, LOCALRULE, THREADS_RESOURCES,
    TOUCH, REPORT, GROUP_COMPONENTS, GROUP_PIPE, GROUP_SERVICE, GROUP_TEMP, RUN_SHADOW,
    CONDA, *WORKDIR_CASES,
)
FAST_CASES: tuple[Case, ...] = tuple(c for c in CASES if not c.slow)
SLOW_CASES: tuple[Case, ...] = tuple(c for c in CASES if c.slow)
