"""The cost ledger: bytes counted per instance, priced per direction, checked against the
simulator's billing; ``--vastai-max-spend`` counts bandwidth; transfer progress."""

from __future__ import annotations

import json
import os
import re
import sqlite3
from pathlib import Path

import pytest

from snakemake_executor_plugin_vastai.cli.journal import main as journal_main
from snakemake_executor_plugin_vastai.costs import ledger
from snakemake_executor_plugin_vastai.journal.store import Journal
from tests.harness.e2e import alive, run_snakemake, write_workflow

GB = ledger.BYTES_PER_GB


def _row(**over) -> dict:
    row = {"dph_total": 0.36, "bytes_uploaded": 0, "bytes_downloaded": 0,
           "offer": json.dumps({"inet_up_cost": 2.0, "inet_down_cost": 0.5})}
    row.update(over)
    return row


def test_uploads_are_priced_at_inet_down_cost_and_downloads_at_inet_up_cost():
    up = ledger.components(_row(bytes_uploaded=GB), 0.0)
    down = ledger.components(_row(bytes_downloaded=GB), 0.0)
    assert up["bandwidth"] == pytest.approx(0.5)  # the instance receives what we upload
    assert down["bandwidth"] == pytest.approx(2.0)  # and sends what we download
    assert ledger.components(_row(), 3600.0) == {"compute": pytest.approx(0.36),
                                                 "bandwidth": 0.0, "storage": 0.0}


def test_an_offer_without_bandwidth_prices_costs_compute_only():
    row = _row(bytes_uploaded=5 * GB, offer=json.dumps({}))
    assert ledger.components(row, 1800.0) == {"compute": pytest.approx(0.18), "bandwidth": 0.0,
                                              "storage": 0.0}
    assert ledger.components(_row(bytes_uploaded=GB, offer="not json"), 0)["bandwidth"] == 0


def test_byte_meter_hands_out_deltas_and_tells_its_listener():
    meter = ledger.ByteMeter()
    seen = []
    meter.listener = lambda up, down: seen.append((up, down))
    meter.sent(10)
    meter.received(3)
    assert meter.take() == (10, 3)
    meter.sent(5)
    meter.sent(0)
    assert meter.take() == (5, 0)
    assert meter.take() == (0, 0)
    assert seen == [(10, 0), (0, 3), (5, 0)]


