"""The fault matrix: one end-to-end case per marketplace fault.

Each case injects one fault kind into the bundled Vast.ai simulator, runs the
real ``snakemake --executor vastai`` CLI against it and checks what the user
gets: the job's final state in the journal, the error text on stderr where the
run fails, a retry on a *different* machine where that matters, and -- always --
no live instance left in the simulator's ground truth. The machinery is in
``tests/harness/faults_matrix_cases.py``.

Known plugin bugs and simulator gaps stay visible: a case that fails because of
one is a strict xfail naming the bug; a bug that only some runs hit is a
``KnownRace`` (xfail when its signature shows up, a normal pass otherwise).

The cases run a few at a time, ahead of their tests (see ``Matrix``): most of a
case is waiting on boots, backoffs and grace periods. ``FAULT_MATRIX_PARALLEL=1``
runs them one by one.

``MATRIX_TABLE`` is the README's "Reliability" table; keep it true to these cases.
"""

from __future__ import annotations

import json
import os

import pytest

from snakemake_executor_plugin_vastai.simulator.sandbox import can_mount
from tests.harness.faults_matrix_cases import (
    Case,
    Inject,
    Matrix,
    Outcome,
    fails,
    first_instance_lived_under,
    journal_retries,
    no_retries,
    one_rule,
    quiet,
    rejected,
    rented,
    retried_elsewhere,
    service_fault_spent,
    succeeds,
    twin_bundles,
    universal_checks,
)

pytestmark = pytest.mark.e2e

# The README's "Reliability" table: (fault, what the plugin does, what the user sees).
MATRIX_ROWS: list[tuple[str, str, str]] = [
    (
        "API throttling: HTTP 429, with or without `Retry-After`",
        "Calls to each endpoint queue and leave one interval apart (all jobs share the "
        "queue); the interval is learned from the 429's `threshold` and relaxes after a quiet "
        "spell; a refused call is retried first, within a 300 s budget per call; a "
        "`Retry-After` is honoured",
        "Nothing (`--verbose` shows `API retry` lines); the job succeeds",
    ),
    (
        "API errors: HTTP 502/503",
        "The same retries",
        "Nothing; the job succeeds",
    ),
    (
        "API unreachable for a while (connections reset, or requests hanging)",
        "Every call, the batched status listing included, retries within its budget; a "
        "running job is followed over SSH and does not need the API; the destroy waits "
        "for the API to answer again",
        "Nothing; the job succeeds",
    ),
    (
        "Offer rented by someone else between search and create",
        "Rents the next-cheapest offer that no job of the run holds",
        "Nothing; the job runs on the next-cheapest offer",
    ),
    (
        "Every matching offer is taken",
        "Waits (state `waiting`, nothing rented), searching again every 2-20 s and at once "
        "when one of the run's instances comes free, up to `--vastai-offer-wait`",
        "Within the wait nothing; past it the job fails: `no Vast.ai offer matching ... "
        "came free within 3s (--vastai-offer-wait)`",
    ),
    (
        "Image pull fails for good: `pull rate limit`, `manifest unknown`, `no space left on "
        "device`, `unauthorized`",
        "Fails the job at the first status carrying the message, without waiting for the boot "
        "timeout; destroys the instance; a retry never rents that machine again",
        "`instance N failed to boot: <Docker's message>`; with `--retries 1` the job succeeds "
        "on another machine",
    ),
    (
        "Instance never finishes booting",
        "Fails the job after `--vastai-boot-timeout`, destroys the instance",
        "`instance N did not boot within 4.0s (--vastai-boot-timeout)`",
    ),
    (
        "Host offline while booting, back within `--vastai-offline-grace`",
        "Waits",
        "Nothing; the job succeeds",
    ),
    (
        "Host offline while booting, longer than the grace",
        "Fails the job, destroys the instance",
        "`instance N has been offline for more than 3s`",
    ),
    (
        "Host offline while its job runs (SSH links drop)",
        "Reconnects while the host is back within the grace; beyond it fails the job and "
        "destroys the instance",
        "Within the grace nothing; beyond it `instance N has been offline for more than 3s`",
    ),
    (
        "Instance vanishes while booting, running or downloading",
        "Sees it missing from the listing (or SSH gone), fails the job; a destroy of a gone "
        "instance counts as done; a retry never rents that machine again",
        "`instance N vanished while booting` / `vanished during running` / `vanished during "
        "downloading`; with `--retries 1` the job succeeds on another machine",
    ),
    (
        "SSH refused for a while although the API says `running`",
        "Keeps connecting until `--vastai-boot-timeout`",
        "Nothing; the job succeeds",
    ),
    (
        "SSH connection dropped mid-upload, mid-run or mid-download",
        "Reconnects with backoff (180 s budget per step): uploads again, follows the log from "
        "the byte it reached, downloads again (files land under temporary names first)",
        "Nothing; the journal shows `retry` transitions",
    ),
    (
        "Remote disk full during upload",
        "Fails the job at once with the host's own error, destroys the instance; "
        "`--retries` tries another machine",
        "`instance N: upload failed: ... Wrote only 3584 of 10240 bytes ...; the instance's "
        "disk is full: rent more with --vastai-disk or the rule's disk_mb resource`",
    ),
    (
        "Host key changes (another machine answers)",
        "Refuses to talk to it, fails the job, destroys the instance",
        "`host key changed (pinned ..., offered ...); ... refusing to talk to it`",
    ),
    (
        "Job killed on the host (SIGKILL, as by the OOM killer)",
        "Fails the job, destroys the instance",
        "`instance N: run failed: ... (exit 137)`",
    ),
    (
        "Destroy request fails (HTTP 5xx, or refused)",
        "Retries until the API confirms the instance is gone; never gives up",
        "Nothing; the job ends as it would have, and no instance is left",
    ),
]
MATRIX_TABLE = "\n".join(
    ["| Fault | What the plugin does | What the user sees |", "|---|---|---|"]
    + [f"| {fault} | {does} | {sees} |" for fault, does, sees in MATRIX_ROWS]
)

