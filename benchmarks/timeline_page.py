"""How long ``journal timeline`` takes and how big its page gets, by number of jobs.

    python benchmarks/timeline_page.py            # 1, 100, 500, 2000 jobs, 5 repeats
    python benchmarks/timeline_page.py --jobs 500 --repeats 9

Each journal is written by ``tests/harness/timeline_journal.py`` (the real Journal API on a
made-up clock: waves of 20 jobs, half the instances reused, a two-hour quiet
stretch). Timed: reading the journal into rows and spans (``timeline.build``) and
drawing the page (``render_html``), separately. Printed: median [min..max] of the
repeats, the page's size, and each size's time as a ratio of the 100-job time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from snakemake_executor_plugin_vastai.cli import timeline  # noqa: E402
from snakemake_executor_plugin_vastai.cli.timeline_svg import render_html  # noqa: E402
from snakemake_executor_plugin_vastai.journal.store import Journal  # noqa: E402
from tests.harness import timeline_journal  # noqa: E402


def measure(jobs: int, repeats: int, root: Path) -> dict:
    path = root / f"j{jobs}.sqlite"
    run = timeline_journal.write(path, jobs=jobs)
    builds, renders, size = [], [], 0
    with Journal(path) as journal:
        for _ in range(repeats):
            t0 = time.perf_counter()
            view = timeline.build(journal, run)
            t1 = time.perf_counter()
            size = len(render_html(view).encode())
            t2 = time.perf_counter()
            builds.append(t1 - t0)
            renders.append(t2 - t1)
    return {"jobs": jobs, "build": builds, "render": renders, "bytes": size}


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} [{min(values):.3f}..{max(values):.3f}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/timeline_page.py")
    parser.add_argument("--jobs", type=int, nargs="*", default=[1, 100, 500, 2000])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure(n, args.repeats, Path(tmp)) for n in args.jobs]
    base = next((r for r in results if r["jobs"] == 100), results[0])
    base_total = statistics.median(b + r for b, r in zip(base["build"], base["render"],
                                                         strict=True))
    print(f"{'JOBS':>5}  {'BUILD s':>22}  {'RENDER s':>22}  {'PAGE KB':>8}  "
          f"TOTAL vs {base['jobs']} jobs")
    for r in results:
        total = statistics.median(b + x for b, x in zip(r["build"], r["render"], strict=True))
        print(f"{r['jobs']:>5}  {spread(r['build']):>22}  {spread(r['render']):>22}  "
              f"{r['bytes'] / 1024:>8.0f}  {total / base_total:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
