"""``python -m snakemake_executor_plugin_vastai plan``: offers, job counts, cost range,
balance and problems, through the real snakemake CLI against the simulator; nothing is
ever rented."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from snakemake_executor_plugin_vastai.cli.plan import DEFAULT_BOOT_SECONDS, render
from tests.harness.e2e import alive, demo_workflow, run_snakemake, sim_env, write_workflow
from tests.harness.s3 import s3_server  # noqa: F401 (fixture)

pytestmark = pytest.mark.e2e


def plan(workdir: Path, sim, *extra: str, jobs: int = 4) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "snakemake_executor_plugin_vastai", "plan", "--jobs",
            str(jobs), "--vastai-api-url", sim.url, *extra]
    return subprocess.run(argv, cwd=workdir, env=sim_env(sim.api_key), capture_output=True,
                          text=True, timeout=120)


def plan_json(workdir: Path, sim, *extra: str, jobs: int = 4) -> tuple[int, dict]:
    done = plan(workdir, sim, "--json", *extra, jobs=jobs)
    assert done.returncode in (0, 1), done.stderr[-3000:]
    return done.returncode, json.loads(done.stdout)


def nothing_rented(sim) -> None:
    truth = sim.truth()
    assert truth["created_count"] == 0
    assert alive(truth) == []


def test_plan_of_the_demo_workflow_shows_offers_counts_costs_and_rents_nothing(
        tmp_path, simulator):
    wf = demo_workflow(tmp_path / "wf")
    code, got = plan_json(wf, simulator)
    assert code == 0 and got["problems"] == [] and got["stops"] is False
    rules = {r["rule"]: r for r in got["rules"]}
    assert {name: r["jobs"] for name, r in rules.items()} == {"prepare": 1, "train": 4,
                                                              "summarize": 1}
    market = simulator.truth()
    train = rules["train"]
    assert train["offers_matching"] > 3 and len(train["offers"]) == 3
    prices = [o["dph_total"] for o in train["offers"]]
    assert prices == sorted(prices)  # the cheapest first, as the run would try them
    assert "cpu_ram>=7.63" in train["query"]  # mem_mb=8000 of the rule, as the run asks
    # the estimate: 4 jobs x (boot + 10 min default) at the cheapest price, upward
    low = 4 * (DEFAULT_BOOT_SECONDS[0] + 600) / 3600 * prices[0]
    assert train["runtime_source"] == "default"
    assert train["cost_low"] == pytest.approx(low, rel=0.01)
    assert train["cost_high"] > train["cost_low"]
    assert got["balance"] == pytest.approx(100.0)  # the simulator's credit, untouched
    assert got["estimate"]["low"] == pytest.approx(sum(r["cost_low"] for r in rules.values()))
    assert market["created_count"] == 0
    text = plan(wf, simulator)
    assert text.returncode == 0, text.stderr[-3000:]
    assert "rule train: 4 job(s)" in text.stdout and "no problems found" in text.stdout
    assert "balance $100.00" in text.stdout
    nothing_rented(simulator)
    # the plan leaves no lock or marker behind: the real run then works
    run = run_snakemake(wf, simulator.url, simulator.api_key, jobs=4)
    assert run.returncode == 0, run.stderr[-3000:]
    assert alive(simulator.truth()) == []
    # and a later plan uses the boot and upload times that run measured
    _, again = plan_json(wf, simulator)
    assert again["assumptions"]["boot_source"] == "measured"
    assert again["rules"] == []  # everything is done: nothing to plan


BLOCKED = '''\
rule all:
    input: "a.txt", "b.txt", "c.txt"

rule cheap:
    output: "a.txt"
    resources: vastai_max_price="0.0001"
    shell: "echo a > {output}"

rule timed:
    output: "b.txt"
    resources: runtime=30
    shell: "echo b > {output}"

rule tooling:
    output: "c.txt"
    shell: "sh tools/helper.sh > {output}"
'''


def test_plan_names_every_problem_and_exits_1(tmp_path, simulator_factory):
    sim = simulator_factory(credit=0.01)
    wf = write_workflow(tmp_path / "wf", {"Snakefile": BLOCKED})
    (wf / "tools").mkdir()
    (wf / "tools/helper.sh").write_text("echo helped\n")  # git does not track it
    code, got = plan_json(wf, sim)
    assert code == 1 and got["stops"] is True
    kinds = {(p["kind"], p["rule"]) for p in got["problems"]}
    assert ("no_offer", "cheap") in kinds
    assert ("untracked", "tooling") in kinds
    assert ("balance", None) in kinds
    untracked = next(p for p in got["problems"] if p["kind"] == "untracked")
    assert "tools/helper.sh" in untracked["message"] and "git add" in untracked["message"]
    timed = next(r for r in got["rules"] if r["rule"] == "timed")
    assert (timed["runtime_seconds"], timed["runtime_source"]) == (1800.0, "runtime resource")
    text = plan(wf, sim)
    assert text.returncode == 1
    assert "ERROR: rule cheap: no Vast.ai offer matches" in text.stdout
    assert "ERROR: account balance $0.01 is below the high estimate" in text.stdout
    nothing_rented(sim)


FANOUT = '''\
rule all:
    input: expand("out/{i}.txt", i=range(4))

rule work:
    output: "out/{i}.txt"
    shell: "echo {wildcards.i} > {output}"
'''


def test_a_price_cap_leaving_fewer_offers_than_jobs_is_a_warning(tmp_path, simulator_factory):
    offers = [{"id": 70 + i, "dph_total": price, "hosting_type": 1}
              for i, price in enumerate([0.2, 0.3, 0.9, 1.5])]
    sim = simulator_factory(offers=offers)
    wf = write_workflow(tmp_path / "wf", {"Snakefile": FANOUT})
    code, got = plan_json(wf, sim, "--vastai-max-price", "0.5")
    assert code == 0  # a warning: the jobs wait for each other's machines
    (problem,) = got["problems"]
    assert problem["kind"] == "price_cap" and problem["stops"] is False
    assert "leaves 2 offer(s) for 4 jobs" in problem["message"]
    (work,) = got["rules"]
    assert [o["id"] for o in work["offers"]] == [70, 71]
    # the dearest of the offers the 4 concurrent jobs would take is the high end
    code, uncapped = plan_json(wf, sim)
    assert uncapped["problems"] == []
    assert uncapped["rules"][0]["cost_high"] > work["cost_high"]
    assert "warning: rule work: the price cap $0.5/h" in render(got)
    nothing_rented(sim)


def test_bad_settings_are_a_problem_and_snakemake_errors_exit_2(tmp_path, simulator):
    wf = write_workflow(tmp_path / "wf", {"Snakefile": FANOUT})
    code, got = plan_json(wf, simulator, "--vastai-reliability", "3")
    assert code == 1 and got["problems"][0]["kind"] == "settings"
    assert "--vastai-reliability" in got["problems"][0]["message"]
    code, got = plan_json(wf, simulator, "--vastai-progress-interval", "-1")
    assert code == 1 and "--vastai-progress-interval must be" in got["problems"][0]["message"]
    broken = plan(wf, simulator, "--no-such-snakemake-option")
    assert broken.returncode == 2 and "stopped before the plan was made" in broken.stderr
    nothing_rented(simulator)


def test_plan_is_a_documented_command():
    from snakemake_executor_plugin_vastai.cli import main as cli

    assert "plan" in cli.COMMANDS and "\n  plan " in cli.USAGE
    done = subprocess.run([sys.executable, "-m", "snakemake_executor_plugin_vastai", "plan",
                           "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "Nothing is rented" in done.stdout
    costs_page = (Path(__file__).parents[2] / "docs" / "costs.md").read_text()
    assert "snakemake-vastai plan --jobs 4" in costs_page


def test_start_checks_and_a_missing_key_are_problems(tmp_path, simulator):
    wf = tmp_path / "nogit"
    wf.mkdir()
    (wf / "Snakefile").write_text(FANOUT)
    argv = [sys.executable, "-m", "snakemake_executor_plugin_vastai", "plan", "--json",
            "--jobs", "2", "--vastai-api-url", simulator.url]
    env = sim_env(None, HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / "cfg"))
    done = subprocess.run(argv, cwd=wf, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr[-3000:]
    got = json.loads(done.stdout)
    kinds = {p["kind"]: p["message"] for p in got["problems"]}
    assert "start" not in kinds  # outside git the run ships what Snakemake knows
    assert "No Vast.ai API key" in kinds["api_key"]
    assert got["balance"] is None and got["rules"][0]["jobs"] == 4
    nothing_rented(simulator)


MAKES = '''\
rule all:
    input: "out.txt"

rule r:
    output: "out.txt"
    shell: "echo ran-for-real > {output}"
'''


@pytest.mark.parametrize(("args", "named"), [
    (["--executor", "local"], "--executor local"),
    (["-e", "local"], "--executor local"),
    (["--exec=local"], "--executor local"),  # argparse abbreviations are Snakemake's too
    (["-n"], "--dry-run"),
    (["--touch"], "--touch"),
    (["-pt"], "--touch"),  # a bundled short flag
    (["--delete-all-output"], "--delete-all-output"),
    (["--delete-temp-output"], "--delete-temp-output"),
    (["--unlock"], "--unlock"),
    (["--cleanup-metadata", "out.txt"], "--cleanup-metadata"),
])
def test_arguments_that_would_run_or_change_anything_are_refused(tmp_path, simulator, args,
                                                                  named):
    wf = write_workflow(tmp_path / "wf", {"Snakefile": MAKES})
    made = wf / "made.txt"
    if "--executor" in named:
        made = wf / "out.txt"  # the local executor would make it
    else:
        (wf / "out.txt").write_text("kept\n")
        os.utime(wf / "out.txt", (1_000_000, 1_000_000))  # --touch would change this
    done = plan(wf, simulator, *args, jobs=1)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert named in done.stderr and "Nothing was run or rented" in done.stderr
    assert not made.exists()
    if "--executor" not in named:
        assert (wf / "out.txt").read_text() == "kept\n"
        assert (wf / "out.txt").stat().st_mtime == 1_000_000
    nothing_rented(simulator)


def test_a_profile_that_touches_is_refused_too(tmp_path, simulator):
    wf = write_workflow(tmp_path / "wf", {"Snakefile": MAKES, "prof/config.yaml": "touch: true\n"})
    done = plan(wf, simulator, "--profile", "prof", jobs=1)
    assert done.returncode == 2 and "--touch" in done.stderr
    assert not (wf / "out.txt").exists()
    nothing_rented(simulator)


def test_the_vastai_executor_goes_last_so_argparse_keeps_it():
    from snakemake_executor_plugin_vastai.cli.plan_safety import snakemake_argv

    assert snakemake_argv(["--jobs", "1", "-e", "x"])[-2:] == ["--executor", "vastai"]
    # after '--' it would be a target, so it goes before
    assert snakemake_argv(["--jobs", "1", "--", "all"]) == [
        "-m", "snakemake", "--jobs", "1", "--executor", "vastai", "--", "all"]


def test_a_stray_plan_variable_fails_a_real_run_and_overwrites_nothing(tmp_path, simulator):
    wf = demo_workflow(tmp_path / "wf")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    (private / "marker").write_text("the-right-nonce")
    (private / "plan.json").write_text("an earlier plan\n")
    cases = [{"SNAKEMAKE_VASTAI_PLAN": str(victim)},  # a file, no nonce
             {"SNAKEMAKE_VASTAI_PLAN": str(private)},  # no nonce
             {"SNAKEMAKE_VASTAI_PLAN": str(private), "SNAKEMAKE_VASTAI_PLAN_NONCE": "wrong"},
             # the right nonce, but the plan file exists: never overwritten
             {"SNAKEMAKE_VASTAI_PLAN": str(private),
              "SNAKEMAKE_VASTAI_PLAN_NONCE": "the-right-nonce"}]
    for stray in cases:
        done = run_snakemake(wf, simulator.url, simulator.api_key, jobs=4,
                             env=sim_env(simulator.api_key, **stray))
        assert done.returncode != 0
        assert "unset SNAKEMAKE_VASTAI_PLAN" in done.stderr, done.stderr[-3000:]
        assert victim.read_text() == "precious\n"
        assert (private / "plan.json").read_text() == "an earlier plan\n"
        nothing_rented(simulator)
    again = run_snakemake(wf, simulator.url, simulator.api_key, jobs=4)
    assert again.returncode == 0, again.stderr[-3000:]
    assert alive(simulator.truth()) == []


def test_the_plan_directory_is_private_and_accepted_only_with_its_nonce(tmp_path):
    from snakemake_executor_plugin_vastai.cli.plan_safety import (
        NotAPlan,
        plan_directory,
        plan_target,
        write_new,
    )

    with plan_directory() as (target, env):
        assert plan_target(env) == target
        assert target.parent.stat().st_mode & 0o777 == 0o700
        with pytest.raises(NotAPlan, match="unset SNAKEMAKE_VASTAI_PLAN"):
            plan_target({**env, "SNAKEMAKE_VASTAI_PLAN_NONCE": "x" + env[
                "SNAKEMAKE_VASTAI_PLAN_NONCE"][1:]})
        target.parent.chmod(0o755)  # readable by others: not a plan directory
        with pytest.raises(NotAPlan):
            plan_target(env)
        target.parent.chmod(0o700)
        write_new(target, "{}")
        with pytest.raises(NotAPlan, match="never overwrites"):
            write_new(target, "[]")
        assert target.read_text() == "{}"
    assert not target.parent.exists()  # gone with the plan: a leaked pair then fails
    with pytest.raises(NotAPlan):
        plan_target(env)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(NotAPlan):
        write_new(link, "{}")  # O_NOFOLLOW|O_EXCL: a link is not followed
    assert not (tmp_path / "elsewhere").exists()


def test_the_plan_runs_the_runs_own_start_checks(tmp_path, simulator):
    """Deploy paths that select nothing stop the run before renting: the plan says so."""
    wf = demo_workflow(tmp_path / "wf")
    code, got = plan_json(wf, simulator, "--vastai-deploy-paths", "no_such_file.py", jobs=2)
    assert code == 1
    start = [p for p in got["problems"] if p["kind"] == "start"]
    assert start and "no_such_file.py" in start[0]["message"], got["problems"]
    run = run_snakemake(wf, simulator.url, simulator.api_key, "--vastai-deploy-paths",
                        "no_such_file.py", jobs=2)
    assert run.returncode != 0 and "no_such_file.py" in run.stderr  # the run agrees
    nothing_rented(simulator)


def test_the_plan_says_what_a_workflow_outside_git_ships(tmp_path, simulator):
    """As the run warns (test_e2e_bad_input): the plan names what git would have added;
    it does not stop the run."""
    wf = tmp_path / "nogit"
    (wf / "scripts").mkdir(parents=True)
    (wf / "scripts" / "make.py").write_text("open(snakemake.output[0], 'w').write('x')\n")
    (wf / "Snakefile").write_text('rule one:\n    output: "one.txt"\n'
                                  '    script: "scripts/make.py"\n')
    (wf / "extra.txt").write_text("git would have shipped this\n")
    code, got = plan_json(wf, simulator, jobs=1)
    assert code == 0, got["problems"]
    (problem,) = [p for p in got["problems"] if p["kind"] == "not_git"]
    assert not problem["stops"]
    assert "extra.txt" in problem["message"] and "scripts/make.py" not in problem["message"]
    nothing_rented(simulator)


def test_the_plan_runs_storage_modes_checks(tmp_path, simulator, s3_server):  # noqa: F811
    """A --default-storage-prefix whose bucket does not exist stops the run: so the plan."""
    from tests.e2e.test_e2e_storage import CHAIN, s3_env

    wf = write_workflow(tmp_path / "wf", {"Snakefile": CHAIN})
    argv = [sys.executable, "-m", "snakemake_executor_plugin_vastai", "plan", "--json",
            "--jobs", "2", "--vastai-api-url", simulator.url, "--default-storage-provider",
            "s3", "--default-storage-prefix", "s3://no-such-bucket-here/wf",
            "--storage-s3-endpoint-url", s3_server.endpoint]
    done = subprocess.run(argv, cwd=wf, env=s3_env(simulator.api_key), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1, done.stderr[-3000:]
    start = [p for p in json.loads(done.stdout)["problems"] if p["kind"] == "start"]
    assert start and "does not exist" in start[0]["message"]
    assert "no-such-bucket-here" in start[0]["message"]
    nothing_rented(simulator)


SUBSTRING = '''\
rule all:
    input: "out.txt"

rule r:
    input: "data.txt"
    output: "out.txt"
    shell: "cat data.txt > {output}"
'''


def test_an_untracked_file_is_named_only_as_a_whole_path(tmp_path, simulator):
    """An untracked a.txt no rule uses is not a problem because the command says data.txt."""
    wf = write_workflow(tmp_path / "wf", {"Snakefile": SUBSTRING, "data.txt": "x\n"})
    (wf / "a.txt").write_text("scratch\n")
    code, got = plan_json(wf, simulator, jobs=1)
    assert [p for p in got["problems"] if p["kind"] == "untracked"] == []
    assert code == 0
    nothing_rented(simulator)


@pytest.mark.parametrize(("text", "named"), [
    ("cat data.txt > out", False),
    ("gzip -c a.txt.gz", False),
    ("cat sub/a.txt", False),
    ("cat a.txtx", False),
    ("cat a.txt > out", True),
    ("cat ./a.txt", True),
    ("cat 'a.txt'", True),
    ("cat {workflow.basedir}/a.txt", True),
    ("cat a.txt; echo", True),
    ("cat a.txt", True),
])
def test_names_path_matches_path_tokens(text, named):
    from snakemake_executor_plugin_vastai.cli.plan import names_path

    assert names_path(text, "a.txt") is named
    assert names_path("sh tools/helper.sh > x", "tools/helper.sh")
    assert not names_path("sh tools/helper.sh > x", "helper.sh")


LINKED = '''\
rule all:
    input: "out/a.bin", "out/d.txt"

rule a:
    input: "data/in.bin"
    output: "out/a.bin"
    shell: "head -c 100 {input} > {output}"

rule d:
    input: "data/dir"
    output: "out/d.txt"
    shell: "ls {input} > {output}"
'''


def test_symlinked_inputs_count_in_the_upload_estimate(tmp_path, simulator):
    """The upload follows links, so the estimate does: a linked 3 MB input is 3 MB."""
    wf = write_workflow(tmp_path / "wf", {"Snakefile": LINKED})
    (tmp_path / "big.bin").write_bytes(b"x" * 3_000_000)
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree/f.bin").write_bytes(b"y" * 2_000_000)
    (wf / "data").mkdir()
    (wf / "data/in.bin").symlink_to(tmp_path / "big.bin")
    (wf / "data/dir").symlink_to(tmp_path / "tree")
    code, got = plan_json(wf, simulator, jobs=1)
    assert code == 0, got["problems"]
    rules = {r["rule"]: r for r in got["rules"]}
    sources = rules["a"]["upload_bytes"] - 3_000_000
    assert 0 < sources < 100_000  # the Snakefile: the linked input is all the rest
    assert rules["d"]["upload_bytes"] == 2_000_000 + sources
    nothing_rented(simulator)


def test_planned_bytes_follows_links_and_skips_loops(tmp_path):
    from snakemake_executor_plugin_vastai.transports.progress import planned_bytes

    (tmp_path / "d/e").mkdir(parents=True)
    (tmp_path / "d/e/x").write_bytes(b"1" * 300)
    (tmp_path / "d/e/up").symlink_to(tmp_path / "d")  # a loop: skipped, as the upload does
    (tmp_path / "d/twin").symlink_to(tmp_path / "d/e")  # a second way in: sent twice
    (tmp_path / "f").write_bytes(b"1" * 50)
    (tmp_path / "link").symlink_to(tmp_path / "f")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    files = [(tmp_path / "d", "d"), (tmp_path / "f", "f"), (tmp_path / "link", "link"),
             (tmp_path / "gone", "gone"), (tmp_path / "dangling", "dangling")]
    assert planned_bytes(files) == 300 + 300 + 50 + 50


def test_one_slow_boot_does_not_inflate_the_boot_estimate(tmp_path):
    """Boots measured in the journal: the middle half counts, not the slowest ever."""
    import sqlite3

    from snakemake_executor_plugin_vastai.cli.plan import measured_times
    from snakemake_executor_plugin_vastai.journal.store import RELATIVE_PATH, Journal

    path = tmp_path / RELATIVE_PATH
    path.parent.mkdir(parents=True)
    Journal(path).close()
    boots = [62.0, 60.0, 70.0, 65.0, 1800.0, 68.0]  # one boot hung for half an hour
    with sqlite3.connect(path) as db:
        db.executemany("INSERT INTO instances (label, requested_at, contacted_at) "
                       "VALUES (?, ?, ?)",
                       [(f"l{i}", 1e9 + 1e4 * i, 1e9 + 1e4 * i + b)
                        for i, b in enumerate(boots)])
        db.execute("INSERT INTO instances (label, requested_at) VALUES ('never', 1.0)")
    low, high = measured_times(tmp_path)["boot"]
    assert (low, high) == pytest.approx((62.75, 69.5))  # quartiles of the six
    assert high < 100  # not 1800: one hung boot is not the estimate
    from snakemake_executor_plugin_vastai.cli.plan import boot_range

    assert boot_range([90.0]) == [90.0, 90.0]
    assert boot_range([60.0, 80.0]) == pytest.approx([65.0, 75.0])
