"""One tiny SSH-mode job on the real Vast.ai (costs a few cents).

Skipped unless the user opts in with SNAKEMAKE_VASTAI_E2E=1 and an API key in
VAST_API_KEY. It uses the cheapest GPU offer of any model and a small image.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.harness.e2e import write_workflow

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(os.environ.get("SNAKEMAKE_VASTAI_E2E") != "1"
                       or not os.environ.get("VAST_API_KEY"),
                       reason="live test: set SNAKEMAKE_VASTAI_E2E=1 and VAST_API_KEY"),
]


def test_one_tiny_job_on_the_cheapest_gpu(tmp_path):
    wf = write_workflow(tmp_path / "wf", {
        "Snakefile": 'rule hello:\n    output: "hello.txt"\n'
                     '    shell: "nvidia-smi -L > {output} || echo no-gpu-tool > {output}"\n',
    })
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--executor", "vastai", "--jobs", "1",
         "--retries", "2", "--vastai-reliability", "0.95", "--vastai-disk", "16",
         "--vastai-boot-timeout", "900"],
        cwd=wf, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (wf / "hello.txt").read_text().strip()
    listing = subprocess.run(
        [sys.executable, "-m", "snakemake_executor_plugin_vastai", "journal", "instances",
         "--alive", "--json"], cwd=wf, capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stdout + listing.stderr
