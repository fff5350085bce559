"""Warm instances without a simulator: the instance table, the journal's guarded lease,
the pool's matching, choice, expiry and its thread safety (real journal, real pool)."""

from __future__ import annotations

import threading
import time
from collections import deque
from types import SimpleNamespace

import pytest

from snakemake_executor_plugin_vastai.journal.store import Journal, JournalError, StaleTransition
from snakemake_executor_plugin_vastai.lifecycle import instance_life
from snakemake_executor_plugin_vastai.lifecycle.instance_machine import (
    HOLDING,
    TRANSITIONS,
    InstanceState,
)
from snakemake_executor_plugin_vastai.run.pool import (
    NO_WORK_AHEAD,
    Pool,
    WarmInstance,
    misfit,
)
from snakemake_executor_plugin_vastai.vastai.offers import OfferSettings, build_offer_request
from snakemake_executor_plugin_vastai.vastai.query import offer_fits

I = InstanceState  # noqa: E741

OFFER = {"id": 7, "machine_id": 70, "gpu_name": "RTX 4090", "num_gpus": 1, "dph_total": 0.4,
         "verified": True, "external": False, "rentable": True, "rented": False,
         "hosting_type": 1, "reliability": 0.99, "geolocation": "Germany, DE",
         "cpu_cores_effective": 16, "cpu_ram": 65536, "disk_space": 200.0,
         "cuda_max_good": 12.4}


# -- the table ---------------------------------------------------------------------------
def edges() -> list[tuple[str, str, str]]:
    out = []
    for row in TRANSITIONS:
        sources = row["source"] if isinstance(row["source"], list) else [row["source"]]
        out += [(s.value, row["dest"].value, row["trigger"]) for s in sources]
    return out


def test_every_instance_state_is_reachable_and_every_holding_state_can_fail():
    seen, queue = {I.RENTING.value}, deque([I.RENTING.value])
    while queue:
        state = queue.popleft()
        for src, dest, _ in edges():
            if src == state and dest not in seen:
                seen.add(dest)
                queue.append(dest)
    assert seen == {s.value for s in I}
    for state in HOLDING:
        assert {d for s, d, t in edges() if s == state and t == "fail"} == {I.DESTROYING}


def test_idle_is_entered_only_by_giving_back_a_leased_instance_or_adopting_a_kept_one():
    """An instance whose outputs are home: given back by its job, or kept warm past an
    earlier run's end (which it entered from idle) and adopted by the next run."""
    assert sorted((s, t) for s, d, t in edges() if d == I.IDLE) == [
        (I.KEPT.value, "adopted"), (I.LEASED.value, "given_back")]
    assert [(s, t) for s, d, t in edges() if d == I.KEPT] == [(I.IDLE.value, "kept_warm")]
    assert {s for s, d, _ in edges() if d == I.GONE} == {I.DESTROYING.value, I.RENTING.value}


# -- the journal -------------------------------------------------------------------------
@pytest.fixture
def journal(tmp_path):
    j = Journal.for_workdir(tmp_path)
    yield j
    j.close()


def rented(journal: Journal, n: int = 1) -> tuple[str, list[str], list[str]]:
    """A run with n booted instances, each leased by the job that rented it."""
    run = journal.start_run(snakemake_version="9", plugin_version="0", settings={})
    jobs, labels = [], []
    for i in range(n):
        job = journal.add_job(run_id=run, rule="r", snakemake_jobid=i, fingerprint=f"f{i}",
                              attempt=1, state="searching")
        label = f"{journal.label_prefix}{job}"
        journal.record_rent_intent(job_id=job, run_id=run, label=label,
                                   offer={**OFFER, "id": 100 + i})
        instance_life.created(journal, label, 1000 + i)
        instance_life.fire(journal, label, "booted", job_id=job, leased_by=job)
        jobs.append(job)
        labels.append(label)
    return run, jobs, labels


