"""Storage-mode differential runs, one test per case: this mode's own catalogue
(tests/harness/differential_storage.py) and issue 13's (tests/harness/differential_cases.py).

In CI: the storage catalogue's fast cases, two of issue 13's (``STORAGE_CI_CASES``) and
issue 28's working-directory cases (``WORKDIR_CASES``); the rest on demand:
``pytest -m differential_slow tests/e2e/test_differential_storage.py``.
Issue 13's cases that cannot run in storage mode are skipped with their reason
(``NOT_IN_STORAGE_MODE``); those that end differently there, the same under every executor,
say how (``STORAGE_MODE_ENDINGS``); README.md repeats both.
"""

from __future__ import annotations

import pytest

from tests.harness.differential_cases import CASES, WORKDIR_CASES, Case
from tests.harness.differential_storage import (
    FAST_STORAGE_CASES,
    NOT_IN_STORAGE_MODE,
    SLOW_STORAGE_CASES,
    STORAGE_CI_CASES,
    STORAGE_MODE_ENDINGS,
    in_storage_mode,
    run_storage_case,
)
from tests.harness.s3 import s3_server  # noqa: F401 (fixture)

pytestmark = pytest.mark.e2e


@pytest.mark.differential
@pytest.mark.parametrize("name", FAST_STORAGE_CASES)
def test_storage_case(name, tmp_path, simulator, s3_server):  # noqa: F811
    run_storage_case(name, tmp_path, simulator, s3_server).assert_same()


@pytest.mark.differential_slow
@pytest.mark.parametrize("name", SLOW_STORAGE_CASES)
def test_storage_case_on_demand(name, tmp_path, simulator, s3_server):  # noqa: F811
    run_storage_case(name, tmp_path, simulator, s3_server).assert_same()


def _issue13_params() -> list:
    params = []
    for case in CASES:
        if case in WORKDIR_CASES:
            continue  # run in CI below
        if case.name in NOT_IN_STORAGE_MODE:
            marks = pytest.mark.skip(reason=f"not in storage mode: "
                                            f"{NOT_IN_STORAGE_MODE[case.name]}")
        elif case.name in STORAGE_CI_CASES:
            marks = pytest.mark.differential
        else:
            marks = pytest.mark.differential_slow
        params.append(pytest.param(case, id=case.name, marks=marks))
    return params


@pytest.mark.parametrize("case", _issue13_params())
def test_issue13_case_in_storage_mode(case: Case, tmp_path, simulator,
                                      s3_server):  # noqa: F811
    result = run_storage_case(in_storage_mode(case), tmp_path, simulator, s3_server)
    result.assert_same()
    message = STORAGE_MODE_ENDINGS.get(case.name, ({}, ""))[1]
    assert message in result.local.output and message in result.remote.output, \
        result.explain()
    if case.name == "group_temp":  # the one ignored path: stored locally, never by vastai
        held = {side: s3_server.keys(f"diff-{side}-group-temp") for side in ("local", "vastai")}
        assert "wf/tmp/inner.txt" in held["local"], held
        assert "wf/tmp/inner.txt" not in held["vastai"], held


@pytest.mark.differential
@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in WORKDIR_CASES])
def test_working_directory_case_in_storage_mode(case: Case, tmp_path, simulator,
                                                s3_server):  # noqa: F811
    """Issue 28's cases (--directory from the parent, a workdir: directive with a script
    outside the working directory, the Python API, no git), in storage mode, in CI.

    Also: no instance ran its job in this machine's workflow directory. Simulated instances
    share this machine's file system, so a remote Snakemake handed this machine's path
    (``--directory /tmp/...``) works there, and leaves its local copies of storage objects
    (``.snakemake/storage/...``) behind; on Vast.ai that path does not exist (the job would
    miss its config file). The main process leaves none."""
    result = run_storage_case(case, tmp_path, simulator, s3_server)
    result.assert_same()
    stray = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "vastai").rglob("*")
                   if p.is_file() and "/.snakemake/storage/" in p.as_posix())
    assert stray == [], f"an instance wrote into this machine's workflow directory: {stray}"


def test_every_skip_names_a_catalogued_case():
    """A reason for a case that no longer exists (or a CI pick that does not) is stale."""
    names = {case.name for case in CASES}
    assert set(NOT_IN_STORAGE_MODE) | set(STORAGE_MODE_ENDINGS) <= names
    assert set(STORAGE_CI_CASES) <= names and len(STORAGE_CI_CASES) <= 2
    assert not set(STORAGE_CI_CASES) & set(NOT_IN_STORAGE_MODE)
