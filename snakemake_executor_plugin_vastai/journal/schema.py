"""The journal's schema, documented from its migrations: ``docs/journal-schema.md``.

The document is generated, never edited by hand: :func:`build` runs every migration of
``migrations.py``, in order, on a fresh in-memory database and notes which migration
first made each table, column, index and trigger; :func:`render` writes what SQLite then
reports (``PRAGMA table_info``, ``foreign_key_list``, ``index_list``, the triggers' SQL)
as Markdown, with each migration's docstring and a note per table from :data:`NOTES`.

``python -m snakemake_executor_plugin_vastai.journal.schema`` rewrites the file;
``--check`` only compares and exits 1 on drift. tests/unit/journal/test_journal.py runs the same
comparison, so the document cannot disagree with the migrations (as the statecharts
cannot with the state machines).
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from pathlib import Path

import sqlite_utils

from .migrations import MIGRATIONS

DOC = Path(__file__).resolve().parents[2] / "docs" / "journal-schema.md"
COMMAND = "python -m snakemake_executor_plugin_vastai.journal.schema"

# What each table is for; the columns, indexes and triggers come from SQLite itself.
NOTES: dict[str, str] = {
    "meta": """\
Facts about the journal itself, one row per key: `schema_version` (the number of
migrations applied), `workflow_id` (random hex, created once: every instance label of
the workflow starts with `smk-<workflow_id>-`; a `workflow-id` file next to the journal
keeps it, so a journal lost or moved aside does not blind the next run to what it
rented), `created_at`, `workdir` (the directory it was last used in: a copied workflow
directory is told apart from a moved one by it), `adopted_after_loss` (present until the
first reconcile when the journal took its prefix over from a lost one: unknown labels
with the prefix are then its own).""",
    "migrations": """\
One row per schema migration applied, and when. `name` is the migration's function name
in `journal/migrations.py`; a journal that records another name for a version was
written by a different build and is refused.""",
    "runs": """\
One row per Snakemake invocation. `ended_at` stays NULL when the run crashed. `settings`
is JSON of the non-secret executor settings. `pid`, `hostname`, `pid_started_at` and
`heartbeat_at` are the run's lease (`run/liveness.py`): while its process lives, no other
run touches its work. `balance_before` and `balance_after` are the account credit at its
start and end.""",
    "jobs": """\
The current state of each job (`lifecycle/job_machine.py`), changed only together with
its `transitions` row. `fingerprint_parts` is JSON of the fingerprint's components (short
hashes), so a restart can name what changed. `ended_at` is set on entering a terminal
state. `resumed_from` names the earlier run's job this one re-attached to; that earlier
job then no longer counts as unfinished. `work_dir` is the job's own directory on its
instance (a warm instance serves several jobs), `leased_at` and `released_at` the job's
hold on it: its cost.""",
    "instances": """\
One row per instance label, written before the create call (`requested_at`);
`instance_id` stays NULL until the API answers. `offer` is JSON of the offer facts.
`host_key` is the instance's public SSH host key, pinned on first contact. `destroyed_at`
set means "known not to exist any more" (also for a label that was never created).
`started_at` is the API's `start_date` (Vast.ai's clock) and `destroy_accepted_at` the
time the first destroy request was accepted: costs run from the one to the other
(falling back to `created_at` and `destroyed_at` where a fact is missing), as Vast.ai
bills. `claimed_by` is the run that took a dead run's instance over (to resume or tear it
down); it owns it from then on. `bytes_uploaded` and `bytes_downloaded` are the SSH
payload it moved, priced at the offer's $/GB (`costs/ledger.py`). Bid instances
(`vastai/bids.py`) add `bid_price` ($/h, NULL on demand), `storage_dph` (the disk's $/h,
also on demand; billed while stopped), `ondemand_dph` (the same machine on demand, for
`journal cost`), `stopped_seconds` and `stopped_since` (time stopped by preemptions,
billed as storage only) and `preemptions`. `state` is its life-cycle state
(`lifecycle/instance_machine.py`; NULL on rows written before `m006_warm_instances`),
`leased_by` the job holding it, `idle_since` when it was given back, `served` how many
jobs it served.""",
    "transitions": """\
