"""Text from a marketplace host, made safe for the user's terminal.

A job's output, an instance's status message and a remote error are bytes an untrusted
host chose. Printed as they are, they can clear the screen and its scrollback (hiding the
"may still bill" lines above them), retitle the window, set the clipboard (OSC 52) or
move the cursor to overwrite what the plugin said. Everything the plugin shows the user
(every log line of its sink, the error Snakemake prints for a failed job) passes through
:func:`sanitise`: escape sequences and control characters are made visible as ``\\xNN``
(so tampering shows), newline and tab are kept. The job's own log file is written raw:
it is the host's output, byte for byte, and the failure message says so.
"""

from __future__ import annotations

import re

# ESC-introduced sequences (CSI ... final byte, OSC ... BEL/ST, and two-byte escapes),
# then single C0 (but \t and \n), DEL and C1 characters (U+0080-U+009F, which some
# terminals treat as CSI/OSC introducers too).
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC (title, clipboard, hyperlinks)
    r"|\x1b[PX^_][^\x1b]*(?:\x1b\\)?"  # DCS, SOS, PM, APC strings
    r"|\x1b[ -~]?"  # any other escape
)
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x80-\x9f]")


def _visible(match: re.Match[str]) -> str:
    return "".join(f"\\x{ord(c):02x}" if not c.isprintable() else c for c in match.group(0))


def sanitise(text: str) -> str:
    """``text`` with every escape sequence and control character (but newline and tab)
    made visible; a carriage return too (it rewrites the line it ends)."""
    text = text.replace("\r\n", "\n")  # a line ending, not an overwrite
    return _CONTROLS.sub(_visible, _ESCAPES.sub(_visible, text))
