"""Which orphans ``journal cleanup --orphans`` removes (``run/orphans.py``): a pure rule over
listed rows, with the statuses the simulator and Vast.ai give."""

from __future__ import annotations

from snakemake_executor_plugin_vastai.run import orphans

OURS = "smk-1a2b3c4d-"
THEIRS = "smk-99999999-"


def row(iid: int, label: str | None, actual: str | None = "running",
        intended: str = "running") -> dict:
    return {"id": iid, "label": label, "actual_status": actual, "intended_status": intended,
            "dph_total": 0.25}


def stopped(iid: int, label: str, actual: str = "stopped") -> dict:
    return row(iid, label, actual, "stopped")


def ids(items: list[orphans.Orphan]) -> list[int]:
    return [o.instance_id for o in items]


def plan(listed, named=None, labels=(), known_ids=()):
    return orphans.plan(listed, own_prefix=OURS, known_labels=set(labels),
                        known_ids=set(known_ids), named=named)


def test_a_stopped_instance_is_proven_unfed_as_the_simulator_and_vast_ai_report_it():
    assert orphans.proven_unfed(stopped(1, OURS + "a"))  # simulator: actual stopped
    assert orphans.proven_unfed(stopped(1, OURS + "a", actual="exited"))  # Vast.ai


def test_running_booting_or_being_started_again_is_never_proven_unfed():
    for actual, intended in [("running", "running"), ("loading", "running"),
                             (None, "running"), ("exited", "running"),
                             ("stopped", "running"), ("running", "stopped"),
                             ("offline", "running")]:
        assert not orphans.proven_unfed(row(1, OURS + "a", actual, intended)), (actual,
                                                                               intended)


def test_without_ids_only_this_directorys_unknown_stopped_instances_go():
    listed = [stopped(1, OURS + "crashed"), row(2, OURS + "running"),
              stopped(3, OURS + "in-journal"), stopped(4, OURS + "id-in-journal"),
              stopped(5, THEIRS + "x"), row(6, "my-notebook", "exited", "stopped")]
    result = plan(listed, labels={OURS + "in-journal"}, known_ids={4})
    assert ids(result.remove) == [1]
    assert ids(result.left) == [2]
    assert "may feed its watchdog" in result.left[0].reason
    assert [r["id"] for r in result.foreign] == [5]  # reported, never touched
    assert result.refused == [] and result.missing == []


def test_named_ids_are_exactly_those_and_may_be_another_workflows():
    listed = [stopped(1, OURS + "a"), stopped(5, THEIRS + "x"), row(7, THEIRS + "y")]
    result = plan(listed, named=[5, 7])
    assert ids(result.remove) == [5]
    assert ids(result.left) == [7]
    assert result.foreign == []


def test_a_named_instance_the_plugin_did_not_rent_is_refused_by_label():
    listed = [row(6, "my-notebook", "exited", "stopped"), row(8, None, "exited", "stopped"),
              stopped(5, THEIRS + "x")]
    result = plan(listed, named=[6, 8, 5, 404])
    assert [r["id"] for r in result.refused] == [6, 8]
    assert ids(result.remove) == [5]
    assert result.missing == [404]


def test_a_named_instance_this_journal_knows_is_not_an_orphan():
    result = plan([stopped(1, OURS + "a")], named=[1], labels={OURS + "a"})
    assert result.remove == []
    assert "journal cleanup" in result.left[0].reason


def test_an_instance_being_started_again_says_why_it_is_left():
    result = plan([row(1, OURS + "a", "exited", "running")])
    assert "starting it again" in result.left[0].reason


def test_the_start_report_names_the_orphans_command_and_the_raw_destroy():
    warnings = []
    listed = [stopped(5, THEIRS + "x")]
    orphans.report(lambda prefix: listed, OURS, warnings.append, now=0.0)
    [text] = warnings
    assert "journal cleanup --orphans 5" in text
    assert "vastai destroy instances 5" in text