Append-only (triggers refuse UPDATE and DELETE): one row per job state change, written in
the same transaction as the `jobs` update. `from_state` is NULL for the submit row.
`run_id` is the run that made the change (NULL outside a run). `detail` is the caller's
text, scrubbed of registered secrets, or JSON of the caller's dict after redaction.""",
    "strays": """\
Instances listed with this workflow's prefix that no `instances` row owns (a duplicate
left by a lost create answer, a label marked gone that appeared later), journaled before
their teardown.""",
    "transfers": """\
One row per upload or download: bytes so far and the total if known, updated a few
times a second at most, so `journal jobs --follow` can show what is moving. The next run
closes a crashed run's rows at their last update.""",
    "instance_transitions": """\
Append-only like `transitions`: an instance's life (`lifecycle/instance_machine.py`),
written in the same transaction as the `instances.state` update.""",
    "instance_run_bytes": """\
The bytes of `instances.bytes_uploaded` and `bytes_downloaded` split by the run that
moved them: a run's `--vastai-max-spend` counts what it moved on an earlier run's
instance. Rows journaled before `m007_bytes_per_run` are the renting run's.""",
}

HEADER = f"""\
# Journal schema

Generated from `snakemake_executor_plugin_vastai/journal/migrations.py` by
`{COMMAND}`;
a test fails when this file and the code disagree.

The journal, `<workdir>/.snakemake/vastai/journal.sqlite`, is plain SQLite: read it with
`sqlite-utils rows journal.sqlite jobs` or `datasette journal.sqlite`. How it is opened,
locked and kept free of secrets is in the docstring of `journal/store.py`. All timestamps
are `time.time()` epoch seconds. Migrations only ever add; each column below names the
migration that added it.
"""


def build() -> tuple[sqlite_utils.Database, dict[str, str]]:
    """A fresh in-memory database after every migration, and which migration first made
    each table, column, index and trigger (keys ``table:t``, ``column:t.c``, ``index:i``,
    ``trigger:r``)."""
    db = sqlite_utils.Database(memory=True)
    origin: dict[str, str] = {}
    for step in MIGRATIONS:
        step(db)
        for thing in _things(db):
            origin.setdefault(thing, step.__name__)
    return db, origin


def _things(db: sqlite_utils.Database) -> list[str]:
    things = []
    for kind, name, table in db.execute(
        "SELECT type, name, tbl_name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' "
        "AND (type != 'index' OR sql IS NOT NULL) ORDER BY rowid"
    ).fetchall():
        things.append(f"{kind}:{name}")
        if kind == "table":
            things += [f"column:{table}.{c[1]}"
                       for c in db.execute(f"PRAGMA table_info({table})").fetchall()]
    return things


def describe(db: sqlite_utils.Database) -> dict[str, dict]:
    """Every table of ``db`` (in creation order) as SQLite reports it: columns (name, type,
    constraints), explicit indexes (name, columns, unique) and triggers (name, SQL)."""
    tables: dict[str, dict] = {}
    rows = db.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'table' "
        "AND name NOT LIKE 'sqlite_%' ORDER BY rowid"
    ).fetchall()
    for table, sql in rows:
        info = db.execute(f"PRAGMA table_info({table})").fetchall()
        keys = [c[1] for c in sorted(info, key=lambda c: c[5]) if c[5]]
        refs = {fk[3]: f"{fk[2]}({fk[4]})"
                for fk in db.execute(f"PRAGMA foreign_key_list({table})").fetchall()}
        unique, indexes = set(), []
        for _seq, name, is_unique, origin, _partial in db.execute(
            f"PRAGMA index_list({table})"
        ).fetchall():
            columns = [c[2] for c in db.execute(f"PRAGMA index_info({name})").fetchall()]
            if origin == "u" and len(columns) == 1:
                unique.add(columns[0])
            elif origin == "c":
                indexes.append((name, tuple(columns), bool(is_unique)))
        columns = []
        for _cid, name, kind, notnull, default, pk in info:
            constraints = []
            if pk and len(keys) == 1:
                constraints.append("PRIMARY KEY")
                if "AUTOINCREMENT" in sql.upper():
                    constraints.append("AUTOINCREMENT")
            if notnull:
                constraints.append("NOT NULL")
            if name in unique:
                constraints.append("UNIQUE")
            if default is not None:
                constraints.append(f"DEFAULT {default}")
            if name in refs:
                constraints.append(f"REFERENCES {refs[name]}")
            columns.append((name, kind, " ".join(constraints)))
        triggers = [
            (name, " ".join(trigger_sql.split()))
            for name, trigger_sql in db.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ? "
                "ORDER BY rowid", [table]
            ).fetchall()
        ]
        tables[table] = {"columns": columns, "primary_key": tuple(keys),
                         "indexes": sorted(indexes), "triggers": triggers}
    return tables