MIB = 1 << 20


# -- extra checks used by single rows ----------------------------------------------------


def honoured_retry_after(seconds: float):
    """Some API retry waited at least the server's Retry-After."""

    def check(o: Outcome) -> None:
        waits = []
        for path in (o.workdir / ".snakemake" / "vastai" / "logs").glob("*.jsonl"):
            for line in path.read_text().splitlines():
                event = json.loads(line)
                if event.get("event") == "API retry":
                    waits.append(float(event.get("wait", 0)))
        assert waits and max(waits) >= seconds, waits

    return check


def went_through(status: str):
    """The simulator's instance history shows ``status`` (the fault really happened)."""

    def check(o: Outcome) -> None:
        history = [s for i in o.instances() for _, s in i["history"]]
        assert status in history, history

    return check


def booted_after(seconds: float):
    """SSH answered no sooner than ``seconds`` after the instance was rented."""

    def check(o: Outcome) -> None:
        rented_at = o.transitions("rented")[0]["at"]
        booted_at = o.transitions("booted")[0]["at"]
        assert booted_at - rented_at >= seconds, booted_at - rented_at

    return check


def log_has_once(*markers: str):
    """The job's local log holds each marker exactly once: no byte lost or repeated."""

    def check(o: Outcome) -> None:
        logs = list((o.workdir / ".snakemake/auxiliary/vastai-logs").glob("one.*.log"))
        text = "".join(p.read_text(errors="replace") for p in logs)
        for marker in markers:
            assert text.count(marker) == 1, (marker, text[-2000:])

    return check


def destroy_retried(at_least: int):
    def check(o: Outcome) -> None:
        assert len(o.transitions("destroy_retry")) >= at_least, o.transitions("destroy_retry")

    return check


def vanish_now(sim, instance_id):
    sim.add_fault("vanish", instance_id=instance_id)


def change_host_key(sim, instance_id):
    """Once the first contact has pinned the key, another machine answers."""
    sim.add_fault("host_key_change", instance_id=instance_id)


def api_down(seconds: float, mode: str):
    def inject(sim, _instance_id):
        sim.add_fault("api_down", seconds=seconds, mode=mode)

    return inject


