"""The bid instances' part of ``journal cost``: bid price while running, storage while
stopped by a preemption, and what the same machines would have cost on demand.

A bid instance bills its bid plus its disk's storage while it runs, and the storage alone
while it is stopped (outbid); see ``bids.py``. The on-demand figure prices the same
instance-seconds at the offer's on-demand rate (``dph_base`` plus storage, journaled as
``ondemand_dph`` when it was rented): an estimate, since an on-demand run would not have
been preempted and would have ended sooner.
"""

from __future__ import annotations

from collections.abc import Iterable

from . import ledger


def cost_report(rows: Iterable[dict]) -> dict | None:
    """Totals over the bid instances among ``rows`` (``instances_with_cost`` rows), or
    None when there is none."""
    bid_rows = [r for r in rows if r.get("bid_price") is not None]
    if not bid_rows:
        return None
    stopped = storage = on_demand = 0.0
    for row in bid_rows:
        stopped += ledger.stopped_seconds(row, float(row["billed_seconds"]))
        storage += ledger.storage_dollars(row, float(row["billed_seconds"]))
        rate = row.get("ondemand_dph")
        on_demand += float(row["billed_seconds"]) * float(rate if rate is not None
                                                          else row.get("dph_total") or 0.0)
    on_demand /= 3600.0
    on_demand += sum(ledger.bandwidth_dollars(r, 0.0) for r in bid_rows)  # billed either way
    dollars = sum(float(r["billed_dollars"]) for r in bid_rows)
    return {
        "instances": len(bid_rows),
        "preemptions": sum(int(r.get("preemptions") or 0) for r in bid_rows),
        "instance_seconds": sum(float(r["billed_seconds"]) for r in bid_rows),
        "stopped_seconds": stopped,
        "running_dollars": sum(ledger.compute_dollars(r, float(r["billed_seconds"]))
                               for r in bid_rows),
        "stopped_storage_dollars": storage,
        "dollars": dollars,
        "on_demand_dollars": on_demand,
        "saved_dollars": on_demand - dollars,
    }


def cost_text(report: dict) -> str:
    """A few lines under the cost tables."""
    share = (report["dollars"] / report["on_demand_dollars"]
             if report["on_demand_dollars"] else float("nan"))
    return "\n".join([
        "",
        f"BID INSTANCES  {report['instances']} instances, {report['preemptions']} "
        f"preemptions, stopped {report['stopped_seconds']:.1f} s",
        f"  bid while running   ${report['running_dollars']:.4f}",
        f"  storage while stopped ${report['stopped_storage_dollars']:.4f}",
        f"  total               ${report['dollars']:.4f}",
        f"  same on demand      ${report['on_demand_dollars']:.4f} (bids cost {share:.2f}x)",
    ])
