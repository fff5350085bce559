"""Differential runs: the same workflow under Snakemake's local executor and on the simulator.

The local executor is the oracle. :func:`run_case` lays one
:class:`~tests.harness.differential_cases.Case` out twice (as a git repository each
time, unless the case says ``git=False``), runs ``snakemake -c2`` in one copy and
``snakemake --executor vastai`` against the simulator in the other, and returns both results
plus a comparison of the two output trees. Snakemake's own bookkeeping (``.snakemake/``) and
git's (``.git/``) are left out of the comparison; everything else must be equal byte for byte
(and in its write permission, which is how ``protected()`` shows), except files a case names
in ``fuzzy``: those are compared after a normaliser (benchmark timings, report HTML).

The mode is a parameter, so a storage-mode variant runs the same catalogue by passing
its own ``remote_argv``.

How a run starts is the case's (issue 28): in the workflow directory (the default); in its
parent with ``--directory``/``--snakefile`` (``from_parent``); or through Snakemake's
Python API with ``workdir=`` (``via_api``, see ``api_run.py``). A case with ``git=False``
is laid out without git; a ``workdir:`` directive's own ``.snakemake`` (``working_dir``) is
bookkeeping like the top-level one.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.harness.differential_cases import Case
from tests.harness.e2e import alive, sim_env, snakemake_argv

IGNORED_TOP = (".snakemake", ".git")
TIMEOUT = 300.0

# Entry in a tree snapshot: ("file", bytes, writable) | ("dir",) | ("link", target)
Entry = tuple


@dataclass(frozen=True)
class Outcome:
    """One snakemake run of a case."""

    returncode: int
    stdout: str
    stderr: str
    tree: dict[str, Entry]
    workdir: Path

    @property
    def tail(self) -> str:
        return (self.stdout + self.stderr)[-5000:]


@dataclass(frozen=True)
class Differential:
    """Both runs of a case and how their trees differ."""

    case: Case
    local: Outcome
    remote: Outcome
    differences: list[str]
    alive_after: list[dict]

    def explain(self) -> str:
        diff = "\n  ".join(self.differences[:30]) or "(trees equal)"
        return (f"case {self.case.name}: local rc {self.local.returncode}, vastai rc "
                f"{self.remote.returncode}\n  {diff}\n--- local output tail:\n"
                f"{self.local.tail}\n--- vastai output tail:\n{self.remote.tail}")

    def assert_same(self) -> None:
        """The promise: same outcome, same tree, no instance left."""
        assert (self.local.returncode == 0) == (self.remote.returncode == 0), self.explain()
        assert (self.local.returncode == 0) == (not self.case.expect_failure), self.explain()
        assert self.differences == [], self.explain()
        assert self.alive_after == [], self.explain()


def lay_out(root: Path, case: Case) -> Path:
    """Write the case's files under ``root`` and ``git add`` the tracked ones (no commit
    needed, as the README says); no git at all for a case with ``git=False``."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, content in case.files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        data = content.encode() if isinstance(content, str) else content
        path.write_bytes(data)
    if not case.git:
        return root
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "init", "-q"], cwd=root, check=True)
    tracked = [rel for rel in case.files if case.is_tracked(rel)]
    if tracked:
        subprocess.run([*git, "add", "--", *tracked], cwd=root, check=True)
    if case.commit:
        subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "wf"], cwd=root,
                       check=True)
    return root


def snapshot(root: Path, ignored: Sequence[str] = ()) -> dict[str, Entry]:
    """Every path below ``root`` except Snakemake's and git's bookkeeping."""
    tree: dict[str, Entry] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        if rel_dir == Path("."):
            dirnames[:] = [d for d in dirnames if d not in IGNORED_TOP]
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            rel = (rel_dir / name).as_posix()
            if any(rel == i or rel.startswith(i + "/") for i in ignored):
                continue
            tree[rel] = entry(path)
    return tree


def entry(path: Path) -> Entry:
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        return ("link", os.readlink(path))
    if stat.S_ISDIR(st.st_mode):
        return ("dir",)
    writable = bool(st.st_mode & stat.S_IWUSR)
    return ("file", path.read_bytes(), writable)


def compare(case: Case, local: dict[str, Entry], remote: dict[str, Entry]) -> list[str]:
    """Human-readable differences between the two trees ([] when equal)."""
    problems = []
    for rel in sorted(local.keys() | remote.keys()):
        a, b = local.get(rel), remote.get(rel)
        if a is None:
            problems.append(f"only after vastai: {rel!r}")
        elif b is None:
            problems.append(f"only after local: {rel!r}")
        elif a[0] != b[0]:
            problems.append(f"{rel!r}: {a[0]} locally, {b[0]} after vastai")
        elif a[0] == "file":
            normalise = case.normaliser(rel)
            if normalise(a[1]) != normalise(b[1]):
                problems.append(f"{rel!r}: contents differ: {a[1][:200]!r} vs {b[1][:200]!r}")
            elif a[2] != b[2]:
                problems.append(f"{rel!r}: writable {a[2]} locally, {b[2]} after vastai")
        elif a != b:
            problems.append(f"{rel!r}: {a!r} vs {b!r}")
    return problems


