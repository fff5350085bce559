"""Machinery for the fault matrix (``tests/e2e/test_fault_matrix.py``).

A :class:`Case` is one row of the matrix: the faults the simulator injects
before the run (and, optionally, one more injected when a job reaches a given
state), the workflow, extra command-line options, and the checks that must hold
afterwards. :class:`Matrix` runs the real ``snakemake --executor vastai`` CLI of
each case against its own simulator and hands back an :class:`Outcome` that the
checks read: exit code, stderr, the journal and the simulator's ground truth.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snakemake_executor_plugin_vastai.simulator import catalog
from snakemake_executor_plugin_vastai.simulator.server import SimConfig, Simulator
from tests.harness.e2e import alive, sim_env, snakemake_argv, write_workflow

# Options every case runs with: short grace periods so a case takes seconds.
# ``--seconds-between-status-checks 0``: Snakemake's wait thread takes its first
# sleep (10 s by default) before the plugin lowers the interval to 0.2 s, so every
# run would otherwise idle up to 10 s before it notices its first finished job.
BASE_ARGS = (
    "--seconds-between-status-checks",
    "0",
    "--vastai-offline-grace",
    "3",
    "--vastai-boot-timeout",
    "8",
)
RUN_TIMEOUT = 150.0
TERMINAL = {"succeeded", "failed", "cancelled"}


def one_rule(shell: str, *, inputs: str | None = None, output: str = "one.txt") -> str:
    """A Snakefile with one rule ``one`` running ``shell``."""
    lines = ["rule one:"]
    if inputs:
        lines.append(f'    input: "{inputs}"')
    lines += [f'    output: "{output}"', f'    shell: "{shell}"', ""]
    return "\n".join(lines)


QUICK = one_rule("echo ok > {output}")
TWIN_OFFSET = 100_000_000


def twin_bundles() -> list[dict]:
    """The built-in catalogue where every offer has a twin on the same machine.

    As on a multi-GPU host that lists a second 1-GPU bundle: the twin is a tenth of a
    cent dearer, so it ranks right after its original. A retry that does not exclude
    the machine that failed it rents the twin, on that same machine.
    """
    offers = catalog.generate(0)
    twins = [
        {
            **o,
            "id": o["id"] + TWIN_OFFSET,
            "ask_contract_id": o["id"] + TWIN_OFFSET,
            "dph_base": round(o["dph_base"] + 0.001, 6),
        }
        for o in offers
    ]
    return offers + twins


@dataclass(frozen=True)
class Inject:
    """A fault added to the simulator once a job of the run reaches one of ``states``.

    ``fault`` gets the simulator and the job's instance id (``None`` while no
    instance is journaled) and adds whatever it likes.
    """

    states: tuple[str, ...]
    fault: Callable[[Simulator, int | None], None]


@dataclass(frozen=True)
class KnownRace:
    """A known bug that only some runs hit; ``signature`` in stderr proves a run hit it.

    A run that hits it is an xfail; every other run must pass all the case's checks
    (a strict xfail would turn the runs that dodge the race red).
    """

    signature: str
    reason: str


@dataclass
class Outcome:
    """What one run left behind: exit code, stderr, journal, ground truth."""

    workdir: Path
    returncode: int
    stderr: str
    truth: dict
    elapsed: float
    leftovers: dict = field(default_factory=dict)

    def query(self, sql: str, *args: Any) -> list[dict]:
        path = self.workdir / ".snakemake" / "vastai" / "journal.sqlite"
        with sqlite3.connect(path) as db:
            db.row_factory = sqlite3.Row
            return [dict(row) for row in db.execute(sql, args)]

    def jobs(self) -> list[dict]:
        """Job rows in submission order (one per Snakemake attempt)."""
        return self.query("SELECT * FROM jobs ORDER BY created_at, rowid")

    def job_states(self) -> list[str]:
        return [job["state"] for job in self.jobs()]

    def transitions(self, trigger: str | None = None) -> list[dict]:
        rows = self.query("SELECT * FROM transitions ORDER BY id")
        return [r for r in rows if trigger is None or r["trigger"] == trigger]

    def instances(self) -> list[dict]:
        """Ground-truth instances of ours, in creation order."""
        mine = [i for i in self.truth["instances"] if not i.get("foreign")]
        return sorted(mine, key=lambda i: (i["created_at"], i["id"]))

    def machines(self) -> list[int]:
        return [i["machine_id"] for i in self.instances()]

    def tail(self, n: int = 4000) -> str:
        return self.stderr[-n:]


Check = Callable[[Outcome], None]


@dataclass(frozen=True)
class Case:
    """One row of the fault matrix."""

    id: str
    faults: tuple[tuple[str, dict], ...] = ()
    checks: tuple[Check, ...] = ()
    snakefile: str = QUICK
    files: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()
    inject: Inject | None = None
    sim: dict[str, Any] = field(default_factory=dict)  # SimConfig fields
    xfail: str | None = None  # a known plugin bug or simulator gap (strict xfail)
    needs_mount: bool = False  # the simulator's disk_full fault mounts a tmpfs (root only)
    race: KnownRace | None = None  # a known bug that only some runs hit


@dataclass
class _Flight:
    """One case's CLI in flight, with its own simulator."""

    case: Case
    sim: Simulator
    root: Path
    workdir: Path
    proc: subprocess.Popen
    start: float
    pending: Inject | None


