"""Draw the job and instance state machines from their definitions, into ``statecharts/``.

``python -m snakemake_executor_plugin_vastai statechart`` regenerates the
files; ``--check`` only compares and exits 1 on drift (the test suite runs the
same comparison, so the picture can never disagree with ``lifecycle/job_machine.py``). The
drawing uses the transitions library's Mermaid engine, which needs no system
graphviz; GitHub renders the Markdown file's Mermaid block.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..lifecycle import instance_machine
from ..lifecycle.job_machine import Progress, machine_kwargs

CHART_DIR = Path(__file__).resolve().parents[2] / "statecharts"
README = CHART_DIR.parent / "docs" / "state-machines.md"  # the page that embeds the job chart
START, END = "<!-- statechart:start -->", "<!-- statechart:end -->"
MERMAID_FILE = "job-lifecycle.mmd"
MARKDOWN_FILE = "job-lifecycle.md"
INSTANCE_MERMAID_FILE = "instance-lifecycle.mmd"
INSTANCE_MARKDOWN_FILE = "instance-lifecycle.md"

HEADER = """\
# Job life cycle

Generated from `snakemake_executor_plugin_vastai/lifecycle/job_machine.py` by
`python -m snakemake_executor_plugin_vastai statechart`; a test fails when this
file and the code disagree. Guards are shown in brackets. Every failure and
every cancel passes through `DESTROYING`, the one state that tears a job's
instance down, and every path ends in `SUCCEEDED`, `FAILED` or `CANCELLED`
(`destroy_unconfirmed`: Vast.ai did not confirm the destroy in time; the
instance stays pending in the journal and the run tries once more at its end).

The guards read one typed field besides the job's end (failed, cancelled):
`progress`, how far the job's work got on its instance, in this order: {progress}.
`work_started`, `inputs_uploaded`, `work_finished` and `outputs_home` test
for one value; `needs_an_instance` holds for an instance lost (outbid past the
grace) before the work came home, failed or was cancelled.

"""


INSTANCE_HEADER = """\
# Instance life cycle

Generated from `snakemake_executor_plugin_vastai/instance_machine.py` by
`python -m snakemake_executor_plugin_vastai statechart`; a test fails when this
file and the code disagree. A warm instance moves between `LEASED` and `IDLE`;
a failed or cancelled job's instance goes to `DESTROYING`, never back to `IDLE`.

"""


def progress_order() -> str:
    """The values of the job's typed sub-state, in order (for the chart)."""
    return " -> ".join(f"`{p.value}`" for p in Progress)


def progress_note() -> list[str]:
    """A Mermaid note beside the chart: the typed field the job's guards read."""
    return ["", "  note right of BOOTING",
            "    guards read progress: " + ", ".join(p.value for p in Progress),
            "  end note"]


def mermaid(kwargs: dict | None = None, title: str = "Job life cycle") -> str:
    """The chart as Mermaid ``stateDiagram-v2`` text, drawn from the initial state
    (the job machine unless ``kwargs`` names another table; the job's carries a note
    naming the typed field its guards read)."""
    from transitions.extensions import GraphMachine

    class Drawing:
        """A bare model: the drawing needs no job."""

    drawing = Drawing()
    GraphMachine(model=drawing, graph_engine="mermaid", show_conditions=True,
                 title=title, **(kwargs or machine_kwargs()))
    lines = [line.rstrip() for line in drawing.get_graph().draw(None).rstrip().splitlines()]
    if lines[:1] == ["---"] and len(lines) > 2 and lines[2] == "---":
        lines[1] = f"title: {lines[1]}"  # Mermaid front matter is YAML
    if kwargs is None:
        lines += progress_note()
    return "\n".join(lines) + "\n"


def rendered() -> dict[str, str]:
    """File name -> content, for every file in statecharts/."""
    text = mermaid()
    instance = mermaid(instance_machine.machine_kwargs(), "Instance life cycle")
    header = HEADER.replace("{progress}", progress_order())
    return {MERMAID_FILE: text, MARKDOWN_FILE: f"{header}```mermaid\n{text}```\n",
            INSTANCE_MERMAID_FILE: instance,
            INSTANCE_MARKDOWN_FILE: f"{INSTANCE_HEADER}```mermaid\n{instance}```\n"}


def drift(directory: Path = CHART_DIR, readme: Path | None = README) -> list[str]:
    """Names of chart files (and the README's embedded chart) that differ from the code."""
    stale = [name for name, text in rendered().items()
             if not (directory / name).exists() or (directory / name).read_text() != text]
    if readme is not None and readme.exists() and readme_with_chart(readme) != readme.read_text():
        stale.append(readme.name)
    return stale


def readme_with_chart(readme: Path) -> str:
    """The README with the chart between its statechart markers replaced by the current one."""
    text = readme.read_text()
    if START not in text or END not in text:
        return text
    head, rest = text.split(START, 1)
    _old, tail = rest.split(END, 1)
    return f"{head}{START}\n```mermaid\n{mermaid()}```\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    """Example: ``python -m snakemake_executor_plugin_vastai statechart --check``."""
    parser = argparse.ArgumentParser(prog="python -m snakemake_executor_plugin_vastai statechart",
                                     description="Regenerate statecharts/ from the "
                                                 "lifecycle tables.")
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 on drift")
    parser.add_argument("--dir", type=Path, default=CHART_DIR, help="output directory")
    args = parser.parse_args(argv)
    readme = README if args.dir == CHART_DIR else None
    stale = drift(args.dir, readme)
    if args.check:
        for name in stale:
            print(f"{args.dir / name} is out of date; run the statechart command", file=sys.stderr)
        return 1 if stale else 0
    args.dir.mkdir(parents=True, exist_ok=True)
    for name, text in rendered().items():
        (args.dir / name).write_text(text)
        print(f"wrote {args.dir / name}")
    if readme is not None and readme.exists():
        readme.write_text(readme_with_chart(readme))
        print(f"updated the chart in {readme}")
    return 0
