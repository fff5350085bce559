"""``journal timeline [RUN] [-o FILE.html]``: the command that writes a run's timeline page.

Only the command: choosing the run and the file, and reporting what was
written. Reading the journal into rows and spans is ``cli/timeline.py``, drawing
them ``cli/timeline_svg.py``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ...journal.store import Journal
from .. import timeline
from .common import CliError, emit_json, selected_run


def cmd_timeline(journal: Journal, args: argparse.Namespace) -> int:
    """A run as one HTML page: each instance's states over time, GPU, region, $/h, cost.

    One self-contained file (inline SVG and CSS, nothing fetched from the
    network) for the latest run or RUN (id or unique prefix); hover a bar for
    its transitions. Totals are those of `journal cost` for the run.

    Example:

        $ snakemake-vastai journal timeline -o run.html
        wrote run.html: 6 jobs on 6 instances, 0.004 instance-hours, $0.0011, 0 boots avoided
    """
    run_id = selected_run(journal, args.run)
    if run_id is None:
        raise CliError(f"no run in {journal.path} yet: nothing to draw")
    view = timeline.build(journal, run_id)
    path = args.output or timeline.default_path(journal, run_id)
    if not path.parent.is_dir():
        raise CliError(f"-o {path}: directory {path.parent} does not exist")
    try:
        timeline.write_html(view, path)
    except OSError as exc:
        raise CliError(f"-o {path}: cannot write the timeline: {exc.strerror or exc}") from exc
    if args.json:
        return emit_json(timeline.as_json(view, path))
    print(timeline.summary(view, path))
    return 0


def _configure_timeline(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", nargs="?", metavar="RUN",
                        help="run id or unique prefix (default: the latest run)")
    parser.add_argument("-o", "--output", type=Path, metavar="FILE.html",
                        help="where to write the page (default: "
                        ".snakemake/vastai/timeline-RUN.html beside the journal)")
