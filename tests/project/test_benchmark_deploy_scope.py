"""The scoped-shipping benchmark runs end to end at a small size and reports both sides.

It checks the shape of the results and the direction of the effect (fewer bytes
with ``deploy``), not the figures, which depend on the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.benchmark, pytest.mark.e2e, pytest.mark.timeout(300)]


def test_deploy_scope_benchmark_reports_both_sides(tmp_path):
    out = tmp_path / "deploy.json"
    done = subprocess.run([sys.executable, "benchmarks/deploy_scope.py", "--repeats", "1",
                           "--files", "100", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-4000:]
    data = json.loads(out.read_text())
    assert data["files"] == 100
    whole, scoped = data["figures"]["whole"], data["figures"]["scoped"]
    for metric in ("bytes_up", "ssh_bytes_in", "archive_bytes", "upload_s", "run_s"):
        assert whole[metric]["n"] == scoped[metric]["n"] == 1
    assert scoped["archive_bytes"]["median"] < whole["archive_bytes"]["median"]
    assert scoped["ssh_bytes_in"]["median"] < whole["ssh_bytes_in"]["median"]
    assert "deploy (3 files)" in done.stdout
