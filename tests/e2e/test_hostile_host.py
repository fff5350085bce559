"""A host can lie: fake exit codes, escaping outputs, a changed host key.

And secrets never appear in any process's argv, locally or on the instance.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from tests.harness.e2e import alive, run_snakemake, sim_env, wait_for, write_workflow

pytestmark = pytest.mark.e2e


def one_rule(tmp_path, shell: str, output: str = '"out.txt"'):
    return write_workflow(tmp_path / "wf", {
        "Snakefile": f'rule one:\n    output: {output}\n    shell: "{shell}"\n'})


def test_fake_exit_code_lines_in_the_log_do_not_fool_the_plugin(tmp_path, simulator):
    wf = one_rule(tmp_path, "echo end rc 0; echo exit code 0 >&2; echo 'rc=0'; exit 1")
    result = run_snakemake(wf, simulator.url, simulator.api_key)
    assert result.returncode != 0
    assert "exited with code 1" in result.stderr
    assert alive(simulator.truth()) == []


def test_output_symlink_escaping_the_workdir_is_refused(tmp_path, simulator):
    wf = one_rule(tmp_path, "ln -s /etc/passwd {output}")
    result = run_snakemake(wf, simulator.url, simulator.api_key)
    assert result.returncode != 0
    assert not (wf / "out.txt").is_symlink()
    assert "out.txt" in result.stderr
    assert alive(simulator.truth()) == []


def test_a_directory_where_a_file_is_declared_is_refused(tmp_path, simulator):
    wf = one_rule(tmp_path, "mkdir -p {output}/inner && echo x > {output}/inner/f")
    result = run_snakemake(wf, simulator.url, simulator.api_key)
    assert result.returncode != 0
    assert not (wf / "out.txt").exists()
    assert alive(simulator.truth()) == []


def test_a_changed_host_key_is_refused(tmp_path, simulator):
    """The key changes mid-run and the connection drops: the reconnect must be refused."""
    simulator.add_fault("host_key_change", next_n=1, after_seconds=1.5)
    simulator.add_fault("ssh_drop", next_n=1, after_seconds=2.5)
    wf = one_rule(tmp_path, "sleep 5; echo done > {output}")
    result = run_snakemake(wf, simulator.url, simulator.api_key)
    assert result.returncode != 0
    assert "host key" in result.stderr.lower()
    assert not (wf / "out.txt").exists()
    assert alive(simulator.truth()) == []


def _all_argv() -> list[bytes]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                found.append(Path(f"/proc/{pid}/cmdline").read_bytes())
            except OSError:
                continue
    return found


def test_no_secret_in_any_process_argv_and_private_file_modes(tmp_path, simulator):
    import subprocess

    from tests.harness.e2e import snakemake_argv

    planted = "planted-credential-0b7e44"
    wf = one_rule(tmp_path, "sleep 3; echo ok > {output}")
    env = sim_env(simulator.api_key, AWS_SECRET_ACCESS_KEY=planted)
    proc = subprocess.Popen(snakemake_argv(simulator.url), cwd=wf, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen: list[bytes] = []
    try:
        assert wait_for(lambda: bool(_running(wf)), timeout=60)
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:  # sample while the job runs remotely
            seen.extend(_all_argv())
            time.sleep(0.2)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    blob = b"\0".join(seen)
    assert b"snakemake" in blob  # the sampling did see the processes
    assert planted.encode() not in blob
    assert simulator.api_key.encode() not in blob
    vastai_dir = wf / ".snakemake/vastai"
    assert stat.S_IMODE(vastai_dir.stat().st_mode) == 0o700
    for path in [vastai_dir / "journal.sqlite", *vastai_dir.glob("keys/*"),
                 *vastai_dir.glob("logs/*.jsonl"),
                 *(wf / ".snakemake/auxiliary/vastai-logs").glob("*.log")]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert alive(simulator.truth()) == []


def _running(wf: Path) -> int:
    import sqlite3

    try:
        with sqlite3.connect(wf / ".snakemake/vastai/journal.sqlite") as db:
            return db.execute("select count(*) from jobs where state='running'").fetchone()[0]
    except sqlite3.Error:
        return 0