def test_the_machine_keeps_the_instance_life_and_refuses_what_the_table_lacks(journal):
    _run, jobs, (label,) = rented(journal)
    with pytest.raises(StaleTransition):
        instance_life.fire(journal, label, "leased")  # leased, not idle
    instance_life.fire(journal, label, "given_back", job_id=jobs[0], leased_by=None,
                       idle_since=time.time())
    assert instance_life.lease(journal, label, "other-job") is True
    assert instance_life.lease(journal, label, "third-job") is False  # already leased
    instance_life.destroy_requested(journal, label=label)  # the job failed: the intent
    instance_life.destroyed(journal, label=label)
    life = [(r["from_state"], r["to_state"], r["trigger"]) for r in
            journal.instance_history(label)]
    assert life == [(None, "renting", "rent_intent"), ("renting", "booting", "created"),
                    ("booting", "leased", "booted"), ("leased", "idle", "given_back"),
                    ("idle", "leased", "leased"), ("leased", "destroying", "fail"),
                    ("destroying", "gone", "destroyed")]
    row = next(r for r in journal.instances() if r["label"] == label)
    assert (row["state"], row["leased_by"], row["served"]) == ("gone", "other-job", 1)


def test_a_destroy_requested_instance_cannot_be_leased(journal):
    _run, _jobs, (label,) = rented(journal)
    instance_life.fire(journal, label, "given_back", leased_by=None)
    instance_life.destroy_requested(journal, label=label)
    assert instance_life.lease(journal, label, "late-job") is False
    row = journal.instance_row(label=label)
    assert (row["state"], row["destroy_requested_at"] is not None) == ("destroying", True)


def test_the_journal_records_facts_and_never_moves_an_instance_itself(journal):
    """The journal's record_* methods store facts only: every move is the machine's."""
    _run, _jobs, (label,) = rented(journal)
    journal.record_destroy_requested(label=label)
    journal.record_instance_destroyed(label=label)
    row = journal.instance_row(label=label)
    assert row["state"] == "leased"
    assert row["destroy_requested_at"] is not None and row["destroyed_at"] is not None
    assert [r["trigger"] for r in journal.instance_history(label)] == [
        "rent_intent", "created", "booted"]


def test_a_move_another_process_made_first_is_refused_and_changes_nothing(journal, tmp_path):
    """Two processes on one journal: the second to move an idle instance loses the guard."""
    _run, _jobs, (label,) = rented(journal)
    instance_life.fire(journal, label, "given_back", leased_by=None, idle_since=time.time())
    other = Journal.for_workdir(tmp_path)
    try:
        stale_row = journal.instance_row(label=label)  # this process read idle ...
        assert instance_life.lease(other, label, "their-job") is True  # ... they leased it
        with pytest.raises(StaleTransition, match="another job or process"):
            journal.move_instance(label, source=stale_row["state"], dest="leased",
                                  trigger="leased", leased_by="our-job")
    finally:
        other.close()
    row = journal.instance_row(label=label)
    assert (row["state"], row["leased_by"]) == ("leased", "their-job")
    assert [r["job_id"] for r in journal.instance_history(label)
            if r["trigger"] == "leased"] == ["their-job"]  # one lease, theirs


def test_an_instance_that_vanished_passes_through_destroying_to_gone(journal):
    _run, _jobs, (label,) = rented(journal)
    instance_life.destroyed(journal, label=label)
    assert [(r["from_state"], r["to_state"]) for r in journal.instance_history(label)][-2:] \
        == [("leased", "destroying"), ("destroying", "gone")]
    assert journal.instance_row(label=label)["destroyed_at"] is not None


# -- matching ----------------------------------------------------------------------------
def request(**settings):
    resources = settings.pop("resources", {})
    exclude = settings.pop("exclude", ())
    return build_offer_request(OfferSettings(**settings), resources, 1,
                               exclude_machines=exclude)


def warm(label="L", price=0.4, image="img", disk=40.0, **offer) -> WarmInstance:
    return WarmInstance(label=label, instance_id=hash(label) % 10**6,
                        offer={**OFFER, "dph_total": price, **offer}, image=image,
                        disk_gb=disk, endpoint=SimpleNamespace(host="h", port=1))


def test_an_instance_fits_a_request_its_own_search_would_have_found():
    assert offer_fits(OFFER, request().query)
    assert offer_fits(OFFER, request(gpu_name="RTX_4090", geolocation="EU").query)
    assert misfit(warm(), request(), "img") is None


