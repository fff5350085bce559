"""Shared fixtures: the bundled simulator is registered as a pytest plugin."""

pytest_plugins = ["snakemake_executor_plugin_vastai.simulator.testing"]
