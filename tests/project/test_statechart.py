"""The committed statechart is what the machine definition draws."""

from __future__ import annotations

from snakemake_executor_plugin_vastai.cli import statechart
from snakemake_executor_plugin_vastai.lifecycle.job_machine import (
    TRANSITIONS,
    JobState,
    Progress,
)


def test_committed_statechart_matches_the_machine():
    assert statechart.drift() == [], "run: python -m snakemake_executor_plugin_vastai statechart"


def test_chart_shows_every_state_and_trigger():
    text = statechart.mermaid()
    for state in JobState:
        assert f'state "{state.name}"' in text
    for row in TRANSITIONS:
        assert row["trigger"] in text


def test_chart_shows_the_typed_field_the_guards_read():
    """The job's one sub-state beside its state, progress, is in the picture (the chart
    and the Markdown page that embeds it), every value in order."""
    values = ", ".join(p.value for p in Progress)
    assert f"guards read progress: {values}" in statechart.mermaid()
    page = (statechart.CHART_DIR / statechart.MARKDOWN_FILE).read_text()
    assert " -> ".join(f"`{p.value}`" for p in Progress) in page


def test_drift_is_detected(tmp_path):
    statechart.main(["--dir", str(tmp_path)])
    assert statechart.drift(tmp_path, None) == []
    (tmp_path / statechart.MERMAID_FILE).write_text("stateDiagram-v2\n")
    assert statechart.drift(tmp_path, None) == [statechart.MERMAID_FILE]
    assert statechart.main(["--dir", str(tmp_path), "--check"]) == 1


def test_readme_embeds_the_current_chart(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{statechart.START}\nold\n{statechart.END}\nafter\n")
    assert readme.name in statechart.drift(statechart.CHART_DIR, readme)
    readme.write_text(statechart.readme_with_chart(readme))
    assert statechart.drift(statechart.CHART_DIR, readme) == []
    assert readme.read_text().endswith("after\n")


def test_instance_chart_shows_every_state_and_trigger():
    from snakemake_executor_plugin_vastai.lifecycle import instance_machine

    text = (statechart.CHART_DIR / statechart.INSTANCE_MERMAID_FILE).read_text()
    for state in instance_machine.InstanceState:
        assert f'state "{state.name}"' in text
    for row in instance_machine.TRANSITIONS:
        assert row["trigger"] in text