# -- the matrix ----------------------------------------------------------------------------

FATAL_BOOT = {
    "pull-rate-limit": (
        "Error response from daemon: toomanyrequests: You have reached your pull rate "
        "limit. You may increase the limit by authenticating and upgrading: "
        "https://www.docker.com/increase-rate-limit",
        "exited",
        "pull rate limit",
    ),
    "manifest-unknown": (
        "Error response from daemon: manifest for vastai/pytorch:2.9-nope not found: "
        "manifest unknown: manifest unknown",
        "created",
        "manifest unknown",
    ),
    "no-space-left": (
        "failed to register layer: write /usr/lib/x86_64-linux-gnu/libcudnn_engines.so.9: "
        "no space left on device",
        "exited",
        "no space left on device",
    ),
    "unauthorized": (
        'Error response from daemon: Head "https://registry-1.docker.io/v2/acme/private/'
        'manifests/latest": unauthorized: authentication required',
        "created",
        "unauthorized",
    ),
}

BIG_INPUT = {"big.txt": "x" * (4 * MIB)}
# Cases that check "retried on a different machine" rent from a market where the
# failed machine still has a free twin offer, so the check can fail.
TWINS = {"offers": twin_bundles()}
SLEEP_THEN_OK = one_rule(
    "echo before-$((1+1)); sleep {s}; echo after-$((2+2)); echo ok > {{output}}"
)


def sleepy(seconds: float) -> str:
    return SLEEP_THEN_OK.format(s=seconds)


def big_output(mib: int) -> str:
    return one_rule(
        f"dd if=/dev/zero of={{output}} bs=1M count={mib} status=none", output="big.bin"
    )


def output_size(path: str, size: int):
    def check(o: Outcome) -> None:
        assert (o.workdir / path).stat().st_size == size, f"{path} truncated"

    return check


def offer_taken_transitions(n: int):
    """``n`` offers were found taken, and the instance was rented from none of them."""

    def check(o: Outcome) -> None:
        taken = [json.loads(t["detail"])["offer"] for t in o.transitions("offer_taken")]
        assert len(taken) == n, taken
        assert o.instances()[0]["offer_id"] not in taken, (o.instances()[0], taken)

    return check


