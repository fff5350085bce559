"""Every catalogued workflow ends the same under the local executor and on the simulator.

Fast cases run in CI; ``pytest -m differential_slow tests/test_differential.py`` runs the
rest (the whole catalogue: ``pytest -m 'differential or differential_slow'``).
"""

from __future__ import annotations

import pytest

from tests.differential import run_case
from tests.differential_cases import FAST_CASES, SLOW_CASES, Case

pytestmark = pytest.mark.e2e


def _params(cases: tuple[Case, ...], mark: pytest.MarkDecorator) -> list:
    return [pytest.param(c, id=c.name, marks=mark) for c in cases]


@pytest.mark.parametrize("case", _params(FAST_CASES, pytest.mark.differential)
                         + _params(SLOW_CASES, pytest.mark.differential_slow))
def test_workflow_ends_as_under_the_local_executor(case: Case, tmp_path, simulator):
    result = run_case(case, tmp_path, simulator)
    result.assert_same()
    if case.rents is not None:
        created = simulator.truth()["created_count"]
        assert created == case.rents, result.explain()