class Matrix:
    """Runs the selected cases' CLIs, up to ``window`` at a time, ahead of their tests.

    A case's test asks for its :class:`Outcome`; while it waits, the cases after it
    (in the order pytest will run them) are already running, each against its own
    simulator. No threads: the CLIs are subprocesses and the waiting test polls them
    all (and injects their ``Inject`` faults). ``window=1`` runs the cases one by one.
    """

    def __init__(self, order: list[Case], root_for: Callable[[Case], Path], window: int) -> None:
        self.order = order
        self.root_for = root_for
        self.window = max(1, window)
        self.flights: dict[str, _Flight] = {}
        self.done: dict[str, Outcome | BaseException] = {}
        self._next = 0

    def outcome(self, case: Case) -> Outcome:
        """Run ``case`` (if not already started) and wait for its outcome."""
        if case.id not in self.flights and case.id not in self.done:
            self._launch(case)
        while case.id not in self.done:
            self._poll()
            self._top_up()
            if case.id not in self.done:
                time.sleep(0.02)
        result = self.done.pop(case.id)
        if isinstance(result, BaseException):
            raise result
        return result

    def close(self) -> None:
        """Kill whatever still runs and stop every simulator (idempotent)."""
        for flight in list(self.flights.values()):
            _kill(flight.proc)
            flight.sim.stop()
        self.flights.clear()

    # -- internals

    def _top_up(self) -> None:
        while len(self.flights) < self.window and self._next < len(self.order):
            case = self.order[self._next]
            self._next += 1
            if case.id not in self.flights and case.id not in self.done:
                self._launch(case)

    def _launch(self, case: Case) -> None:
        sim = Simulator(SimConfig(**case.sim))
        try:
            sim.start()
            for kind, params in case.faults:
                sim.add_fault(kind, **params)
            root = self.root_for(case)
            wf = write_workflow(root / "wf", {"Snakefile": case.snakefile, **case.files})
            argv = snakemake_argv(sim.url, *BASE_ARGS, *case.args, jobs=1)
            with (root / "stderr.txt").open("wb") as err, (root / "stdout.txt").open("wb") as out:
                proc = subprocess.Popen(
                    argv,
                    cwd=wf,
                    env=sim_env(sim.api_key),
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                )
        except BaseException as exc:
            sim.stop()
            self.done[case.id] = exc
            return
        self.flights[case.id] = _Flight(case, sim, root, wf, proc, time.monotonic(), case.inject)

    def _poll(self) -> None:
        for flight in list(self.flights.values()):
            if flight.proc.poll() is not None:
                self._land(flight, None)
            elif time.monotonic() - flight.start > RUN_TIMEOUT:
                _kill(flight.proc)
                self._land(flight, f"snakemake still running after {RUN_TIMEOUT:.0f}s")
            elif flight.pending is not None:
                found, instance_id = _job_in_state(flight.workdir, flight.pending.states)
                if found:
                    inject, flight.pending = flight.pending, None
                    try:
                        inject.fault(flight.sim, instance_id)
                    except Exception as exc:
                        _kill(flight.proc)
                        self._land(flight, f"injecting at {inject.states} failed: {exc!r}")

    def _land(self, flight: _Flight, problem: str | None) -> None:
        """The CLI has exited: take the ground truth, stop the simulator, keep the outcome."""
        del self.flights[flight.case.id]
        elapsed = time.monotonic() - flight.start
        truth = flight.sim.truth()
        flight.sim.stop()
        stderr = (flight.root / "stderr.txt").read_text(errors="replace")
        if problem is None and flight.pending is not None:
            problem = f"no job was seen in {flight.pending.states}; nothing injected"
        if problem is not None:
            self.done[flight.case.id] = AssertionError(f"{problem}\n{stderr[-4000:]}")
            return
        self.done[flight.case.id] = Outcome(
            workdir=flight.workdir,
            returncode=flight.proc.returncode,
            stderr=stderr,
            truth=truth,
            elapsed=elapsed,
            leftovers=flight.sim.leftovers(),
        )


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL the CLI's whole session (it was started in its own) and reap it."""
    if proc.poll() is None:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _job_in_state(wf: Path, states: tuple[str, ...]) -> tuple[bool, int | None]:
    """Whether a job is in one of ``states`` now, and its instance id (read-only look)."""
    path = wf / ".snakemake" / "vastai" / "journal.sqlite"
    if not path.exists():
        return False, None
    try:
        with contextlib.closing(
            sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.5)
        ) as db:
            marks = ", ".join("?" * len(states))
            row = db.execute(
                f"SELECT instance_id FROM jobs WHERE state IN ({marks}) LIMIT 1", states
            ).fetchone()
    except sqlite3.Error:
        return False, None
    return (False, None) if row is None else (True, row[0])


