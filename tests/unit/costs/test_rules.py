"""Per-rule cost: every instance's whole bill shared over the jobs it served."""

from __future__ import annotations

import pytest

from snakemake_executor_plugin_vastai.costs.rules import by_job, by_rule


def instance(label: str, job_id: str, seconds: float, dollars: float, start: float = 0.0):
    return {"label": label, "job_id": job_id, "started_at": start, "created_at": start,
            "billed_seconds": seconds, "billed_dollars": dollars}


def job(job_id: str, rule: str, label: str | None, leased: float | None, end: float | None):
    return {"id": job_id, "rule": rule, "label": label, "leased_at": leased,
            "released_at": None, "ended_at": end}


def test_a_warm_instance_splits_its_whole_bill_by_the_time_each_job_held_it():
    # 40 s billed: 10 s boot, 'train' holds it 20 s, 'report' 10 s (its last job)
    inst = instance("L1", "j1", 40.0, 0.04)
    jobs = [job("j1", "train", "L1", 10.0, 30.0), job("j2", "report", "L1", 30.0, 40.0)]
    rules = {r["rule"]: r for r in by_rule([inst], jobs, now=100.0)}
    assert rules["train"]["dollars"] == pytest.approx(0.04 * 2 / 3)
    assert rules["report"]["dollars"] == pytest.approx(0.04 / 3)
    assert rules["train"]["held_seconds"] == pytest.approx(20.0)
    assert rules["train"]["instances"] == rules["report"]["instances"] == 1


def test_the_rules_add_up_to_the_bill_and_every_job_counts():
    instances = [instance("L1", "j1", 40.0, 0.04), instance("L2", "j3", 5.0, 0.01, 50.0)]
    jobs = [job("j1", "train", "L1", 10.0, 30.0), job("j2", "report", "L1", 30.0, 40.0),
            job("j3", "boom", "L2", None, None),  # failed while booting: its instance's
            job("j4", "boom", None, None, None)]  # never got an instance
    rules = {r["rule"]: r for r in by_rule(instances, jobs, now=100.0)}
    assert sum(r["dollars"] for r in rules.values()) == pytest.approx(0.05)
    assert sum(r["instance_seconds"] for r in rules.values()) == pytest.approx(45.0)
    assert rules["boom"]["dollars"] == pytest.approx(0.01) and rules["boom"]["jobs"] == 2


def test_each_jobs_share_adds_up_to_its_rules_figure():
    instances = [instance("L1", "j1", 40.0, 0.04), instance("L2", "j3", 5.0, 0.01, 50.0)]
    jobs = [job("j1", "train", "L1", 10.0, 30.0), job("j2", "report", "L1", 30.0, 40.0),
            job("j3", "train", "L2", 50.0, 55.0)]
    shares = by_job(instances, jobs, now=100.0)
    for rule in by_rule(instances, jobs, now=100.0):
        mine = [j["id"] for j in jobs if j["rule"] == rule["rule"]]
        assert sum(shares[i]["dollars"] for i in mine) == pytest.approx(rule["dollars"])
    assert shares["j2"]["instance_seconds"] == pytest.approx(40.0 / 3)
