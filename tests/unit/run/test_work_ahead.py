"""Whether a job may still come that an idle warm instance could serve (work_ahead.py).

The jobs here stand in for Snakemake's (the edge): only the attributes the check
reads. The end-to-end behaviour is in test_e2e_reuse.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from snakemake_executor_plugin_vastai.run.work_ahead import may_come, work_ahead


@dataclass(eq=False)
class Job:
    name: str
    is_local: bool = False
    is_checkpoint: bool = False
    jobs: list = field(default_factory=list)

    def is_group(self) -> bool:
        return bool(self.jobs)


def test_only_running_and_local_jobs_left_means_none_may_come():
    a, b, everything = Job("a"), Job("b"), Job("all", is_local=True)
    assert may_come([a, b, everything], [a, b]) is False
    assert may_come([], []) is False


def test_a_job_not_yet_running_may_come():
    a, b = Job("a"), Job("b")
    assert may_come([a, b], [a]) is True


def test_a_group_job_counts_its_members_as_running():
    a, b = Job("a"), Job("b")
    group = Job("group", jobs=[a, b])
    assert may_come([a, b], [group]) is False
    assert may_come([a, b, Job("c")], [group]) is True


def test_a_running_checkpoint_may_add_jobs():
    check = Job("check", is_checkpoint=True)
    assert may_come([check], [check]) is True
    member = Job("m", is_checkpoint=True)
    assert may_come([member], [Job("group", jobs=[member])]) is True


def test_cannot_tell_means_yes():
    def broken():
        raise RuntimeError("Set changed size during iteration")

    assert work_ahead(broken, list)() is True
    assert work_ahead(None, list)() is True
    a = Job("a")
    assert work_ahead(lambda: [a], lambda: [a])() is False
