"""Shared fixtures: the bundled simulator is registered as a pytest plugin."""

pytest_plugins = ["snakemake_executor_plugin_vastai.simulator.testing"]


def pytest_collection_modifyitems(config, items):
    """On-demand tests (``differential_slow``) run only when ``-m`` names their marker."""
    import pytest

    if "differential_slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="on demand: pytest -m differential_slow")
    for item in items:
        if item.get_closest_marker("differential_slow"):
            item.add_marker(skip)
