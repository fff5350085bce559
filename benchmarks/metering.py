"""What counting bytes for the cost ledger costs a transfer (issue 16), on demand.

Every send and receive of an SSH channel goes through ``transports/ssh/channels._MeteredChannel``,
which counts into a ``ledger.ByteMeter`` (and calls a progress listener during
uploads and downloads). The end-to-end transfer figure (``transfer.py``) is too
noisy on a shared 2-core machine to show a difference this small, so this script
times the wrapper itself against the bare call on an in-memory channel, and scales
the difference to one GiB moved in the chunk sizes the SSH adapter uses, next to the
time that GiB takes at the transfer figure's ~150 MB/s.

    python benchmarks/metering.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

from snakemake_executor_plugin_vastai.costs.ledger import ByteMeter
from snakemake_executor_plugin_vastai.transports.progress import TransferProgress
from snakemake_executor_plugin_vastai.transports.ssh.channels import CHUNK, _MeteredChannel
from snakemake_executor_plugin_vastai.transports.ssh.upload import SEND_BATCH

GIB = 1024**3
CALLS = 200_000
RATE = 150e6  # bytes/s: the order of the plugin's SSH transfer figure


class _Bare:
    """A channel that moves nothing: only the call itself is timed."""

    def __init__(self) -> None:
        self.data = b"x" * 64

    def send(self, data: bytes) -> int:
        return SEND_BATCH

    def recv(self, n: int) -> bytes:
        return self.data


def _per_call(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def measure(repeats: int) -> dict[str, list[float]]:
    bare = _Bare()
    metered = _MeteredChannel(bare, ByteMeter())  # type: ignore[arg-type]
    listening_meter = ByteMeter()
    progress = TransferProgress("download", None, log=lambda *a, **k: None, interval=5.0)
    listening_meter.listener = progress.count
    listening = _MeteredChannel(bare, listening_meter)  # type: ignore[arg-type]
    out: dict[str, list[float]] = {"bare": [], "metered": [], "metered+progress": []}
    for _ in range(repeats):
        out["bare"].append(_per_call(lambda: bare.recv(CHUNK), CALLS))
        out["metered"].append(_per_call(lambda: metered.recv(CHUNK), CALLS))
        out["metered+progress"].append(_per_call(lambda: listening.recv(CHUNK), CALLS))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    figures = measure(args.repeats)
    base = statistics.median(figures["bare"])
    # Receives return up to CHUNK bytes, sends SEND_BATCH: the smaller one is the worst case.
    calls_per_gib = GIB / SEND_BATCH
    gib_seconds = GIB / RATE
    print(f"per call, median [min..max] of {args.repeats} x {CALLS} calls:")
    for name, values in figures.items():
        med = statistics.median(values)
        extra = (med - base) * calls_per_gib
        print(f"  {name:17s} {med * 1e9:7.0f} ns [{min(values) * 1e9:.0f}..{max(values) * 1e9:.0f}]"
              f"  added per GiB: {extra * 1e3:6.2f} ms = {extra / gib_seconds:.5%} of the "
              f"{gib_seconds:.1f} s a GiB takes at {RATE / 1e6:.0f} MB/s")


if __name__ == "__main__":
    main()
