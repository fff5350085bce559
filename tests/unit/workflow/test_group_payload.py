"""What a group job brings home: every member's outputs, logs and benchmark files."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from snakemake_executor_plugin_vastai.workflow import payload


class IOFile(str):
    """Stands in for Snakemake's IOFile: a str with flags."""

    def __new__(cls, value: str, *flags: str):
        obj = super().__new__(cls, value)
        obj.flags = dict.fromkeys(flags, True)
        obj.is_directory = "directory" in flags
        return obj


class Member(SimpleNamespace):
    def is_group(self) -> bool:
        return False


class Group:
    """A group job as Snakemake shows it: output holds only what leaves the group."""

    def __init__(self, members: list[Member]):
        self.jobs = set(members)
        self._order = members
        self.groupid = "g"

    def __iter__(self):
        return iter(self._order)

    def is_group(self) -> bool:
        return True


def member(rule: str, jobid: int, output: list, log: list = (), benchmark=None) -> Member:
    return Member(rule=SimpleNamespace(name=rule), jobid=jobid, output=output, log=list(log),
                  benchmark=benchmark)


Member.__hash__ = object.__hash__


def make_group() -> Group:
    a = member("a", 3, [IOFile("out/a.txt"), IOFile("tmp/t.txt", "temp"),
                        IOFile("p/stream", "pipe")], ["logs/a.log"])
    b = member("b", 2, [IOFile("out/b"), IOFile("s/socket", "service")], ["logs/b.log"],
               IOFile("bench/b.tsv"))
    b.output[0].is_directory = True
    return Group([a, b])


def test_every_member_brings_its_outputs_logs_and_benchmark(tmp_path: Path):
    back = payload.job_homecoming(make_group(), tmp_path, "group-g", succeeded=True)
    assert back.files == ["out/a.txt", "tmp/t.txt", "logs/a.log", "logs/b.log", "bench/b.tsv"]
    assert back.directories == ["out/b"]
    assert back.optional == ("tmp/t.txt",)  # consumed in the group: may be gone


def test_pipes_and_services_never_travel(tmp_path: Path):
    back = payload.job_homecoming(make_group(), tmp_path, "group-g", succeeded=True)
    assert "p/stream" not in back.paths and "s/socket" not in back.paths


def test_a_failed_group_brings_only_the_logs(tmp_path: Path):
    back = payload.job_homecoming(make_group(), tmp_path, "group-g", succeeded=False)
    assert back.paths == ["logs/a.log", "logs/b.log"]


def test_a_single_jobs_temp_output_is_not_optional(tmp_path: Path):
    job = member("a", 1, [IOFile("tmp/t.txt", "temp")])
    assert payload.job_homecoming(job, tmp_path, "a", succeeded=True).optional == ()


def test_members_are_listed_in_run_order():
    assert payload.group_members(make_group()) == ["a (job 3)", "b (job 2)"]


def test_the_failed_member_is_named_with_its_log(tmp_path: Path):
    log = tmp_path / "remote.log"
    log.write_text("rule a:\n    output: out/a.txt\n[Tue]\nError in rule b:\n    jobid: 2\n")
    note = payload.failed_members_note(make_group(), str(log))
    assert note == "; failed in group g: rule b (log: logs/b.log)"
    assert payload.failed_members_note(make_group(), str(tmp_path / "absent.log")) == ""
