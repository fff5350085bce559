"""Chaos with bid instances: SIGKILL-and-restart trials while the simulator outbids some
of the work rule's bid instances (some come back within the grace, some never).

Same harness and promises as tests/e2e/test_chaos.py: nothing leaks (stopped instances
included), nothing is lost, outputs equal the local executor's, and every unfinished job
whose instance survived a kill is resumed, a preempted one too.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.harness.chaos import BID_CLASS, GRACE_ENV, assert_clean, run_trial, summarize

pytestmark = [pytest.mark.e2e, pytest.mark.chaos]
# in CI; more: SNAKEMAKE_VASTAI_PREEMPTION_GRACE=3 python -m tests.harness.chaos --only preemptions
TRIALS = 3
SEED = 3000


def test_chaos_trials_with_preemptions_leak_nothing_and_lose_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(GRACE_ENV, "3")  # the runs' environment: never-back ends in 3 s
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda n: run_trial(SEED + n, tmp_path, BID_CLASS),
                                range(TRIALS)))
    report = summarize(results)
    print(json.dumps(report, indent=1))
    assert_clean(report, TRIALS)
    assert report["kills"] >= 1  # a trial whose run ends before its kill time is not killed
    assert sum(r.preemptions for r in results) > 0  # the trials did meet preemptions
