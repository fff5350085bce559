"""What a set of instances cost, summed: the totals ``journal cost`` and the timeline show.

One function, so that the journal's cost table and the timeline page cannot add the same
rows up differently.
"""

from __future__ import annotations

from . import ledger


def total(rows: list[dict]) -> dict:
    """Instances, instance-seconds and -hours, bytes, dollars and the ledger's components."""
    seconds = sum(row["billed_seconds"] for row in rows)
    return {
        "instances": len(rows),
        "instance_seconds": seconds,
        "instance_hours": seconds / 3600.0,
        "bytes_uploaded": sum(int(row.get("bytes_uploaded") or 0) for row in rows),
        "bytes_downloaded": sum(int(row.get("bytes_downloaded") or 0) for row in rows),
        "components": {c.name: sum(row["components"][c.name] for row in rows)
                       for c in ledger.COMPONENTS},
        "dollars": sum(row["billed_dollars"] for row in rows),
    }