def run_snakemake_in(workdir: Path, argv: list[str], env: dict[str, str],
                     timeout: float = TIMEOUT, case: Case | None = None) -> Outcome:
    """One snakemake run of ``case`` (if given) in ``workdir``, started as the case says
    (see :func:`launch`)."""
    cwd, argv = launch(case, workdir, argv) if case is not None else (workdir, argv)
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    return Outcome(done.returncode, done.stdout, done.stderr, {}, workdir)


API_RUN = Path(__file__).with_name("api_run.py")


def launch(case: Case, workdir: Path, argv: list[str]) -> tuple[Path, list[str]]:
    """Where a run of ``case`` starts, and its command line (issue 28): in the workflow
    directory (the default); with ``from_parent`` in its parent, the workflow directory
    named by ``--directory`` and ``--snakefile``. (``via_api`` runs are built by
    :func:`api_argv` and start in the parent too.)"""
    if case.via_api:
        return workdir.parent, argv
    if case.from_parent:
        name = workdir.name
        return workdir.parent, [*argv, "--directory", name, "--snakefile", f"{name}/Snakefile"]
    return workdir, argv


def api_argv(case: Case, workdir: Path, executor: str, url: str | None = None,
             storage: tuple[str, str] | None = None) -> list[str]:
    """A run through Snakemake's Python API (``api_run.py``): ``workdir=`` the workflow
    directory, started elsewhere. ``storage``: (prefix, endpoint) for S3 storage mode."""
    assert not (case.args or case.local_args or case.remote_args or case.then), \
        f"case {case.name}: a run through the API takes no command-line arguments"
    argv = [sys.executable, str(API_RUN), "--workdir", str(workdir), "--executor", executor]
    if url is not None:
        argv += ["--api-url", url]
    if storage is not None:
        argv += ["--storage-prefix", storage[0], "--storage-endpoint", storage[1]]
    return [*argv, "--", *case.targets]


def bookkeeping(case: Case) -> tuple[str, ...]:
    """Paths left out of the comparison: the case's own, and Snakemake's bookkeeping in a
    working directory below the workflow directory (a workdir: directive's)."""
    inner = (f"{case.working_dir}/.snakemake",) if case.working_dir else ()
    return (*case.ignored, *inner)


def local_argv(case: Case) -> list[str]:
    return [sys.executable, "-m", "snakemake", "-c2", *case.args, *case.local_args,
            *case.targets]


def vastai_argv(case: Case, simulator) -> list[str]:
    """``--executor vastai`` against the simulator; targets go before our options so that
    a target is never read as an option's value. Warm instances are on, as by default:
    a job on a reused instance (its own directory, inputs linked from earlier jobs) must
    end as it does locally."""
    return snakemake_argv(simulator.url, *case.targets, *case.args, *case.remote_args,
                          jobs=4, reuse=True)


def run_case(case: Case, base: Path, simulator,
             remote_argv: Callable[[Case, object], list[str]] = vastai_argv,
             remote_env: dict[str, str] | None = None) -> Differential:
    """Run ``case`` both ways below ``base`` and compare (see the module docstring)."""
    local_dir = lay_out(base / "local" / case.workdir_name, case)
    remote_dir = lay_out(base / "remote" / case.workdir_name, case)
    if case.via_api:
        argvs = (api_argv(case, local_dir, "local"),
                 api_argv(case, remote_dir, "vastai", url=simulator.url))
    else:
        argvs = (local_argv(case), remote_argv(case, simulator))
    local = _run_steps(case, local_dir, argvs[0], sim_env(None))
    remote = _run_steps(case, remote_dir, argvs[1], remote_env or sim_env(simulator.api_key))
    differences = compare(case, local.tree, remote.tree)
    return Differential(case, local, remote, differences, alive(simulator.truth()))


def _run_steps(case: Case, workdir: Path, argv: list[str], env: dict[str, str]) -> Outcome:
    """The main run, then the case's follow-up runs (e.g. ``--report``, run as a user would:
    plain ``snakemake``, no executor); the first failing step's result is what counts."""
    outcome = run_snakemake_in(workdir, argv, env, case=case)
    for step in case.then:
        if outcome.returncode != 0:
            break
        outcome = run_snakemake_in(workdir, [sys.executable, "-m", "snakemake", "-c1", *step],
                                   env, case=case)
    return Outcome(outcome.returncode, outcome.stdout, outcome.stderr,
                   snapshot(workdir, bookkeeping(case)), workdir)
