"""The README and docs/ stay true to the tree and to the settings class.

The README is a short guide; everything else lives in docs/, where the Snakemake plugin
catalog reads ``docs/intro.md`` and ``docs/further.md`` (it renders them from the
repository, so those two link to the other pages by their GitHub address). A moved
heading or file breaks links silently, and a hand-written options table drifts from
``ExecutorSettings``: these tests catch both.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections import Counter
from pathlib import Path

import pytest

from snakemake_executor_plugin_vastai import ExecutorSettings
from snakemake_executor_plugin_vastai.settings import shown_default

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
REPOSITORY = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"][
    "Repository"]
LINK = re.compile(r"!?\[(?:[^\]]|\][^(])*\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """The text outside code blocks and inline code (links there are not links)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a Markdown page (a repeated heading gets -1, -2, ...)."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    seen: Counter[str] = Counter()
    found = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, flags=re.M):
        base = slug(heading)
        found.add(base if not seen[base] else f"{base}-{seen[base]}")
        seen[base] += 1
    return found


def local_target(page: Path, target: str) -> tuple[Path, str] | None:
    """The file and anchor a link points to in this repository; None for other sites."""
    for prefix in (f"{REPOSITORY}/blob/main/", f"{REPOSITORY}/tree/main/"):
        if target.startswith(prefix):
            path, _, anchor = target[len(prefix):].partition("#")
            return ROOT / path.split("?")[0], anchor
    if re.match(r"^[a-z]+:", target):
        return None
    path, _, anchor = target.partition("#")
    return (page.parent / path if path else page), anchor


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in LINK.findall(prose(page.read_text())):
        found = local_target(page, target)
        if found is None:
            continue
        path, anchor = found
        if not path.exists():
            broken.append(f"{target}: no file {os.path.relpath(path, ROOT)}")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}: no heading #{anchor} in {os.path.relpath(path, ROOT)}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_in_the_readme_and_docs_resolves(page):
    assert broken_links(page) == []


def test_the_link_check_finds_a_missing_file_and_a_missing_heading(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Top\n\n## `plan`: what it costs\n\n[a](#plan-what-it-costs) "
                    "[b](#nowhere) [c](gone.md) [d](https://example.org/x.md) "
                    f"[e]({REPOSITORY}/blob/main/docs/no-such-page.md) `[f](inline.md)`\n"
                    "```\n[g](fenced.md)\n```\n")
    found = broken_links(page)
    assert len(found) == 3
    assert "#nowhere" in found[0] and "gone.md" in found[1] and "no-such-page" in found[2]


def options_table() -> dict[str, list[str]]:
    """The README's options table: option -> [default, environment, meaning]."""
    section = README.read_text().split("\n### Options\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(--vastai-[a-z-]+)` \|(.+)\|$", section, flags=re.M)
    return {option: [cell.strip() for cell in rest.split(" | ")] for option, rest in rows}


FIELDS = {"--vastai-" + f.name.replace("_", "-"): f for f in dataclasses.fields(ExecutorSettings)}


def test_the_options_table_lists_every_setting_and_nothing_else():
    assert sorted(options_table()) == sorted(FIELDS)


@pytest.mark.parametrize("option", sorted(FIELDS))
def test_the_options_table_shows_each_real_default_and_environment_variable(option):
    default, environment, meaning = options_table()[option]
    setting = FIELDS[option]
    assert default == shown_default(setting)  # as snakemake --help shows it
    variable = "SNAKEMAKE_VASTAI_" + setting.name.upper()
    assert (f"`{variable}`" in environment) == bool(setting.metadata.get("env_var"))
    assert len(meaning) > 20


def test_the_readme_is_a_guide_that_keeps_the_two_set_up_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    assert "python3 -m pip install uv && uv run --extra simulator snakemake-vastai demo" in text
    assert "bash tests/run.sh" in text
    assert "bash tests/run.sh" in (ROOT / ".ci" / "run").read_text()
    assert "in a clone" in text.lower()


def test_the_catalog_pages_have_the_shape_the_plugin_catalog_renders():
    """The catalog puts intro.md under the plugin's own title and further.md under its
    "Further details" heading: intro is plain paragraphs, further starts at ###."""
    intro = (ROOT / "docs" / "intro.md").read_text()
    further = (ROOT / "docs" / "further.md").read_text()
    assert not re.search(r"^#", prose(intro), flags=re.M)
    levels = {len(h) for h in re.findall(r"^(#+) ", prose(further), flags=re.M)}
    assert further.startswith("### ") and levels <= {3, 4}
    # links out of the catalog pages must work on the catalog's site too
    for page in (intro, further):
        relative = [t for t in LINK.findall(prose(page))
                    if not re.match(r"^[a-z]+:", t) and not t.startswith("#")]
        assert relative == []
