"""A journal written by the 0.2.0 code opens, and its crashed run is cleaned up, today.

``fixtures/journal-0.2.0/`` holds what a run of the 0.2.0 plugin (the flat layout
before the package was split into folders) left when it was killed with SIGKILL while
its one job ran on an instance: the journal and its workflow id, made by
``fixtures/make_journal_020.py`` with that code, not by hand. Here a fresh simulator
with the same seed and first instance id rents the instance that run rented (same
label, same id), and today's plugin runs the same workflow in the
same directory with ``--vastai-on-restart destroy``: it must accept the old journal's
migrations, find the crashed run's instance and destroy it before renting anything,
then finish the workflow on a new instance, leaving nothing alive. (With the default
``resume`` it tries to re-attach and refuses: the new simulator's instance offers
another SSH host key than the one 0.2.0 pinned, as a replaced host would.)
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from snakemake_executor_plugin_vastai.vastai.api import VastAPI
from tests.fixtures.make_journal_020 import FIRST_ID
from tests.harness.e2e import alive, run_snakemake, write_workflow

pytestmark = pytest.mark.e2e

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "journal-0.2.0"


def old_instance() -> tuple[str, int]:
    """The crashed 0.2.0 run's instance: (label, id), read from the fixture as-is."""
    with sqlite3.connect(f"file:{FIXTURE / 'journal.sqlite'}?mode=ro", uri=True) as db:
        (row,) = db.execute("SELECT label, instance_id FROM instances").fetchall()
    return str(row[0]), int(row[1])


def test_a_crashed_020_runs_instance_is_found_and_destroyed_by_todays_code(
        tmp_path, simulator_factory):
    sim = simulator_factory(seed=0, first_instance_id=FIRST_ID)
    label, instance_id = old_instance()
    api = VastAPI(sim.api_key, sim.url, retry_budget=30)
    offers = api.search_offers_unshared({"rentable": {"eq": True}, "rented": {"eq": False}},
                                        [["dph_total", "asc"]], 1, 16.0)
    rented = api.create_instance(int(offers[0]["id"]), image="img", disk_gb=16.0, label=label,
                                 onstart="true", runtype="ssh_direc ssh_proxy")
    assert rented == instance_id  # as in the 0.2.0 run's simulator

    snakefile = (FIXTURE / "Snakefile").read_text().replace("sleep 30", "sleep 1")
    wf = write_workflow(tmp_path / "wf", {"Snakefile": snakefile})
    state = wf / ".snakemake" / "vastai"
    state.mkdir(parents=True)
    for name in ("journal.sqlite", "workflow-id"):
        shutil.copy(FIXTURE / name, state / name)

    result = run_snakemake(wf, sim.url, sim.api_key, "--vastai-on-restart", "destroy", jobs=1)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (wf / "out.txt").read_text() == "done\n"
    truth = sim.truth()
    old = next(i for i in truth["instances"] if i["id"] == instance_id)
    assert not old["alive"] and old["label"] == label
    new = [i for i in truth["instances"] if i["id"] != instance_id]
    assert len(new) == 1 and old["destroyed_at"] <= new[0]["created_at"]  # before renting
    assert alive(truth) == []
    with sqlite3.connect(state / "journal.sqlite") as db:
        states = dict(db.execute("SELECT label, state FROM instances").fetchall())
    assert states[label] == "gone"
