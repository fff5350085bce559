"""A run's end in the words people read: failures first, retries counted once."""

from __future__ import annotations

import doctest

from snakemake_executor_plugin_vastai.run import verdict as verdict_module
from snakemake_executor_plugin_vastai.run.verdict import final_states, verdict


def job(jobid: int | None, attempt: int, state: str, run: str = "r1") -> dict:
    return {"id": f"{run}-{jobid}-{attempt}", "run_id": run, "snakemake_jobid": jobid,
            "attempt": attempt, "state": state, "created_at": float(attempt)}


def test_a_finished_run_with_failed_jobs_reads_failed_with_the_count():
    states = ["failed"] * 3 + ["succeeded"] * 3
    assert verdict("finished", states) == "failed (3 of 6 jobs)"


def test_a_run_without_failures_keeps_its_recorded_outcome():
    assert verdict("finished", ["succeeded", "cancelled"]) == "finished"
    assert verdict("unfinished", []) == "unfinished"


def test_a_retried_job_counts_once_as_its_last_attempt():
    jobs = [job(1, 1, "failed"), job(1, 2, "succeeded"), job(2, 1, "failed"),
            job(2, 2, "failed"), job(None, 1, "cancelled")]
    assert sorted(final_states(jobs)) == ["cancelled", "failed", "succeeded"]
    assert verdict("finished", final_states(jobs)) == "failed (1 of 3 jobs)"


def test_the_examples_in_the_docstring_hold():
    assert doctest.testmod(verdict_module).failed == 0