def universal_checks(o: Outcome) -> None:
    """What must hold after every run, whatever went wrong: nothing left renting."""
    assert alive(o.truth) == [], f"instances left alive: {alive(o.truth)}\n{o.tail()}"
    assert not any(o.leftovers.values()), f"simulator left processes/ports: {o.leftovers}"
    states = o.job_states()
    assert states, f"no job was journaled\n{o.tail()}"
    assert set(states) <= TERMINAL, f"jobs not finished: {states}\n{o.tail()}"
    open_rows = o.query("SELECT label FROM instances WHERE destroyed_at IS NULL")
    assert open_rows == [], f"journal still holds instances: {open_rows}"


def quiet(o: Outcome) -> None:
    """No Python traceback reached the user's terminal."""
    assert "Traceback" not in o.stderr, o.tail()


# -- composable checks ---------------------------------------------------------------


def succeeds(output: str = "one.txt", content: str | None = "ok\n") -> Check:
    """The run succeeded and the output came home intact; every attempt but the last failed."""

    def check(o: Outcome) -> None:
        assert o.returncode == 0, o.tail()
        path = o.workdir / output
        assert path.exists(), f"{output} missing\n{o.tail()}"
        if content is not None:
            assert path.read_text() == content
        states = o.job_states()
        assert states[-1] == "succeeded" and set(states[:-1]) <= {"failed"}, states

    return check


def fails(*fragments: str | tuple[str, ...], output: str = "one.txt") -> Check:
    """The run failed, every attempt's journal row says failed, stderr says why.

    Each fragment must appear in stderr and in a job's ``last_error``; a tuple of
    fragments means any one of them.
    """

    def check(o: Outcome) -> None:
        assert o.returncode != 0, o.tail()
        assert not (o.workdir / output).exists(), f"{output} exists after a failed run"
        states = o.job_states()
        assert set(states) == {"failed"}, states
        errors = [job["last_error"] or "" for job in o.jobs()]
        for fragment in fragments:
            options = fragment if isinstance(fragment, tuple) else (fragment,)
            assert any(f in o.stderr for f in options), f"{options} not in stderr:\n{o.tail()}"
            assert any(f in e for f in options for e in errors), (options, errors)

    return check


def rented(n: int) -> Check:
    def check(o: Outcome) -> None:
        assert len(o.instances()) == n, [(i["id"], i["machine_id"]) for i in o.instances()]

    return check


def retried_elsewhere(first_error: str) -> Check:
    """Attempt 1 failed with ``first_error``; attempt 2 ran on a different machine."""

    def check(o: Outcome) -> None:
        jobs = o.jobs()
        assert [j["state"] for j in jobs] == ["failed", "succeeded"], jobs
        assert [j["attempt"] for j in jobs] == [1, 2]
        assert first_error in (jobs[0]["last_error"] or ""), jobs[0]["last_error"]
        assert first_error in o.stderr, o.tail()
        machines = o.machines()
        assert len(machines) == 2 and machines[0] != machines[1], machines
        assert [j["machine_id"] for j in jobs] == machines

    return check


def journal_retries(state: str, at_least: int = 1) -> Check:
    """The journal shows SSH ``retry`` transitions while in ``state``."""

    def check(o: Outcome) -> None:
        rows = [t for t in o.transitions("retry") if t["from_state"] == state]
        seen = [(t["from_state"], t["detail"]) for t in o.transitions("retry")]
        assert len(rows) >= at_least, f"retries in {state}: {seen}"

    return check


def no_retries() -> Check:
    def check(o: Outcome) -> None:
        assert o.transitions("retry") == []

    return check


def service_fault_spent(kind: str) -> Check:
    """The service fault's whole ``count`` was used up: it really hit the plugin."""

    def check(o: Outcome) -> None:
        left = [f for f in o.truth["faults"] if f["kind"] == kind]
        assert left and all(f["count"] == 0 for f in left), left

    return check


def rejected(kind: str, at_least: int) -> Check:
    """The simulator refused at least ``at_least`` requests as ``kind`` (429, 5xx, down)."""

    def check(o: Outcome) -> None:
        assert o.truth["rejected"].get(kind, 0) >= at_least, o.truth["rejected"]

    return check


def first_instance_lived_under(seconds: float) -> Check:
    """Fail fast: the first instance was destroyed within ``seconds`` of its creation."""

    def check(o: Outcome) -> None:
        first = o.instances()[0]
        life = first["destroyed_at"] - first["created_at"]
        assert life < seconds, f"first instance lived {life:.1f}s"

    return check
