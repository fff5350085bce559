"""The storage-mode differential catalogue (tests/differential_storage.py), one test per case.

The cases without ``slow`` run in CI; the rest on demand: ``pytest -m differential_slow``.
"""

from __future__ import annotations

import pytest

from tests.differential_storage import (
    FAST_STORAGE_CASES,
    SLOW_STORAGE_CASES,
    STORAGE_CASES,
    run_storage_case,
)
from tests.s3 import s3_server  # noqa: F401 (fixture)

pytestmark = pytest.mark.e2e


@pytest.mark.differential
@pytest.mark.parametrize("name", FAST_STORAGE_CASES)
def test_storage_case(name, tmp_path, simulator, s3_server):  # noqa: F811
    run_storage_case(name, tmp_path, simulator, s3_server).assert_same(
        STORAGE_CASES[name].get("rents"))


@pytest.mark.differential_slow
@pytest.mark.parametrize("name", SLOW_STORAGE_CASES)
def test_storage_case_on_demand(name, tmp_path, simulator, s3_server):  # noqa: F811
    run_storage_case(name, tmp_path, simulator, s3_server).assert_same(
        STORAGE_CASES[name].get("rents"))
