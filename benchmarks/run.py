"""Benchmark entry point: ``python benchmarks/run.py [--quick] [--only NAME,...] [--json PATH]``.

Starts its own simulators (each in a separate process), runs the figures,
prints one table (figure, value, target, ratio to its floor, verdict) and
writes the same figures as JSON. Figure names for ``--only`` (or their
numbers): transfer (4), overhead (1), billing (2), api (3), resources (5),
startup (6), resume (7). Transfer runs first when selected: its measured rate
is what figures 1, 2 and 7 subtract for moving bytes.

A figure that cannot be measured (e.g. a failed run) is reported as "not
available" with the reason; the script still exits 0 unless it was misused.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import fig_other, fig_runs  # noqa: E402
from benchmarks.plan import FULL, QUICK, Plan  # noqa: E402
from benchmarks.report import Figure, machine, table, unavailable, write_json  # noqa: E402
from benchmarks.scenarios import BOOT_DELAY, FAST_STATUS_INTERVAL, Bench  # noqa: E402

FigureFn = Callable[[Bench, Plan], list[Figure]]
FIGURES: dict[str, tuple[int, FigureFn]] = {
    "transfer": (4, fig_other.figure4),
    "overhead": (1, fig_runs.figure1),
    "billing": (2, fig_runs.figure2),
    "api": (3, fig_runs.figure3),
    "resources": (5, fig_runs.figure5),
    "startup": (6, fig_other.figure6),
    "resume": (7, fig_other.figure7),
}
DEFAULT_JSON = REPO / "benchmarks" / "results" / "latest.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python benchmarks/run.py", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes; under 3 minutes")
    parser.add_argument("--only", default="", help="comma-separated figure names or numbers")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write JSON")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    return parser.parse_args(argv)


def selected(only: str) -> list[str]:
    """Figure names in run order; raises SystemExit on an unknown name."""
    if not only.strip():
        return list(FIGURES)
    by_number = {str(num): name for name, (num, _) in FIGURES.items()}
    wanted = set()
    for word in (w.strip() for w in only.split(",") if w.strip()):
        name = by_number.get(word, word)
        if name not in FIGURES:
            raise SystemExit(f"unknown figure {word!r}; choose from {', '.join(FIGURES)}")
        wanted.add(name)
    return [name for name in FIGURES if name in wanted]


def run_figure(name: str, bench: Bench, plan: Plan) -> list[Figure]:
    """One figure's rows; a crash becomes a 'not available' row, never a lost figure."""
    number, fn = FIGURES[name]
    bench.log(f"figure {number} ({name})")
    started = time.monotonic()
    try:
        figures = fn(bench, plan)
    except Exception as exc:  # a benchmark bug or a broken run: report, go on
        traceback.print_exc(file=sys.stderr)
        figures = [unavailable(f"{number}.{name}", name, "", f"{type(exc).__name__}: {exc}")]
    bench.log(f"  figure {number} took {time.monotonic() - started:.0f} s")
    return figures


def meta(quick: bool, seconds: float) -> dict[str, object]:
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": "quick" if quick else "full",
        "duration_s": round(seconds, 1),
        "machine": machine(),
        "setup": {
            "simulator": f"separate process, fast profile ({BOOT_DELAY:g} s boots, no rate "
                         "limits); boot delay taken from its per-instance history",
            "status_interval": f"--vastai-status-interval {FAST_STATUS_INTERVAL:g} except "
                               "figure 3's one-job run (plugin default)",
        },
    }


def _interruptible() -> None:
    """SIGTERM and SIGINT raise KeyboardInterrupt, so every simulator is stopped on the way
    out (a shell ignores SIGINT for background jobs; SIGTERM would skip `finally`)."""

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, interrupt)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _interruptible()
    names = selected(args.only)
    plan = QUICK if args.quick else FULL
    base = Path(tempfile.mkdtemp(prefix="vastai-bench-"))

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    bench = Bench(base=base, quick=args.quick, log=log)
    started = time.monotonic()
    figures: list[Figure] = []
    try:
        for name in names:
            figures += run_figure(name, bench, plan)
    finally:
        if args.keep:
            log(f"work directory kept: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    figures.sort(key=lambda f: int(f.key.split(".", 1)[0]))
    seconds = time.monotonic() - started
    info = meta(args.quick, seconds)
    print(table(figures))
    print(f"\n{info['mode']} run, {seconds:.0f} s, {info['date']}")
    write_json(args.json, figures, info)
    print(f"JSON: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
