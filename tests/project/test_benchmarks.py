"""The benchmark script runs end to end in --quick mode and reports every figure.

It asserts the shape of the results, not that targets are met: the numbers
depend on the machine and its load. Deselect with ``-m "not benchmark"``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIGURE_NUMBERS = {"1", "2", "3", "4", "5", "6", "7"}
STATUSES = {"pass", "miss", "info", "n/a"}

pytestmark = [pytest.mark.benchmark, pytest.mark.e2e, pytest.mark.timeout(600)]


def test_quick_benchmark_writes_every_figure(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "benchmarks/run.py", "--quick", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=570)
    assert done.returncode == 0, done.stderr[-4000:]
    data = json.loads(out.read_text())
    assert data["mode"] == "quick"
    assert data["machine"]["cores"] >= 1
    figures = data["figures"]
    assert {f["key"].split(".", 1)[0] for f in figures} == FIGURE_NUMBERS
    for fig in figures:
        assert fig["status"] in STATUSES, fig
        if fig["value"] == "not available":
            assert fig["status"] == "n/a" and fig["reason"], fig
        else:
            assert isinstance(fig["value"]["median"], int | float), fig
    assert "| figure" in done.stdout  # the table was printed
