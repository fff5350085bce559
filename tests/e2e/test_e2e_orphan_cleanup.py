"""``journal cleanup --orphans`` through the real CLI against the simulator (issue 30):
after a crash and ``rm -rf .snakemake``, the instance the watchdog stopped is destroyed
with no journal at all; another workflow's running instance is listed and left; it goes
only once named and stopped; an instance the plugin did not rent is refused by name."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import vastai

from tests.harness.e2e import alive, start_snakemake, wait_for, write_workflow

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

ONE_JOB = """\
rule long:
    output: "long.txt"
    shell: "sleep 3; echo long > {output}"
"""
TIMEOUT = 4.0
IMAGE = "vastai/pytorch:2.4.1-cuda-12.4.1"


def sdk(sim) -> vastai.VastAI:
    return vastai.VastAI(api_key=sim.api_key, server_url=sim.url, raw=True, quiet=True,
                         retry=1)


def rent(sim, label: str) -> int:
    """An instance created through the official SDK, as another workflow (or the user)."""
    client = sdk(sim)
    offer = client.search_offers("num_gpus=1", limit=1, no_default=True)[0]
    return int(client.create_instance(offer["id"], image=IMAGE, label=label)["new_contract"])


def status(sim, iid: int) -> str | None:
    found = [i for i in alive(sim.truth()) if i["id"] == iid]
    return found[0]["actual_status"] if found else None


def orphans(wf: Path, sim, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "snakemake_executor_plugin_vastai", "journal", "cleanup",
         "--orphans", *args, "--api-url", sim.url], cwd=wf, capture_output=True, text=True,
        timeout=120, env={**os.environ, "VAST_API_KEY": sim.api_key})


def test_orphans_after_rm_rf_snakemake_destroys_the_stopped_one_and_touches_no_other(
        tmp_path, simulator):
    wf = write_workflow(tmp_path / "wf", {"Snakefile": ONE_JOB})
    theirs = rent(simulator, "smk-99999999-0123456789ab")  # another workflow's, running
    notebook = rent(simulator, "my-notebook")  # not the plugin's
    proc = start_snakemake(wf, simulator.url, simulator.api_key, "--vastai-orphan-timeout",
                           str(TIMEOUT), jobs=1)
    try:
        assert wait_for(lambda: len(alive(simulator.truth())) == 3
                        and all(i["actual_status"] == "running"
                                for i in alive(simulator.truth())), timeout=90)
        time.sleep(1.0)  # the job has started
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    subprocess.run(["rm", "-rf", str(wf / ".snakemake")], check=True)
    [crashed] = [i["id"] for i in alive(simulator.truth()) if i["id"] not in (theirs, notebook)]
    # its watchdog lets the job end, then stops it: storage bills only
    assert wait_for(lambda: status(simulator, crashed) == "stopped", timeout=TIMEOUT + 30)
    sdk(simulator).stop_instance(notebook)  # stopped, but never ours to remove
    assert wait_for(lambda: status(simulator, notebook) == "stopped", timeout=10)

    dry = orphans(wf, simulator, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    planned = json.loads(dry.stdout)
    assert [t["instance_id"] for t in planned["remove"]] == [crashed]
    assert [f["instance_id"] for f in planned["foreign"]] == [theirs]
    assert planned["destroyed"] == [] and status(simulator, crashed) == "stopped"

    done = orphans(wf, simulator, "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"destroyed {crashed}" in done.stdout
    assert f"journal cleanup --orphans {theirs}" in done.stdout  # reported with the command
    assert {i["id"] for i in alive(simulator.truth())} == {theirs, notebook}
    assert not (wf / ".snakemake").exists()  # no journal was created

    refused = orphans(wf, simulator, str(notebook), str(theirs), "--yes")
    assert refused.returncode == 2
    assert f"instance {notebook} (label 'my-notebook')" in refused.stderr
    assert "not rented by this plugin" in refused.stderr
    assert {i["id"] for i in alive(simulator.truth())} == {theirs, notebook}

    named = orphans(wf, simulator, str(theirs), "--yes")  # running: may be fed elsewhere
    assert named.returncode == 0, named.stderr
    assert "left alone" in named.stdout and "may feed its watchdog" in named.stdout
    assert status(simulator, theirs) == "running"

    sdk(simulator).stop_instance(theirs)  # as its watchdog would, nobody feeding it
    assert wait_for(lambda: status(simulator, theirs) == "stopped", timeout=10)
    named = orphans(wf, simulator, str(theirs), "--yes")
    assert named.returncode == 0, named.stderr
    assert [i["id"] for i in alive(simulator.truth())] == [notebook]
    sdk(simulator).destroy_instance(notebook)
