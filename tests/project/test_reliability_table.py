"""The Reliability table of docs/crash-safety.md is what the fault matrix's rows say.

The table is the user-facing promise; ``MATRIX_ROWS`` is the wording the fault
matrix is checked against. If someone edits one and not the other, this fails
and names the command that brings them back together.
"""

from __future__ import annotations

from tests.harness import reliability_table as rt

ROWS = [
    ("Fault A", "Retries", "Nothing"),
    ("Pipe | in a cell", "Does\n  two lines", "Sees"),
]


def test_readme_table_matches_the_fault_matrix():
    assert not rt.stale(), "run: python -m tests.harness.reliability_table"
    assert rt.main(["--check"]) == 0


def test_every_matrix_row_is_in_the_readme():
    text = rt.README.read_text()
    section = text.split("## Reliability", 1)[1].split(rt.END, 1)[0]
    for row in rt.matrix_rows():
        assert f"| {' | '.join(rt.cell(c) for c in row)} |" in section, row[0]
    assert "python -m pytest tests/e2e/test_fault_matrix.py" in section


def test_cells_cannot_break_the_table():
    lines = rt.table(ROWS).splitlines()
    assert lines[3] == "| Pipe \\| in a cell | Does two lines | Sees |"
    assert all(line.count(" | ") == 2 for line in lines[2:])


def test_drift_is_detected_and_fixed(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n## Reliability\n\n{rt.START}\nold\n{rt.END}\n\nafter\n")
    assert rt.stale(readme, ROWS)
    readme.write_text(rt.with_table(readme.read_text(), ROWS))
    assert not rt.stale(readme, ROWS)
    assert rt.stale(readme, ROWS[:1])
    assert readme.read_text().startswith("# x\n\n## Reliability\n\n")
    assert readme.read_text().endswith(f"{rt.END}\n\nafter\n")


def test_missing_markers_are_an_error(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# x\n")
    assert rt.main(["--readme", str(readme)]) == 1
    assert "no <!-- reliability:start -->" in capsys.readouterr().err
    assert readme.read_text() == "# x\n"
