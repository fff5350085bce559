"""Bytes a host chose never drive the user's terminal (run/terminal.py)."""

from __future__ import annotations

import pytest

from snakemake_executor_plugin_vastai.run.terminal import sanitise

ATTACKS = {
    "clear screen and scrollback": "\x1b[2J\x1b[3J\x1b[H",
    "window title": "\x1b]0;owned\x07",
    "clipboard (OSC 52)": "\x1b]52;c;cm0gLXJmIH4=\x1b\\",
    "cursor up, erase line": "\x1b[1A\x1b[2K",
    "C1 CSI": "\x9b2J",
    "carriage return overwrite": "all good\rERROR",
    "backspace": "ok\x08\x08",
    "DCS string": "\x1bPq#0;2;0;0;0\x1b\\",
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_escape_sequences_and_controls_are_made_visible(name):
    out = sanitise(f"before {ATTACKS[name]} after")
    assert not any(ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f for c in out), repr(out)
    assert out.startswith("before ") and out.endswith(" after")
    assert "\\x" in out  # tampering shows


def test_newlines_tabs_and_text_are_kept():
    text = "line one\n\tindented — ünïcode ✓\r\nwindows line\n"
    assert sanitise(text) == "line one\n\tindented — ünïcode ✓\nwindows line\n"
