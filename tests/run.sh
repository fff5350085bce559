#!/usr/bin/env bash
# The one test command (README; docs/development.md): installs everything it needs
# (uv from PyPI, the project with its test extras, the OpenSSH client used by
# the simulator's interoperability tests, Debian's chromium for the timeline
# page) and runs the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v ssh >/dev/null 2>&1 || ! command -v scp >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        (apt-get update -qq && apt-get install -y -qq openssh-client) >/dev/null 2>&1 || true
    fi
fi
# Headless Chromium opens the journal timeline page (tests/unit/cli/test_timeline.py); without
# apt-get those tests skip; where apt-get exists they must not pass by skipping.
if command -v apt-get >/dev/null 2>&1; then
    if ! command -v chromium >/dev/null 2>&1; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
            >/dev/null 2>&1 || true
    fi
    export SNAKEMAKE_VASTAI_REQUIRE_BROWSER="${SNAKEMAKE_VASTAI_REQUIRE_BROWSER:-1}"
fi
python3 -m pip install --quiet --disable-pip-version-check 'uv>=0.4,<1'
uv sync --quiet --extra test
uv run --no-sync ruff check .
# Four workers on 2 cores: the whole suite takes about 1,200 CPU-seconds (measured with a
# cpuacct cgroup, instance processes included) against 2 x 800 s of wall time with three
# workers, so a quarter of the machine sat idle while tests waited on simulated boots,
# SSH round trips and timed faults; a fourth worker fills that.
uv run --no-sync python -m pytest -n 4 --dist loadfile --durations=25 "$@"