@pytest.mark.parametrize(("why", "req", "image", "disk"), [
    ("gpu_name", request(gpu_name="H100_SXM"), "img", 40.0),
    ("num_gpus", request(resources={"gpu": 2}), "img", 40.0),
    ("cpu_ram", request(resources={"mem_mb": 200_000}), "img", 40.0),
    ("dph_total", request(max_price=0.1), "img", 40.0),
    ("geolocation", request(geolocation="NA"), "img", 40.0),
    ("reliability", request(reliability=0.995), "img", 40.0),
    ("machine_id", request(exclude=[70]), "img", 40.0),  # the job failed on it before
    ("image", request(), "other-image", 40.0),
    ("disk", request(disk_gb=100), "img", 40.0),
])
def test_an_instance_that_misses_one_need_does_not_fit(why, req, image, disk):
    reason = misfit(warm(disk=disk), req, image)
    assert reason is not None and why in reason


def test_an_offer_lacking_a_filtered_field_does_not_fit():
    offer = {k: v for k, v in OFFER.items() if k != "cuda_max_good"}
    assert not offer_fits(offer, request(search_query="cuda_max_good>=12").query)


# -- the pool ----------------------------------------------------------------------------
class Log:
    def __init__(self):
        self.events = []

    def __getattr__(self, level):
        return lambda event, **kw: self.events.append((level, event, kw))


def pool_with(journal, n, **kw):
    _run, jobs, labels = rented(journal, n)
    destroyed = []
    pool = Pool(journal, lambda iid, label: destroyed.append(label), Log(), **kw)
    return pool, jobs, labels, destroyed


def test_the_cheapest_fitting_idle_instance_wins(journal):
    pool, jobs, labels, _ = pool_with(journal, 3)
    prices = [0.5, 0.2, 0.3]
    for job, label, price in zip(jobs, labels, prices, strict=True):
        assert pool.give_back(warm(label, price=price, image="img"), job)
    got = pool.lease("next", request(), "img")
    assert got is not None and got.label == labels[1]
    got = pool.lease("next2", request(max_price=0.35), "img")
    assert got is not None and got.label == labels[2]
    assert pool.lease("next3", request(max_price=0.35), "img") is None  # 0.5 is too dear
    assert pool.leases == 2


