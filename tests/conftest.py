"""Shared fixtures: the bundled simulator is registered as a pytest plugin."""

pytest_plugins = ["snakemake_executor_plugin_vastai.simulator.testing"]


ON_DEMAND = ("differential_slow", "benchmark", "load_slow")


def pytest_collection_modifyitems(config, items):
    """On-demand tests (the markers in ``ON_DEMAND``) run only when ``-m`` names their
    marker: they keep the suite within its 15-minute budget on two cores."""
    import pytest

    wanted = config.getoption("markexpr") or ""
    for marker in ON_DEMAND:
        if marker in wanted:
            continue
        skip = pytest.mark.skip(reason=f"on demand: pytest -m {marker}")
        for item in items:
            if item.get_closest_marker(marker):
                item.add_marker(skip)
