"""Plain-text tables and the compact formats people read in them.

The journal CLI prints to terminals, pagers and CI logs alike, so the output is
plain aligned text (no colours, no box drawing) that survives copy and paste
into a bug report. Times are local and to the second, durations and money are
short enough to keep a table of jobs on one screen.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Sequence

from tabulate import tabulate

NONE = "-"  # how a missing value is shown


def render(
    headers: Sequence[str], rows: Iterable[Sequence[object]], *, right: Collection[int] = ()
) -> str:
    """Aligned columns, two spaces apart; columns in ``right`` (numbers) right-aligned.

    ``tabulate`` lays them out; the header goes in as the first row, so it is aligned
    like its column and adds no padding of its own, and nothing is parsed as a number
    (the cells are already formatted).

    >>> print(render(["ID", "COST"], [["a", "$1.0000"], ["bb", "$0.5000"]], right={1}))
    ID     COST
    a   $1.0000
    bb  $0.5000
    """
    cells = [[str(h) for h in headers], *([_cell(v) for v in row] for row in rows)]
    align = ["right" if i in right else "left" for i in range(len(headers))]
    text = tabulate(cells, tablefmt="plain", colalign=align, disable_numparse=True)
    return "\n".join(line.rstrip() for line in text.splitlines())


def fields(pairs: Iterable[tuple[str, object]]) -> str:
    """``key  value`` lines with the values aligned (one record, read top to bottom)."""
    items = [(key, _cell(value)) for key, value in pairs]
    width = max((len(key) for key, _ in items), default=0)
    return "\n".join(f"{key.ljust(width)}  {value}".rstrip() for key, value in items)


def when(epoch: float | None) -> str:
    """Local time to the second, e.g. ``2026-11-28 13:05:02``."""
    if epoch is None:
        return NONE
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(epoch)))


def duration(seconds: float | None) -> str:
    """``45s``, ``1m05s``, ``2h03m``, ``3d04h``: precise where it matters, short where not."""
    if seconds is None:
        return NONE
    total = max(0, round(float(seconds)))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def money(dollars: float | None) -> str:
    """Dollars to four decimals (``$0.0123``): a short test run costs fractions of a cent."""
    return NONE if dollars is None else f"${float(dollars):.4f}"


def hours(seconds: float | None) -> str:
    """Instance-hours to three decimals, the unit Vast.ai bills in."""
    return NONE if seconds is None else f"{float(seconds) / 3600.0:.3f}"


def one_line(text: str | None, width: int) -> str:
    """The first line of ``text``, cut to ``width`` with ``...`` (full text: --json)."""
    if not text:
        return NONE
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first if len(first) <= width else first[: max(width - 3, 0)] + "..."


def _cell(value: object) -> str:
    return NONE if value is None or value == "" else str(value)


def gpu_text(row: dict) -> str | None:
    """"2x RTX 4090" for a journal row with a GPU, else None."""
    if not row.get("gpu_name"):
        return None
    return f"{row.get('num_gpus') or 1}x {row['gpu_name']}"