def render() -> str:
    """``docs/journal-schema.md`` as the migrations make it."""
    db, origin = build()
    tables = describe(db)
    missing = sorted(set(tables) - set(NOTES))
    if missing:
        raise ValueError(f"journal/schema.py NOTES has no note for table(s) {missing}")
    out = [HEADER, "## Schema versions\n",
           "Version n is the n-th migration, recorded in `migrations` when it ran; this "
           f"plugin writes version {len(MIGRATIONS)}.\n",
           "| version | migration | what it adds |", "|---|---|---|"]
    for version, step in enumerate(MIGRATIONS, start=1):
        out.append(f"| {version} | `{step.__name__}` | {_cell(_summary(step))} |")
    out.append("\n## Tables\n")
    out += [f"- [`{table}`](#{table})" for table in tables]
    for table, parts in tables.items():
        out += [f"\n### {table}\n", f"Added by `{origin[f'table:{table}']}`.", "",
                NOTES[table], "", "| column | type | constraints | added by |",
                "|---|---|---|---|"]
        for name, kind, constraints in parts["columns"]:
            out.append(f"| `{name}` | {kind} | {constraints} | "
                       f"`{origin[f'column:{table}.{name}']}` |")
        if len(parts["primary_key"]) > 1:
            out += ["", f"Primary key: ({', '.join(parts['primary_key'])})."]
        if parts["indexes"]:
            out += ["", "| index | columns | unique | added by |", "|---|---|---|---|"]
            out += [f"| `{name}` | {', '.join(columns)} | {'yes' if is_unique else 'no'} | "
                    f"`{origin[f'index:{name}']}` |"
                    for name, columns, is_unique in parts["indexes"]]
        if parts["triggers"]:
            out += ["", "| trigger | SQL | added by |", "|---|---|---|"]
            out += [f"| `{name}` | `{_cell(sql)}` | `{origin[f'trigger:{name}']}` |"
                    for name, sql in parts["triggers"]]
    return "\n".join(out) + "\n"


def _summary(step: object) -> str:
    """The first paragraph of a migration's docstring, on one line."""
    paragraph = (inspect.getdoc(step) or "").split("\n\n", 1)[0]
    return " ".join(paragraph.split())


def _cell(text: str) -> str:
    return re.sub(r"\|", r"\\|", text)


def drift(path: Path = DOC) -> bool:
    """True if ``path`` is missing or differs from what the migrations make."""
    return not path.exists() or path.read_text() != render()


def main(argv: list[str] | None = None) -> int:
    """Example: ``python -m snakemake_executor_plugin_vastai.journal.schema --check``."""
    parser = argparse.ArgumentParser(prog=COMMAND, description="Regenerate "
                                     "docs/journal-schema.md from the journal's migrations.")
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 on drift")
    parser.add_argument("--out", type=Path, default=DOC, help="the Markdown file")
    args = parser.parse_args(argv)
    if args.check:
        if drift(args.out):
            print(f"{args.out} is out of date; run: {COMMAND}", file=sys.stderr)
            return 1
        return 0
    if not args.out.parent.is_dir():
        print(f"{args.out.parent} does not exist (run this in a checkout, or pass --out)",
              file=sys.stderr)
        return 2
    args.out.write_text(render())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
