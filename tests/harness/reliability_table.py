"""Write the "Reliability" table of docs/crash-safety.md from the fault matrix's rows.

docs/crash-safety.md promises, fault by fault, what the plugin does and what the user
sees; ``tests/e2e/test_fault_matrix.py`` checks each promise end to end and keeps
the wording in ``MATRIX_ROWS``. Generating the page's block from those rows
means the two cannot drift apart unnoticed: ``tests/project/test_reliability_table.py``
regenerates the block and fails when the page differs.

    python -m tests.harness.reliability_table          # rewrite the page's block
    python -m tests.harness.reliability_table --check  # exit 1 if the page is stale
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "docs" / "crash-safety.md"  # its Reliability table
START, END = "<!-- reliability:start -->", "<!-- reliability:end -->"
HEADER = ("Fault", "What the plugin does", "What the user sees")
FOOTER = """\
Generated from `MATRIX_ROWS` in `tests/e2e/test_fault_matrix.py` by
`python -m tests.harness.reliability_table` (a test fails when they differ); every row
is an end-to-end case: `.venv/bin/python -m pytest tests/e2e/test_fault_matrix.py`."""


def cell(text: str) -> str:
    """One table cell: a ``|`` would end the cell early and a newline the row."""
    return " ".join(text.split()).replace("|", "\\|")


def table(rows: Iterable[tuple[str, str, str]]) -> str:
    """The Markdown table, one line per matrix row, in the matrix's order."""
    lines = [f"| {' | '.join(HEADER)} |", "|" + "---|" * len(HEADER)]
    lines += [f"| {' | '.join(cell(c) for c in row)} |" for row in rows]
    return "\n".join(lines) + "\n"


def matrix_rows() -> list[tuple[str, str, str]]:
    """The rows as the fault matrix holds them now (imported, never copied)."""
    from tests.e2e.test_fault_matrix import MATRIX_ROWS

    return list(MATRIX_ROWS)


def block(rows: Iterable[tuple[str, str, str]]) -> str:
    """Everything between the markers: the table, then how to regenerate and run it."""
    return f"{START}\n{table(rows)}\n{FOOTER}\n{END}"


def with_table(text: str, rows: Iterable[tuple[str, str, str]]) -> str:
    """``text`` with its reliability block replaced; unchanged when it has no markers."""
    if START not in text or END not in text:
        return text
    head, rest = text.split(START, 1)
    _old, tail = rest.split(END, 1)
    return f"{head}{block(rows)}{tail}"


def stale(readme: Path = README, rows: Iterable[tuple[str, str, str]] | None = None) -> bool:
    """Whether the page's block differs from what the rows generate (or is missing)."""
    text = readme.read_text()
    if START not in text or END not in text:
        return True
    return with_table(text, matrix_rows() if rows is None else rows) != text


def main(argv: list[str] | None = None) -> int:
    """Example: ``python -m tests.harness.reliability_table --check``."""
    parser = argparse.ArgumentParser(prog="python -m tests.harness.reliability_table",
                                     description="Regenerate the Reliability table of "
                                                 "docs/crash-safety.md.")
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 on drift")
    parser.add_argument("--readme", type=Path, default=README, help="the page to update")
    args = parser.parse_args(argv)
    text = args.readme.read_text()
    if START not in text or END not in text:
        print(f"{args.readme} has no {START} ... {END} block; add the markers to the "
              "Reliability section first", file=sys.stderr)
        return 1
    if args.check:
        if stale(args.readme):
            print(f"{args.readme}: the Reliability table is out of date; run "
                  "python -m tests.harness.reliability_table", file=sys.stderr)
            return 1
        return 0
    args.readme.write_text(with_table(text, matrix_rows()))
    print(f"updated the Reliability table in {args.readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
