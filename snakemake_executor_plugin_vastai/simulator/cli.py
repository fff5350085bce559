"""``simulate``: run the local Vast.ai simulator until interrupted.

    snakemake-vastai simulate --port 0 --seed 1
    python -m snakemake_executor_plugin_vastai.simulator.cli --realistic --time-scale 0.1

Prints the URL and API key (and shell ``export`` lines), then serves until SIGINT or
SIGTERM, and stops cleanly: every instance's SSH server and processes end with it.
Steer it from elsewhere with ``POST /_sim/faults`` and watch ``GET /_sim/truth``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from .api import ENDPOINT_NAMES
from .server import SimConfig, Simulator


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="snakemake-vastai simulate",
        description="Serve a local Vast.ai (REST API + SSH instances) on 127.0.0.1.",
    )
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: any free)")
    parser.add_argument("--seed", type=int, default=0, help="seed of catalogue and faults")
    parser.add_argument("--offers", type=Path, help="JSON file of offers (default: built-in)")
    parser.add_argument("--boot-delay", type=float, help="seconds from create to running")
    parser.add_argument(
        "--realistic",
        action="store_true",
        help="real-world timing: 60-300 s boots, API rate limits",
    )
    parser.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="multiply the realistic delays (with --realistic)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="where instance sandboxes live (default: a temp dir, removed)",
    )
    parser.add_argument("--api-key", help="API key to accept (default: random)")
    parser.add_argument(
        "--rate-limit", type=float, help="min seconds between calls per endpoint and key"
    )
    parser.add_argument(
        "--rate-interval",
        action="append",
        default=[],
        metavar="ENDPOINT=SECONDS",
        help=(
            "one endpoint's min seconds between calls (repeatable; overrides --rate-limit "
            f"and --realistic), ENDPOINT one of {', '.join(ENDPOINT_NAMES)} or a route "
            "such as 'PUT /api/v0/asks/{id}/'"
        ),
    )
    return parser


def parse_intervals(items: list[str]) -> dict[str, float]:
    """``["create=4.5", ...]`` as route keys to seconds; ValueError names a bad item."""
    out = {}
    for item in items:
        name, sep, value = item.rpartition("=")
        route = ENDPOINT_NAMES.get(name.strip(), name.strip())
        if not sep or not route or route.split(" ", 1)[0] not in ("GET", "PUT", "POST", "DELETE"):
            raise ValueError(f"--rate-interval {item!r}: expected ENDPOINT=SECONDS with "
                             f"ENDPOINT one of {', '.join(ENDPOINT_NAMES)} or 'METHOD /path'")
        out[route] = float(value)
    return out


def config_from(args: argparse.Namespace) -> SimConfig:
    """The SimConfig the command line asks for."""
    extra: dict[str, object] = {
        "seed": args.seed,
        "offers": args.offers,
        "state_dir": args.state_dir,
        "api_key": args.api_key,
    }
    if args.rate_limit is not None:
        extra["rate_limit_interval"] = args.rate_limit
    if args.realistic:
        config = SimConfig.realistic(time_scale=args.time_scale, **extra)
    else:
        config = SimConfig(**extra)  # type: ignore[arg-type]
    config.rate_limit_intervals.update(parse_intervals(args.rate_interval))
    if args.boot_delay is not None:
        config.boot_delay = args.boot_delay
        config.boot_delay_range = None
    return config


def main(argv: list[str] | None = None) -> int:
    """Run until SIGINT/SIGTERM; 0 on a clean stop, 2 on bad arguments."""
    args = build_parser().parse_args(argv)
    try:
        config = config_from(args)
        sim = Simulator(config)
    except (OSError, ValueError) as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 2
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            url = sim.start(args.port)
        except OSError as exc:
            print(f"simulate: cannot listen on 127.0.0.1:{args.port}: {exc}", file=sys.stderr)
            return 2
        print(f"Vast.ai simulator listening on {url}")
        print(f"API key: {sim.api_key}")
        print(f"export VAST_URL={url}")
        print(f"export VAST_API_KEY={sim.api_key}")
        print(f"Ground truth: {url}/_sim/truth    (Ctrl-C to stop)", flush=True)
        while not done.wait(0.5):
            pass
        print("stopping simulator ...", flush=True)
    finally:
        sim.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    print("simulator stopped", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
