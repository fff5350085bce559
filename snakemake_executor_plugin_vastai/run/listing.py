"""The one matcher between Vast.ai's instance listing and the journal.

Used by the reconcile at start, the end-of-run sweep and ``journal cleanup``,
so all three agree on what is ours, what is gone and what is a stray.

Rules, for the listed instances whose label carries this workflow's prefix:

- an instance whose id a journal row names belongs to that row;
- else one whose label names a row that never learnt an id (a create whose
  answer was lost) belongs to that row; if several carry that label, the
  lowest id does and the others are strays;
- everything else is a **stray**: a duplicate of a journaled label, a label this
  journal marked "never created" before it appeared, or a label it does not
  know at all. Strays are never adopted by a job. The first two kinds are this
  journal's own and are torn down; an *unknown* label is only reported: another
  directory can carry the same prefix (a copy whose original was renamed, an
  rsync to another path), so only ``journal cleanup``, which asks, destroys it.

Journal rows not known destroyed that no listed instance matches are **gone**.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Stray:
    """A listed instance of this workflow that no journal row owns."""

    listed: dict
    reason: str
    known: bool = True  # False: the label is not in this journal (only reported)

    @property
    def instance_id(self) -> int:
        return int(self.listed["id"])

    @property
    def label(self) -> str:
        return str(self.listed.get("label") or "")


@dataclass
class Matched:
    """What one listing says about the journal's instances."""

    alive: dict[str, tuple[dict, dict]] = field(default_factory=dict)  # label -> (row, listed)
    gone: list[dict] = field(default_factory=list)  # rows not destroyed, not listed
    strays: list[Stray] = field(default_factory=list)


def match(rows: list[dict], listing: list[dict], prefix: str, *,
          unknown_are_ours: bool = False) -> Matched:
    """Classify ``listing`` against journal instance ``rows`` (all of them, destroyed too).

    ``unknown_are_ours``: the journal replaced a lost one under the same prefix, so a
    label it does not know was rented by that lost journal's runs (a known stray).
    """
    ours = sorted((r for r in listing if str(r.get("label") or "").startswith(prefix)),
                  key=lambda r: int(r["id"]))
    by_id = {int(r["instance_id"]): r for r in rows if r.get("instance_id") is not None}
    by_label = {str(r["label"]): r for r in rows}
    out = Matched()
    for listed in ours:
        iid, label = int(listed["id"]), str(listed.get("label") or "")
        row = by_id.get(iid)
        if row is None:
            row = by_label.get(label)
            taken = row is not None and (row.get("instance_id") is not None
                                         or row["label"] in out.alive)
            if taken:
                out.strays.append(Stray(listed, _duplicate_reason(row, out)))
                continue
            if row is not None and row.get("destroyed_at") is not None:
                out.strays.append(Stray(listed, f"label {label} was journaled as never created"))
                continue
        if row is None:
            out.strays.append(Stray(listed, f"label {label} is not in this journal",
                                    known=unknown_are_ours))
            continue
        out.alive[str(row["label"])] = (row, listed)
    for row in rows:
        if row.get("destroyed_at") is None and str(row["label"]) not in out.alive:
            out.gone.append(row)
    return out


def _duplicate_reason(row: dict, out: Matched) -> str:
    owner = row.get("instance_id")
    if owner is None and row["label"] in out.alive:
        owner = out.alive[row["label"]][1]["id"]
    return f"a second instance with label {row['label']} (instance {owner} is the journaled one)"