def test_two_threads_never_lease_the_same_instance(journal):
    pool, jobs, labels, _ = pool_with(journal, 1)
    pool.give_back(warm(labels[0], image="img"), jobs[0])
    got, barrier = [], threading.Barrier(8)

    def take(i):
        barrier.wait()
        got.append(pool.lease(f"job{i}", request(), "img"))

    threads = [threading.Thread(target=take, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len([g for g in got if g is not None]) == 1
    assert journal.instances()[0]["served"] == 1


def test_an_idle_instance_expires_after_the_timeout_through_the_teardown(journal):
    pool, jobs, labels, destroyed = pool_with(journal, 1, idle_timeout=0.3)
    pool.give_back(warm(labels[0], image="img"), jobs[0])
    deadline = time.monotonic() + 5
    while not destroyed and time.monotonic() < deadline:
        time.sleep(0.05)
    assert destroyed == labels
    assert pool.lease("late", request(), "img") is None
    assert journal.instances()[0]["state"] == "destroying"
    pool.drain("end")


def test_drain_ends_every_idle_instance_and_refuses_new_ones(journal):
    pool, jobs, labels, destroyed = pool_with(journal, 2, idle_timeout=600)
    pool.give_back(warm(labels[0], image="img"), jobs[0])
    assert pool.drain("the run ended") == 1
    assert destroyed == labels[:1]
    assert pool.give_back(warm(labels[1], image="img"), jobs[1]) is False  # after the end


def test_an_instance_the_pool_refuses_is_torn_down_by_the_pool(journal):
    """Its job has ended (gave_back): the instance is the pool's, which ends one it
    cannot keep (the run drains, the journal refuses) instead of the job's driver."""
    pool, jobs, labels, destroyed = pool_with(journal, 2, idle_timeout=600)
    original = journal.move_instance

    def refuse(label, **kw):
        raise JournalError("database is locked")

    journal.move_instance = refuse
    try:
        assert pool.give_back(warm(labels[0], image="img"), jobs[0]) is False
    finally:
        journal.instance_transition = original
    assert destroyed == labels[:1] and pool.idle_count() == 0
    pool.drain("the run ended")
    assert pool.give_back(warm(labels[1], image="img"), jobs[1]) is False
    assert destroyed == labels


def test_a_disabled_pool_never_leases(journal):
    pool, jobs, labels, _ = pool_with(journal, 1, enabled=False)
    assert pool.give_back(warm(labels[0], image="img"), jobs[0]) is False
    assert pool.lease("j", request(), "img") is None


def test_an_instance_given_back_while_the_run_drains_is_still_torn_down(journal):
    """give_back passed its check, then drain ran: the late one must not stay idle."""
    pool, jobs, labels, destroyed = pool_with(journal, 1, idle_timeout=600)
    original = pool.journal.move_instance

    def drain_in_between(*args, **kwargs):
        result = original(*args, **kwargs)
        pool.drain("the run ended")  # lands after the check, before the instance joins
        return result

    pool.journal.move_instance = drain_in_between
    assert pool.give_back(warm(labels[0], image="img"), jobs[0]) is True
    pool.journal.move_instance = original
    assert destroyed == labels
    assert pool.idle_count() == 0


# -- early release: no job that could use an idle instance is left (work_ahead.py) ---------
def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    return predicate()


def test_an_idle_instance_goes_once_no_job_is_left_not_after_the_timeout(journal):
    ahead = threading.Event()
    ahead.set()
    pool, jobs, labels, destroyed = pool_with(journal, 1, idle_timeout=600,
                                              work_ahead=ahead.is_set)
    assert pool.give_back(warm(labels[0], image="img"), jobs[0])
    time.sleep(1.5)  # work may still come: the reaper leaves it idle
    assert destroyed == [] and pool.idle_count() == 1
    ahead.clear()  # the last jobs were submitted elsewhere
    assert wait_until(lambda: destroyed == labels)
    assert journal.instances()[0]["state"] == "destroying"
    details = [r["detail"] for r in journal.db.query(
        "select detail from instance_transitions where label = ? and trigger = 'expired'",
        [labels[0]])]
    assert details == [NO_WORK_AHEAD]
    pool.drain("end")
    assert destroyed == labels  # torn down once


def test_with_keep_warm_the_last_idle_instance_is_handed_over_not_torn_down(journal):
    """The run's last job gave its instance back while Snakemake still counted that job
    as ahead, so the reaper, not the give-back, saw the work run out: it must hand the
    instance over to the next run (--vastai-keep-warm) as the give-back would have. It
    tore it down, and the next run booted (benchmarks/watchdog.py, 2 of 6 repeats)."""
    ahead = threading.Event()
    ahead.set()
    handed = []
    pool, jobs, labels, destroyed = pool_with(
        journal, 1, idle_timeout=600, work_ahead=ahead.is_set,
        hand_over=lambda w: handed.append(w.label) or True)
    assert pool.give_back(warm(labels[0], image="img"), jobs[0])
    assert pool.idle_count() == 1 and handed == []
    ahead.clear()  # Snakemake has taken the job's end in
    assert wait_until(lambda: handed == labels)
    assert destroyed == [] and pool.kept == 1 and pool.idle_count() == 0
    pool.drain("end")
    assert destroyed == []  # kept for the next run


def test_a_journal_that_refuses_the_expiry_still_gets_the_instance_torn_down(journal):
    pool, jobs, labels, destroyed = pool_with(journal, 1, idle_timeout=600,
                                              work_ahead=lambda: False)
    original = journal.move_instance

    def refuse_expiry(label, **kw):
        if kw.get("trigger") == "expired":
            raise JournalError("database is locked")
        return original(label, **kw)

    journal.move_instance = refuse_expiry
    assert pool.give_back(warm(labels[0], image="img"), jobs[0]) is True
    assert destroyed == labels  # the teardown journals its own intent before the DELETE
    assert pool.idle_count() == 0


def test_a_lease_racing_the_early_release_either_leases_or_destroys(tmp_path):
    """Four late jobs lease while the release runs: the instance serves one or goes."""
    for round_ in range(10):
        journal = Journal.for_workdir(tmp_path / str(round_))
        pool, jobs, labels, destroyed = pool_with(journal, 1, idle_timeout=600)
        pool.give_back(warm(labels[0], image="img"), jobs[0])
        got, barrier = [], threading.Barrier(5)

        def take(i, got=got, barrier=barrier, pool=pool, round_=round_):
            barrier.wait()
            got.append(pool.lease(f"late{round_}-{i}", request(), "img"))

        threads = [threading.Thread(target=take, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        barrier.wait()
        pool.expire(labels[0], NO_WORK_AHEAD)
        for t in threads:
            t.join()
        leased = [g for g in got if g is not None]
        assert len(leased) + len(destroyed) == 1, (leased, destroyed)
        pool.drain("end")
        journal.close()


# -- price: keep an idle instance or replace it (costs/warm.worth_keeping) ----------------------
@pytest.mark.parametrize(("idle", "fresh", "boot", "work", "keep"), [
    (0.40, None, 180, 600, True),  # nothing free to replace it with
    (0.40, 0.40, 180, 10**6, True),  # not dearer: a boot saved for nothing
    (0.40, 0.10, 180, None, True),  # no job measured yet: the saved boot is certain
    (2.62, 0.11, 20, 5, False),  # the H100 against an A4000: 12.5 c > 0.06 c
    (0.21, 0.20, 180, 600, True),  # premium 0.01*600 = 6 < 0.20*180 = 36 ($-seconds)
    (0.21, 0.20, 180, 36 * 100, True),  # premium equals the boot: a tie keeps
    (0.21, 0.20, 180, 36 * 100 + 1, False),  # a longer queue tips it
])
def test_an_idle_instance_is_kept_while_its_premium_is_at_most_a_fresh_boot(
        idle, fresh, boot, work, keep):
    from snakemake_executor_plugin_vastai.costs.warm import worth_keeping

    got, why = worth_keeping(idle, fresh, boot, work)
    assert got is keep
    assert why.startswith("kept" if keep else "replaced") and f"${idle:.3f}/h" in why


def test_a_dear_idle_instance_not_worth_keeping_is_torn_down_with_the_reason(journal):
    pool, jobs, labels, destroyed = pool_with(journal, 3, idle_timeout=600)
    for job, label, price in zip(jobs, labels, [2.5, 3.0, 0.3], strict=True):
        pool.give_back(warm(label, price=price, image="img"), job)
    asked = []

    def decide(w):
        asked.append(w.label)
        return (w.price < 1.0), f"priced {w.price}"

    kept = pool.lease("next", request(), "img", decide=decide)
    assert kept is not None and kept.label == labels[2]  # the cheapest, worth its price
    kept_row = journal.instance_history(labels[2])[-1]
    assert (kept_row["trigger"], kept_row["detail"]) == ("leased", "priced 0.3")
    assert pool.lease("next2", request(), "img", decide=decide) is None
    assert asked == [labels[2], labels[0]]  # cheapest first
    assert destroyed == [labels[0]]  # replaced by the cheaper offer the job rents
    dear = journal.instance_history(labels[0])[-1]
    assert (dear["trigger"], dear["detail"]) == ("expired", "priced 2.5")
    assert pool.holds(labels[1])  # one replacement per job: the rest stay for others


def test_a_failed_price_check_leaves_the_instance_idle(journal):
    pool, jobs, labels, destroyed = pool_with(journal, 1, idle_timeout=600)
    pool.give_back(warm(labels[0], image="img"), jobs[0])

    def decide(w):
        raise RuntimeError("search failed")

    with pytest.raises(RuntimeError):
        pool.lease("next", request(), "img", decide=decide)
    assert pool.idle_count() == 1 and destroyed == []
    assert pool.lease("next", request(), "img") is not None


def test_giving_back_wakes_waiting_jobs_and_expiring_ends_the_offers_claim(journal):
    woken, gone = [], []
    _run, jobs, labels = rented(journal, 1)
    pool = Pool(journal, lambda iid, label: None, Log(), idle_timeout=600,
                on_idle=lambda: woken.append(1), on_gone=gone.append)
    pool.give_back(warm(labels[0], image="img"), jobs[0])
    assert woken == [1] and pool.holds(labels[0])
    assert pool.idle_offers()[0]["id"] == OFFER["id"]
    pool.drain("the run ended")
    assert [o["id"] for o in gone] == [OFFER["id"]] and not pool.holds(labels[0])


def test_a_closed_journal_answers_the_machine_with_a_journal_error(tmp_path):
    """A reaper thread may move an instance after the run closed its journal: the error
    must be the JournalError the pool handles, not sqlite's ProgrammingError."""
    journal = Journal.for_workdir(tmp_path)
    _run, _jobs, (label,) = rented(journal)
    journal.close()
    with pytest.raises(JournalError):
        instance_life.fire(journal, label, "given_back", leased_by=None)
