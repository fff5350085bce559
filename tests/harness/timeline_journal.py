"""A large journal written through the real Journal API on a controlled clock.

For the timeline at scale (500 jobs) without renting 500 simulated instances:
jobs run in waves, every fourth one is served by the instance its predecessor
rented (warm reuse, with a ``leased`` state the way issue 14 journals it), one
is ``preempted``, every 25th fails with an error text full of markup, and the
second half starts after two hours in which nothing happens. Only the clock
is made up; every row is written by the journal's own methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from snakemake_executor_plugin_vastai.journal.store import Journal

EVIL_RULE = 'train<img src=x onerror="alert(1)">&'
EVIL_ERROR = "exit 3: </title><script>alert('x')</script>"
QUIET_GAP = 7200.0  # seconds with no job between the two halves
WAVE = 20  # jobs started together
STEPS = [  # (state, seconds in it) of a job that rents its own instance
    ("searching", 2.0), ("renting", 1.0), ("booting", 6.0), ("uploading", 1.5),
    ("running", 24.0), ("downloading", 1.0), ("destroying", 1.0),
]
REUSED_STEPS = [("searching", 0.5), ("leased", 0.5), ("uploading", 1.5), ("running", 18.0),
                ("downloading", 1.0), ("destroying", 1.0)]


@dataclass
class Clock:
    t: float = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


def write(path: Path, jobs: int = 500) -> str:
    """Write the journal at ``path``; returns the run id."""
    clock = Clock()
    base = clock.t
    with Journal(path, clock=clock) as journal:
        run = journal.start_run(snakemake_version="9", plugin_version="t", settings={})
        for i in range(0, jobs, 2):
            start = base + (i // WAVE) * 45.0 + (QUIET_GAP if i >= jobs // 2 else 0.0)
            clock.t = start + (i % WAVE) * 0.3
            _, label, iid = _rented_job(journal, clock, run, i, keep=i + 1 < jobs and _keeps(i))
            if i + 1 < jobs and _keeps(i):
                _reused_job(journal, clock, run, i + 1, label, iid)
            else:
                _destroy(journal, clock, iid, label)
                if i + 1 < jobs:
                    clock.t = start + ((i + 1) % WAVE) * 0.3
                    _, other_label, other_iid = _rented_job(journal, clock, run, i + 1)
                    _destroy(journal, clock, other_iid, other_label)
        clock.t += 5.0
        journal.end_run(run, "finished")
    return run


def _rented_job(journal: Journal, clock: Clock, run: str, i: int,
                keep: bool = False) -> tuple[str, str, int]:
    job = journal.add_job(run_id=run, rule=_rule(i), snakemake_jobid=i + 1, fingerprint=f"f{i}",
                          attempt=1, state="searching")
    label = journal.label_prefix + job
    offer = {"id": 10_000 + i, "gpu_name": "RTX 4090" if i % 3 else "A100 SXM4",
             "num_gpus": 1 + (i % 5 == 0), "dph_total": 0.2 + (i % 7) * 0.05,
             "geolocation": ["Quebec, CA", "Texas, US", "Singapore, SG"][i % 3]}
    iid = 5_000_000 + i
    _walk(journal, clock, job, STEPS, i, on_enter={
        "renting": lambda: journal.record_rent_intent(job_id=job, run_id=run, label=label,
                                                      offer=offer),
        "booting": lambda: (journal.record_instance_created(label, iid, created_at=clock.t),
                            journal.record_instance_started(iid, clock.t)),
    }, keep=keep)
    return job, label, iid


def _reused_job(journal: Journal, clock: Clock, run: str, i: int, label: str, iid: int) -> None:
    clock.t += 3.0  # the instance waits, idle, for its next job
    job = journal.add_job(run_id=run, rule=_rule(i), snakemake_jobid=i + 1, fingerprint=f"f{i}",
                          attempt=1, state="searching")
    _walk(journal, clock, job, REUSED_STEPS, i, on_enter={
        "leased": lambda: journal.update_job(job, label=label, instance_id=iid),
    })
    _destroy(journal, clock, iid, label)


def _walk(journal: Journal, clock: Clock, job: str, steps: list, i: int, *, on_enter: dict,
          keep: bool = False) -> None:
    """Move the job through ``steps``; job 7 is preempted, every 25th fails while running."""
    state = steps[0][0]
    clock.t += steps[0][1]
    for name, seconds in steps[1:]:
        if name == "destroying" and keep:
            break
        if state == "running" and i % 25 == 24:
            journal.update_job(job, last_error=EVIL_ERROR)
            name, seconds = "destroying", 1.0
            journal.transition(job, source=state, dest=name, trigger="fail", detail=EVIL_ERROR)
            state = name
            clock.t += seconds
            break
        if state == "booting" and i == 10:  # a state this version does not know
            journal.transition(job, source=state, dest="checking", trigger="check")
            state = "checking"
            clock.t += 2.0
        if state == "running" and i == 7:
            journal.transition(job, source=state, dest="preempted", trigger="preempted")
            state = "preempted"
            clock.t += 4.0
        journal.transition(job, source=state, dest=name, trigger=f"to_{name}")
        if name == "uploading":  # a retry inside a span: same bar, listed in its title
            journal.transition(job, source=name, dest=name, trigger="retry", detail="ssh drop")
        if name in on_enter:
            on_enter[name]()
        state = name
        clock.t += seconds
    failed = i % 25 == 24
    journal.transition(job, source=state, dest="failed" if failed else "succeeded",
                       trigger="destroyed" if state == "destroying" else "released")


def _destroy(journal: Journal, clock: Clock, iid: int, label: str) -> None:
    journal.record_destroy_requested(label=label)
    journal.record_destroy_accepted(iid)
    journal.record_instance_destroyed(label=label)


def _keeps(i: int) -> bool:
    """Half the renters keep their instance warm for the next job (not one that fails)."""
    return (i // 2) % 2 == 0 and i % 25 != 24


def _rule(i: int) -> str:
    return EVIL_RULE if i % 50 == 3 else ["prepare", "train", "score"][i % 3]
