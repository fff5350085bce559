"""What ``snakemake --help`` says about each ``--vastai-*`` option is what a run does.

Snakemake prints a setting's help but not its default, so the settings write the default
into the help (settings.option); options whose field default was None while the run used
60 s or 1.0 read as if they had none. These tests read the real ``snakemake --help``,
parse options through Snakemake's own parser (with ``SNAKEMAKE_VASTAI_*`` variables
set), and check that the defaults shown are the values a run resolves.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from snakemake_executor_plugin_vastai import ExecutorSettings
from snakemake_executor_plugin_vastai.run import startup
from snakemake_executor_plugin_vastai.settings import shown_default
from snakemake_executor_plugin_vastai.vastai import bids

FIELDS = {f.name: f for f in dataclasses.fields(ExecutorSettings)}
# The settings a person most often sets once per machine or project (issue 31).
FROM_ENVIRONMENT = {"api_key", "api_url", "image", "max_price", "max_spend", "disk",
                    "boot_timeout", "offline_grace", "max_runtime", "offer_wait",
                    "idle_timeout", "preemption_grace", "orphan_timeout",
                    "keep_warm"}


def option_name(name: str) -> str:
    return "--vastai-" + name.replace("_", "-")


@pytest.fixture(scope="module")
def help_blocks() -> dict[str, str]:
    """Each ``--vastai-*`` option's block of the real ``snakemake --help``, whitespace
    folded (argparse wraps lines at any space, and breaks words at hyphens)."""
    snakemake = Path(sys.executable).with_name("snakemake")
    done = subprocess.run([str(snakemake), "--help"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "100"})
    assert done.returncode == 0, done.stderr[-2000:]
    section = done.stdout.split("vastai executor plugin settings:", 1)[1]
    section = re.split(r"\n\S", section, maxsplit=1)[0]  # up to the next group's title
    blocks = re.split(r"\n  (?=--vastai-)", "\n" + section)[1:]
    return {block.split()[0]: re.sub(r"-\s+", "-", " ".join(block.split()))
            for block in blocks}


def test_help_lists_every_setting(help_blocks):
    assert set(help_blocks) == {option_name(name) for name in FIELDS}


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_help_shows_each_settings_real_default(help_blocks, name):
    block = help_blocks[option_name(name)]
    shown = re.sub(r"-\s+", "-", " ".join(shown_default(FIELDS[name]).split()))
    assert f"Default: {shown}." in block
    assert "None" not in block


def test_help_names_the_environment_variable_of_the_common_settings(help_blocks):
    with_env = {name for name in FIELDS
                if "[env var: SNAKEMAKE_VASTAI_" in help_blocks[option_name(name)]}
    assert with_env == FROM_ENVIRONMENT
    assert "[env var: SNAKEMAKE_VASTAI_IDLE_TIMEOUT]" in help_blocks["--vastai-idle-timeout"]


def parse(argv: list[str]) -> ExecutorSettings:
    """The settings Snakemake builds from ``argv`` and the environment, as in a run."""
    from snakemake.cli import get_argument_parser
    from snakemake_interface_executor_plugins.registry import ExecutorPluginRegistry

    args = get_argument_parser().parse_args(["--executor", "vastai", *argv])
    return ExecutorPluginRegistry().get_plugin("vastai").get_settings(args)


def test_the_defaults_shown_are_the_values_a_run_uses(monkeypatch):
    for name in FIELDS:
        monkeypatch.delenv("SNAKEMAKE_VASTAI_" + name.upper(), raising=False)
    run = startup.run_settings(parse([]))
    assert (run.bids.factor, run.bids.grace) == (1.0, 300.0)
    assert (run.idle_timeout, run.offer_wait) == (60.0, 1800.0)
    assert (run.disk, run.boot_timeout, run.offline_grace) == (40.0, 1800.0, 120.0)
    assert (run.status_interval, run.progress_interval) == (5.0, 5.0)
    assert (run.max_runtime, run.max_download_bytes, run.max_spend) == (0.0, None, None)
    assert (bids.DEFAULT_BID_FACTOR, bids.DEFAULT_GRACE) == (1.0, 300.0)  # unset attrs
    # a settings object without those options (an older caller) resolves the same
    bare = ExecutorSettings(bid=None, preemption_grace=None, idle_timeout=None,
                            offer_wait=None)
    assert startup.run_settings(bare) == run


def test_common_settings_come_from_snakemake_vastai_variables(monkeypatch):
    env = {"DISK": "77", "MAX_PRICE": "0.5", "IMAGE": "python:3.12", "BOOT_TIMEOUT": "600",
           "IDLE_TIMEOUT": "0", "OFFER_WAIT": "30", "MAX_RUNTIME": "3600",
           "MAX_SPEND": "2.5", "PREEMPTION_GRACE": "12"}
    for key, value in env.items():
        monkeypatch.setenv(f"SNAKEMAKE_VASTAI_{key}", value)
    settings = parse(["--vastai-offer-wait", "45"])  # the command line still wins
    run = startup.run_settings(settings)
    assert run.disk == 77.0 and run.offer_settings.max_price == 0.5
    assert run.image == "python:3.12" and run.boot_timeout == 600.0
    assert (run.idle_timeout, run.offer_wait, run.max_runtime) == (0.0, 45.0, 3600.0)
    assert run.max_spend == 2.5 and run.bids.grace == 12.0


def test_a_bad_value_in_the_environment_names_the_option(monkeypatch):
    monkeypatch.setenv("SNAKEMAKE_VASTAI_IDLE_TIMEOUT", "-5")
    with pytest.raises(Exception, match="--vastai-idle-timeout"):
        startup.run_settings(parse([]))