CASES: list[Case] = [
    # ----- the API
    Case(
        "api-429-burst",
        faults=(("api_status", dict(code=429, fraction=0.5, count=10)),),
        checks=(succeeds(), rejected("429", 10), service_fault_spent("api_status")),
    ),
    Case(
        "api-429-retry-after",
        faults=(("api_status", dict(code=429, retry_after=1, count=3)),),
        checks=(succeeds(), rejected("429", 3), honoured_retry_after(1.0)),
    ),
    Case(
        "api-502",
        faults=(("api_status", dict(code=502, fraction=0.5, count=8)),),
        checks=(succeeds(), rejected("5xx", 8), service_fault_spent("api_status")),
    ),
    Case(
        "api-503",
        faults=(("api_status", dict(code=503, count=4)),),
        checks=(succeeds(), rejected("5xx", 4), service_fault_spent("api_status")),
    ),
    Case(
        "api-down-mid-run-reset",
        # A running SSH job needs no API; the outage outlasts the job, so the destroy
        # after it meets the outage and must wait it out.
        snakefile=sleepy(2),
        inject=Inject(("running",), api_down(8, "reset")),
        checks=(succeeds(), rejected("down", 1)),
    ),
    Case(
        "api-down-mid-run-hang",
        # A running SSH job needs no API; the outage outlasts the job, so the destroy
        # after it meets the outage and must wait it out.
        snakefile=sleepy(2),
        inject=Inject(("running",), api_down(8, "hang")),
        checks=(succeeds(), rejected("down", 1)),
    ),
    # ----- the marketplace
    Case(
        "offer-taken-at-create",
        faults=(("offer_taken", dict(count=2)),),
        checks=(succeeds(), rented(1), offer_taken_transitions(2)),
    ),
    Case(
        # The create refusals the description documents besides 404: 410 (the machine
        # cannot start it now) and 400 invalid_price. Each: try the next offer.
        "create-refused-410-and-invalid-price",
        faults=(
            ("create_refused", dict(status=410, count=1)),
            ("create_refused", dict(status=400, count=1)),
        ),
        checks=(succeeds(), rented(1), offer_taken_transitions(2)),
    ),
    Case(
        "every-offer-taken",
        faults=(("offer_taken", dict(count=100_000)),),
        args=("--vastai-offer-wait", "3"),
        checks=(fails("came free within 3s (--vastai-offer-wait)"), rented(0)),
    ),
    # ----- booting
    *[
        Case(
            f"boot-fatal-{name}",
            faults=(("boot_fatal", dict(next_n=1, status_msg=msg, final_status=final)),),
            args=("--retries", "1"),
            sim=TWINS,
            checks=(succeeds(), retried_elsewhere(fragment), first_instance_lived_under(5)),
        )
        for name, (msg, final, fragment) in FATAL_BOOT.items()
    ],
    Case(
        "boot-hang",
        faults=(("boot_hang", {}),),
        args=("--vastai-boot-timeout", "4"),
        checks=(fails("did not boot within 4", "--vastai-boot-timeout"), rented(1)),
    ),
    # ----- the host
    Case(
        "offline-at-boot-within-grace",
        faults=(("offline", dict(after_seconds=0, duration=1.5)),),
        checks=(succeeds(), went_through("offline")),
    ),
    Case(
        "offline-at-boot-beyond-grace",
        faults=(("offline", dict(after_seconds=0, duration=60)),),
        checks=(fails("has been offline for more than 3s"), rented(1)),
    ),
    Case(
        # The description: an instance gone 'unknown' never reaches running again. Past
        # the grace the job fails, its instance is destroyed, and a retry rents another.
        "unknown-for-good-replaced",
        args=("--retries", "1"),
        sim=TWINS,
        faults=(("offline", dict(after_seconds=0, status="unknown", next_n=1)),),
        checks=(succeeds(), went_through("unknown"),
                retried_elsewhere("has been unknown for more than 3s")),
    ),
    Case(
        "offline-mid-run-within-grace",
        snakefile=sleepy(5),
        faults=(("offline", dict(after_seconds=3, duration=1.5)),),
        checks=(succeeds(), went_through("offline"), journal_retries("running")),
    ),
    Case(
        "offline-mid-run-beyond-grace",
        snakefile=sleepy(6),
        faults=(("offline", dict(after_seconds=3, duration=60)),),
        checks=(went_through("offline"), fails("has been offline for more than 3s")),
    ),
    Case(
        "vanish-while-booting",
        args=("--retries", "1"),
        sim=TWINS,
        faults=(
            ("boot_delay", dict(seconds=3, next_n=1)),
            ("vanish", dict(at_state="loading", after_seconds=0.5, next_n=1)),
        ),
        checks=(succeeds(), retried_elsewhere("vanished while booting")),
    ),
    Case(
        "vanish-while-running",
        snakefile=sleepy(10),
        faults=(("vanish", dict(at_state="running", after_seconds=4)),),
        checks=(fails("vanished during running"), rented(1)),
    ),
    Case(
        "vanish-while-downloading",
        snakefile=big_output(128),
        args=("--retries", "1"),
        sim=TWINS,
        inject=Inject(("downloading",), vanish_now),
        checks=(
            succeeds("big.bin", content=None),
            output_size("big.bin", 128 * MIB),
            retried_elsewhere("vanished during downloading"),
        ),
    ),
    Case(
        "job-killed-by-host",
        snakefile=sleepy(30),
        faults=(("kill_job", dict(after_seconds=4, signal=9)),),
        checks=(fails(("exit 137", "killed")), rented(1)),
    ),
    # ----- SSH
    Case(
        "ssh-refused-after-running",  # quiet: no paramiko traceback per refusal either
        faults=(("ssh_refuse", dict(seconds=3)),),
        checks=(succeeds(), booted_after(2.5)),
    ),
    Case(
        "disk-full-during-upload",
        snakefile=one_rule("wc -c < {input} > {output}", inputs="big.txt"),
        files=BIG_INPUT,
        faults=(("disk_full", dict(after_bytes=MIB)),),
        checks=(fails("the instance's disk is full", "--vastai-disk"), rented(1)),
        needs_mount=True,
    ),
    Case(
        "ssh-drop-mid-upload",
        snakefile=one_rule("wc -c < {input} > {output}", inputs="big.txt"),
        files=BIG_INPUT,
        faults=(("ssh_drop", dict(after_bytes=MIB)),),
        checks=(succeeds(content=f"{4 * MIB}\n"), journal_retries("uploading")),
    ),
    Case(
        "ssh-drop-mid-run",
        snakefile=sleepy(4),
        faults=(("ssh_drop", dict(after_seconds=3.5)),),
        checks=(succeeds(), journal_retries("running"), log_has_once("before-2", "after-4")),
    ),
    Case(
        "ssh-drop-mid-download",
        snakefile=big_output(16),
        faults=(("ssh_drop", dict(after_bytes=2 * MIB)),),
        checks=(
            succeeds("big.bin", content=None),
            output_size("big.bin", 16 * MIB),
            journal_retries("downloading"),
        ),
    ),
    Case(
        "host-key-changed",
        snakefile=sleepy(6),
        faults=(("ssh_drop", dict(after_seconds=4)),),  # the reconnect meets the new key
        inject=Inject(("uploading", "running"), change_host_key),
        checks=(fails("host key changed", "refusing to talk to it"), rented(1)),
    ),
    # ----- destroying
    Case(
        "destroy-5xx",
        faults=(("api_status", dict(code=503, endpoint="DELETE *", count=3)),),
        checks=(succeeds(), service_fault_spent("api_status"), no_retries()),
    ),
    Case(
        "destroy-refused",
        faults=(("api_status", dict(code=400, endpoint="DELETE *", count=2)),),
        checks=(succeeds(), service_fault_spent("api_status"), destroy_retried(2)),
    ),
]


assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"


def _param(case: Case):
    marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
    return pytest.param(case, id=case.id, marks=marks)


def _window(config) -> int:
    """How many cases run at once: FAULT_MATRIX_PARALLEL, else 3 (2 beside xdist workers).

    Look-ahead needs every case of this file in this process: under pytest-xdist only
    ``--dist loadfile``/``loadscope`` promise that, so other modes run one by one.
    """
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None:
        default = "3"
    elif _xdist_mode([*config.getini("addopts"), *workerinput.get("mainargv", [])]) in (
        "loadfile",
        "loadscope",
    ):
        default = "2"
    else:
        return 1
    return int(os.environ.get("FAULT_MATRIX_PARALLEL", default))


def _xdist_mode(argv: list[str]) -> str:
    """The ``--dist`` mode the xdist controller was started with (a worker sees "no")."""
    mode = "load"
    for i, arg in enumerate(argv):
        if arg == "--dist" and i + 1 < len(argv):
            mode = argv[i + 1]
        elif arg.startswith("--dist="):
            mode = arg.split("=", 1)[1]
    return mode


@pytest.fixture(scope="module")
def matrix(request, tmp_path_factory):
    """The cases selected for this session, run a few at a time ahead of their tests.

    See ``_window`` for how many run at once.
    """
    selected = [
        item.callspec.params["case"]
        for item in request.session.items
        if item.module is request.module and hasattr(item, "callspec")
    ]
    window = _window(request.config)
    if window <= 1:
        selected = []  # no look-ahead: each test starts its own case
    runner = Matrix(selected, lambda case: tmp_path_factory.mktemp(case.id), window)
    yield runner
    runner.close()


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_fault(case: Case, matrix: Matrix):
    if case.needs_mount and not can_mount():
        pytest.skip("the disk_full fault needs root to mount a tmpfs")
    outcome = matrix.outcome(case)
    universal_checks(outcome)  # nothing left renting, whatever else happened
    if case.race is not None and case.race.signature in outcome.stderr:
        pytest.xfail(f"hit a known race: {case.race.reason}")
    quiet(outcome)  # no Python traceback on the user's terminal
    for check in case.checks:
        check(outcome)
