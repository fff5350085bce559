"""Regenerate the README's timeline screenshot from a real demo run.

    python -m tests.harness.timeline_screenshot docs/timeline-demo.png
    python -m tests.harness.timeline_screenshot docs/timeline-1280.png 1280

Runs ``python -m snakemake_executor_plugin_vastai demo`` (the simulator, the real
snakemake CLI), then opens the timeline page it wrote in headless Chromium.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from tests.harness.browser import screenshot


def main(target: str, width: int = 1600) -> int:
    """The page scales to the window, so ``width`` is the window's width."""
    with tempfile.TemporaryDirectory(prefix="vastai-shot-") as tmp:
        demo = subprocess.run([sys.executable, "-m", "snakemake_executor_plugin_vastai", "demo",
                               f"{tmp}/demo"], capture_output=True, text=True, timeout=300)
        if demo.returncode != 0:
            print(demo.stdout[-2000:], demo.stderr[-2000:], file=sys.stderr)
            return 1
        line = next(x for x in demo.stdout.splitlines() if x.startswith("Timeline:"))
        page = Path(line.split()[1])
        rows = page.read_text().count('class="row')
        screenshot(page, Path(target).resolve(), width=width, height=210 + 22 * rows)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "docs/timeline-demo.png",
                  int(sys.argv[2]) if len(sys.argv) > 2 else 1600))
