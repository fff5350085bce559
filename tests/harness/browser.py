"""A real headless browser for pages the plugin writes (Debian's ``chromium``).

``tests/run.sh`` installs it where apt-get can; elsewhere the browser tests skip,
unless ``SNAKEMAKE_VASTAI_REQUIRE_BROWSER=1`` (set by ``.ci/run``) makes a missing
browser a failure, so CI cannot pass by skipping them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

NAMES = ("chromium", "chromium-browser", "google-chrome")


def chromium() -> str:
    """The browser's path; skip (or fail, where it is required) when there is none."""
    for name in NAMES:
        found = shutil.which(name)
        if found:
            return found
    why = f"no headless browser ({', '.join(NAMES)}) on PATH; apt-get install chromium"
    if os.environ.get("SNAKEMAKE_VASTAI_REQUIRE_BROWSER") == "1":
        pytest.fail(why)
    pytest.skip(why)


def screenshot(page: Path, out: Path, *, width: int = 1560, height: int = 700) -> Path:
    """Open ``page`` from disk, without network, and write what it shows as a PNG."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        return _shoot(page, out, profile, width, height)


def _shoot(page: Path, out: Path, profile: str, width: int, height: int) -> Path:
    argv = [
        chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
        "--no-first-run", f"--user-data-dir={profile}", f"--window-size={width},{height}",
        "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",  # no network at all
        f"--screenshot={out}", page.resolve().as_uri(),
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and out.is_file(), result.stderr[-2000:]
    return out


def scroll_width(page: Path, width: int, height: int = 800) -> tuple[int, int]:
    """(the page's scroll width, the window's inner width) at a window ``width`` px wide.

    A copy of the page gets a one-line script that writes both into its title, and
    Chromium prints the DOM after the page ran; a scroll width above the inner width
    is a sideways scroll bar.
    """
    probe = ('<script>document.title = "scroll " + document.documentElement.scrollWidth + '
             '" inner " + window.innerWidth;</script></body>')
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        copy = Path(profile) / "probe.html"
        copy.write_text(page.read_text(encoding="utf-8").replace("</body>", probe),
                        encoding="utf-8")
        argv = [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                f"--user-data-dir={profile}/data", f"--window-size={width},{height}",
                "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
                "--dump-dom", copy.as_uri()]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    found = re.search(r"<title>scroll (\d+) inner (\d+)</title>", result.stdout)
    assert found, result.stderr[-2000:]
    return int(found.group(1)), int(found.group(2))