def test_journal_adds_bytes_and_prices_them_in_the_run_cost(tmp_path):
    clock = [1000.0]
    journal = Journal(tmp_path / "j.sqlite", clock=lambda: clock[0])
    run = journal.start_run(snakemake_version="9", plugin_version="0", settings={})
    job = journal.add_job(run_id=run, rule="r", snakemake_jobid=1, fingerprint="f",
                          attempt=1, state="searching")
    label = journal.label_prefix + "-x"
    journal.record_rent_intent(job_id=job, run_id=run, label=label,
                               offer={"offer_id": 7, "dph_total": 3.6, "inet_up_cost": 1.0,
                                      "inet_down_cost": 2.0})
    journal.record_instance_created(label, 42)
    journal.add_instance_bytes(42, GB // 2, 0)
    journal.add_instance_bytes(42, GB // 2, GB // 4)  # a reconnect adds on
    clock[0] += 10.0
    row = next(r for r in journal.instances_with_cost() if r["label"] == label)
    assert (row["bytes_uploaded"], row["bytes_downloaded"]) == (GB, GB // 4)
    assert row["components"] == {"compute": pytest.approx(0.01),
                                 "bandwidth": pytest.approx(2.0 + 0.25), "storage": 0.0}
    assert journal.run_cost(run)[1] == pytest.approx(2.26)
    journal.record_balance(run, before=50.0)
    journal.record_balance(run, after=47.5)
    got = next(r for r in journal.runs() if r["id"] == run)
    assert (got["balance_before"], got["balance_after"]) == (50.0, 47.5)
    journal.close()


def _rented(journal: Journal, run: str, instance_id: int) -> None:
    job = journal.add_job(run_id=run, rule="r", snakemake_jobid=1, fingerprint="f",
                          attempt=1, state="searching")
    journal.record_rent_intent(job_id=job, run_id=run, label=f"{journal.label_prefix}-{job}",
                               offer={"offer_id": 7, "dph_total": 3.6, "inet_up_cost": 1.0,
                                      "inet_down_cost": 2.0})
    journal.record_instance_created(f"{journal.label_prefix}-{job}", instance_id)


def test_a_resumed_runs_cost_counts_the_bytes_it_moved_on_an_earlier_runs_instance(tmp_path):
    clock = [1000.0]
    journal = Journal(tmp_path / "j.sqlite", clock=lambda: clock[0])
    first = journal.start_run(snakemake_version="9", plugin_version="0", settings={})
    _rented(journal, first, 42)
    journal.add_instance_bytes(42, GB // 4, 0)
    clock[0] += 10.0  # the first run dies; the second resumes on its instance
    second = journal.start_run(snakemake_version="9", plugin_version="0", settings={})
    journal.add_instance_bytes(42, GB, GB // 2)
    # the second run rented nothing: its cost is the bandwidth it moved ($2 up, $0.5 down)
    assert journal.run_cost(second) == (0.0, pytest.approx(2.5))
    assert journal.run_bytes(first) == {42: (GB // 4, 0)}
    assert journal.run_bytes(second) == {42: (GB, GB // 2)}
    (row,) = journal.instances_with_cost()  # the instance's bill holds both runs' bytes
    assert (row["bytes_uploaded"], row["bytes_downloaded"]) == (GB + GB // 4, GB // 2)
    assert row["components"]["bandwidth"] == pytest.approx(2.5 + 0.5)
    # the first: the instance's time (10 s at $3.6/h) and only its own bytes
    assert journal.run_cost(first) == (pytest.approx(10.0), pytest.approx(0.01 + 0.5))
    journal.close()


def test_bytes_journaled_before_the_split_stay_the_renting_runs(tmp_path, monkeypatch):
    from snakemake_executor_plugin_vastai.journal import store as journal_module

    path = tmp_path / "j.sqlite"
    old = journal_module.MIGRATIONS[:6]  # up to m006_warm_instances
    with monkeypatch.context() as patch:
        patch.setattr(journal_module, "MIGRATIONS", old)
        patch.setattr(Journal, "SCHEMA_VERSION", len(old))
        journal = Journal(path)
        run = journal.start_run(snakemake_version="9", plugin_version="0", settings={})
        _rented(journal, run, 42)
        journal.close()
    con = sqlite3.connect(path)
    with con:
        con.execute("UPDATE instances SET bytes_uploaded = ?, bytes_downloaded = 5", [GB])
    con.close()
    journal = Journal(path)  # migrates to the current version
    assert journal.run_bytes(run) == {42: (GB, 5)}
    assert journal.run_cost(run)[1] == pytest.approx(2.0 + 5 / GB, rel=1e-3, abs=0.01)
    journal.close()


# -- end to end: the real snakemake CLI against the simulator ---------------------------
pricey_network = [
    {"id": 900 + i, "dph_total": 0.30, "inet_up_cost": 6.0, "inet_down_cost": 4.0,
     "hosting_type": 1}
    for i in range(6)
]

TRANSFER_SNAKEFILE = '''\
rule all:
    input: "out/b.bin"

rule a:
    input: "data/in.bin"
    output: "out/a.bin"
    shell: "head -c 12000000 {input} > {output}"

rule b:
    input: "out/a.bin"
    output: "out/b.bin"
    shell: "head -c 1000 {input} > {output}"
'''


def transfer_workflow(root: Path, size: int) -> Path:
    wf = write_workflow(root, {"Snakefile": TRANSFER_SNAKEFILE})
    (wf / "data").mkdir()
    (wf / "data/in.bin").write_bytes(os.urandom(size))
    return wf


def journal_at(wf: Path) -> Journal:
    return Journal(wf / ".snakemake/vastai/journal.sqlite")


@pytest.mark.e2e
def test_ledger_totals_agree_with_the_simulators_billing(tmp_path, simulator_factory, capsys):
    sim = simulator_factory(offers=pricey_network)
    wf = transfer_workflow(tmp_path / "wf", 40_000_000)
    result = run_snakemake(wf, sim.url, sim.api_key, "--vastai-progress-interval", "0.5")
    assert result.returncode == 0, result.stderr[-4000:]
    truth = sim.truth()
    assert alive(truth) == []
    billed = {i["id"]: i for i in truth["instances"] if not i.get("foreign")}
    journal = journal_at(wf)
    rows = {r["instance_id"]: r for r in journal.instances_with_cost()}
    assert set(rows) == set(billed) and len(rows) == 2
    for iid, sim_row in billed.items():
        ours = rows[iid]
        assert ours["bytes_uploaded"] == sim_row["ssh_bytes_in"]
        assert ours["bytes_downloaded"] == sim_row["ssh_bytes_out"]
        assert ours["components"]["bandwidth"] == pytest.approx(
            sim_row["billed_bandwidth_dollars"], rel=0.01)
        assert ours["billed_dollars"] == pytest.approx(sim_row["billed_dollars"], rel=0.01)
    # bandwidth is most of this bill: 40 MB up at $4/GB, 12 MB down at $6/GB
    total = sum(r["billed_dollars"] for r in rows.values())
    assert sum(r["components"]["bandwidth"] for r in rows.values()) > 0.9 * total
    assert total == pytest.approx(sum(i["billed_dollars"] for i in billed.values()), rel=0.01)
    (run,) = journal.runs()
    assert run["balance_before"] - run["balance_after"] == pytest.approx(total, rel=0.01)
    journal.close()
    capsys.readouterr()
    assert journal_main(["--journal", str(wf / ".snakemake/vastai/journal.sqlite"),
                         "cost", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["total"]["components"]["bandwidth"] == pytest.approx(
        sum(i["billed_bandwidth_dollars"] for i in billed.values()), rel=0.01)
    assert report["balances"][0]["fell_by"] == pytest.approx(report["total"]["dollars"],
                                                             rel=0.01)
    # per rule: the rules' shares add up to the simulator's bill, bandwidth included
    assert sum(r["dollars"] for r in report["rules"]) == pytest.approx(
        sum(i["billed_dollars"] for i in billed.values()), rel=0.01)
    assert journal_main(["--journal", str(wf / ".snakemake/vastai/journal.sqlite"),
                         "cost", "--detail"]) == 0
    text = capsys.readouterr().out
    assert "COMPUTE  BANDWIDTH" in text and "BALANCE OF RUN" in text
    # progress: the 40 MB upload (above the bar; the 12 MB are under it) says when it is
    # done; lines while it runs are shown by the crash test below (a longer upload)
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("vastai: rule")]
    assert any(re.search(r": upload done: 38\.\d+ MiB in", ln) for ln in lines), "\n".join(lines)
    transfers = sqlite3.connect(wf / ".snakemake/vastai/journal.sqlite").execute(
        "select direction, bytes_done, ended_at is not null from transfers "
        "where bytes_done > 1000000 order by id").fetchall()
    # a transfer gets a row once it has lasted a second (journal writes are at most one a
    # second): these quick ones may have none; any they have is closed with its full size
    for direction, done, ended in transfers:
        assert ended, (direction, done)  # closed; the bytes are checked against the bill above


@pytest.mark.e2e
def test_max_spend_counts_bandwidth(tmp_path, simulator_factory):
    sim = simulator_factory(offers=pricey_network)
    wf = transfer_workflow(tmp_path / "wf", 60_000_000)  # ~$0.22 up alone; compute ~$0.001
    result = run_snakemake(wf, sim.url, sim.api_key, "--vastai-max-spend", "0.1")
    assert result.returncode != 0
    assert "--vastai-max-spend of $0.1 reached" in result.stderr
    truth = sim.truth()
    assert truth["created_count"] == 1  # rule b was never rented
    assert alive(truth) == []


def _uploading(db: Path) -> tuple[int, int] | None:
    """(transfer row bytes, instance bytes) of an upload in flight with a progress write."""
    if not db.exists():
        return None
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            row = con.execute(
                "SELECT t.bytes_done, i.bytes_uploaded FROM transfers t JOIN instances i "
                "ON i.instance_id = t.instance_id WHERE t.direction = 'upload' "
                "AND t.ended_at IS NULL AND t.bytes_done > 0").fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return None
    return row


@pytest.mark.e2e
def test_a_crash_mid_upload_keeps_its_bytes_and_the_resumed_run_counts_its_own(
        tmp_path, simulator_factory):
    """SIGKILL during a 300 MB upload: the bytes journaled with each progress write survive
    (at most ~1 s of bytes is lost); the run that resumes on that instance re-uploads ~$1.1
    of bytes, which its --vastai-max-spend of $0.5 counts, so rule b is never rented; the
    crashed run's transfer row is closed."""
    import signal
    import subprocess
    import sys

    from tests.harness.e2e import start_snakemake, wait_for

    sim = simulator_factory(offers=pricey_network)
    # A slow link (60 MB/s: the upload takes 5 s): at loopback speed the upload could end
    # before its first progress write, leaving no moment to kill it mid-upload.
    sim.add_fault("ssh_throttle", bytes_per_second=60_000_000)
    wf = transfer_workflow(tmp_path / "wf", 300_000_000)
    db = wf / ".snakemake/vastai/journal.sqlite"
    proc = start_snakemake(wf, sim.url, sim.api_key, "--vastai-progress-interval", "0.5",
                           jobs=1)
    try:
        assert wait_for(lambda: _uploading(db) is not None, timeout=120, interval=0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
    lines = [ln for ln in out.splitlines() if ln.startswith("vastai: rule")]
    assert any(re.search(r": upload [\d.]+ MiB of 286\.\d+ MiB \(\d+%\), .*/s, .* left$", ln)
               for ln in lines), out[-3000:]  # a sentence, no key=value tail
    con = sqlite3.connect(db)  # one query: one snapshot of the journal
    ((row_bytes, journaled),) = con.execute(
        "SELECT t.bytes_done, i.bytes_uploaded FROM transfers t, instances i").fetchall()
    con.close()
    # written with the progress row, in its transaction (before: 0 until the upload ended;
    # the host's own count is not compared here: it lags by what was still in flight)
    assert 0 < row_bytes <= journaled

    subprocess.run([sys.executable, "-m", "snakemake", "--unlock", "--cores", "1"], cwd=wf,
                   check=True, capture_output=True)
    again = run_snakemake(wf, sim.url, sim.api_key, "--vastai-max-spend", "0.5", jobs=1)
    truth = sim.truth()
    assert alive(truth) == []
    assert again.returncode != 0 and "--vastai-max-spend of $0.5 reached" in again.stderr, \
        again.stderr[-3000:]
    assert truth["created_count"] == 1  # resumed on the first instance; b never rented
    journal = journal_at(wf)
    first, second = (r["id"] for r in journal.runs())
    (iid,) = journal.run_bytes(second)
    assert journal.run_bytes(second)[iid][0] >= 300_000_000
    assert journal.run_cost(second)[1] > 1.0
    assert journal.transfers(in_flight=True) == []  # the crashed run's row is closed
    assert journal.run_bytes(first)[iid][0] == journaled
    journal.close()


def test_a_take_whose_journal_write_failed_is_taken_again():
    meter = ledger.ByteMeter()
    meter.sent(100)
    meter.received(7)
    up, down = meter.take()
    meter.untake(up, down)
    meter.sent(1)
    assert meter.take() == (101, 7)


def test_the_meter_counts_what_the_instances_ssh_server_counts(tmp_path):
    """Every channel kind (upload, download, command with stdin, job follow): the client's
    counts equal the simulated host's, which its bandwidth bill is made from."""
    import sys
    import uuid

    from snakemake_executor_plugin_vastai.run.keys import RunKey
    from snakemake_executor_plugin_vastai.simulator.sshd import InstanceSSH
    from snakemake_executor_plugin_vastai.transports.ssh.channels import Endpoint
    from snakemake_executor_plugin_vastai.transports.ssh.paths import AllowedPaths
    from snakemake_executor_plugin_vastai.transports.ssh.session import RemoteSession

    key = RunKey.load_or_create(tmp_path / "keys", "run-ledger")
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    ssh = InstanceSSH(sandbox=sandbox, tag=f"ledger-{uuid.uuid4().hex[:8]}",
                      authorized_keys=lambda: [key.public_line],
                      env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"})
    port = ssh.start()
    meter = ledger.ByteMeter()
    try:
        session = RemoteSession.connect(Endpoint("127.0.0.1", port), key.pkey,
                                        pinned_host_key=None, meter=meter)
        data = tmp_path / "in.bin"
        data.write_bytes(os.urandom(3_000_000))
        session.upload([(data, "in.bin")], "job")
        assert session.run("cat > job/copy.bin", stdin=b"y" * 100_000).rc == 0
        back = tmp_path / "back"
        session.download("job", ["in.bin", "copy.bin"], back,
                         allowed=AllowedPaths(["in.bin", "copy.bin"], []))
        session.launch("job", "echo hello from the job; head -c 50000 /dev/zero")
        session.follow("job", on_output=lambda _b: None)
        session.close()
    finally:
        ssh.stop()
    assert (back / "in.bin").read_bytes() == data.read_bytes()
    assert meter.uploaded == ssh.bytes_in and meter.downloaded == ssh.bytes_out
    assert meter.uploaded > 3_100_000 and meter.downloaded > 3_150_000
