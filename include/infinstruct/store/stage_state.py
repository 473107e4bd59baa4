"""Bookkeeping shared by the pipeline's stages: decision rows, completion markers, incremental scope.

Per-partition stages (rules, decontamination) skip a partition whose input and settings are unchanged
(`fingerprint`, `completed`, `complete`). Whole-dataset stages (dedup, near-dedup, semantic dedup) decide
across partitions; `whole_dataset_scope` tells them whether this run can decide only the new partitions
against the records already standing (a nightly run that added files) or must re-decide the dataset (the
first run, changed settings, a changed or removed partition, or a full pass of an earlier stage).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from infinstruct.record.reasons import Stage
from infinstruct.store.pgcopy import Copier, CopyTable, text_field

DECISION_COLUMNS = (
    "partition_id",
    "line_no",
    "stage",
    "verdict",
    "reason",
    "score",
    "detail",
    "duplicate_of",
    "run_id",
)


def _copy_value(value: object) -> bytes:
    if value is None:
        return b"\\N"
    if isinstance(value, (int, float)):
        return repr(value).encode()
    return text_field(str(value))


def stream(rows: int) -> dict:
    """Execution options for one statement whose result is read in batches of `rows` from a server-side
    cursor. (Set per statement: Connection.execution_options would make every later statement a cursor.)"""
    return {"stream_results": True, "yield_per": rows}


def insert_decisions(conn: Connection, rows: list[dict]) -> None:
    """Ledger rows (dicts with every one of DECISION_COLUMNS), by COPY: a stage may drop thousands."""
    if not rows:
        return
    copier = Copier(conn.connection.dbapi_connection.cursor())
    table = CopyTable(copier, "decisions", DECISION_COLUMNS, 10_000)
    try:
        for row in rows:
            table.add(*(_copy_value(row[column]) for column in DECISION_COLUMNS))
        table.flush()
    finally:
        copier.close()


def fingerprint(conn: Connection, partition_id: str, *settings: object) -> str:
    """What a per-partition stage's result depends on: the partition's content and the stage's settings."""
    content = conn.execute(
        sa.text("select ingested_checksum from partitions where partition_id = :p"), {"p": partition_id}
    ).scalar()
    blob = json.dumps(
        [content, *[s.model_dump(mode="json") if hasattr(s, "model_dump") else s for s in settings]],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def completed(conn: Connection, partition_id: str, stage: Stage | str, print_: str) -> dict | None:
    """The stored result when this stage already ran on this exact input, else None."""
    return conn.execute(
        sa.text("select result from stage_completions where partition_id = :p and stage = :s and fingerprint = :f"),
        {"p": partition_id, "s": str(stage), "f": print_},
    ).scalar()


def complete(conn: Connection, partition_id: str, stage: Stage | str, print_: str, run_id: str, result: dict) -> None:
    """Mark the stage done for this input (in the transaction that wrote its rows)."""
    conn.execute(
        sa.text(
            "insert into stage_completions (partition_id, stage, fingerprint, run_id, result)"
            " values (:p, :s, :f, :r, cast(:res as jsonb)) on conflict (partition_id, stage) do update set"
            " fingerprint = excluded.fingerprint, run_id = excluded.run_id, result = excluded.result, completed_at = now()"
        ),
        {"p": partition_id, "s": str(stage), "f": print_, "r": run_id, "res": json.dumps(result)},
    )


# --- incremental scope of a whole-dataset stage -------------------------------------------------


@dataclass(frozen=True)
class Scope:
    """What a whole-dataset stage decides in this run.

    `full`: re-decide every standing record of the run's partitions (`new` = all of them). Otherwise
    decide only the records of `new` partitions, against the records of the other partitions that are
    still standing, whose decisions stand (already accepted records win over new ones)."""

    dataset: str
    stage: str
    full: bool
    why: str  # why a full pass ("first pass", "2 partitions changed" ...), or "incremental"
    new: list[str]  # partitions whose records this pass decides
    old: list[str]  # partitions whose decisions stand (empty on a full pass)
    generation: str  # the full pass the decisions belong to
    prints: dict[str, str]  # completion fingerprint to write per decided partition
    removed: list[str]  # partitions of the dataset no longer in the run (full pass forgets them)


def _print(upstream: list[str | None], settings: str, generation: str) -> str:
    blob = json.dumps([upstream, settings, generation])
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def whole_dataset_scope(
    conn: Connection, run_id: str, stage: Stage | str, settings: object, upstream: Sequence[str]
) -> Scope:
    """Decide between an incremental and a full pass of `stage` for the run (see `Scope`).

    A partition's completion fingerprint for the stage hashes the completion fingerprints of the
    `upstream` stages on that partition, the stage's `settings` and the generation (the run id of the
    stage's last full pass). So a full pass of an upstream whole-dataset stage, new settings, or a
    partition whose content changed all show up as a mismatch, and a mismatch means a full pass.
    """
    stage = str(stage)
    dataset = conn.execute(sa.text("select dataset from runs where run_id = :r"), {"r": run_id}).scalar_one()
    partitions = (
        conn.execute(
            sa.text("select partition_id from run_partitions where run_id = :r order by partition_id"), {"r": run_id}
        )
        .scalars()
        .all()
    )
    ups: dict[str, dict[str, str]] = {}
    for partition_id, up_stage, print_ in conn.execute(
        sa.text(
            "select c.partition_id, c.stage, c.fingerprint from stage_completions c"
            " join run_partitions rp on rp.partition_id = c.partition_id and rp.run_id = :r where c.stage = any(:up)"
        ),
        {"r": run_id, "up": list(upstream)},
    ):
        ups.setdefault(partition_id, {})[up_stage] = print_
    mine = dict(
        conn.execute(
            sa.text(
                "select c.partition_id, c.fingerprint from stage_completions c join partitions p using (partition_id)"
                " where p.dataset = :d and c.stage = :s"
            ),
            {"d": dataset, "s": stage},
        ).all()
    )
    generation = conn.execute(
        sa.text("select generation from dataset_stages where dataset = :d and stage = :s"), {"d": dataset, "s": stage}
    ).scalar()
    settings_json = json.dumps(
        settings.model_dump(mode="json") if hasattr(settings, "model_dump") else settings, sort_keys=True, default=str
    )

    def expected(partition_id: str, gen: str) -> str:
        return _print([ups.get(partition_id, {}).get(u) for u in upstream], settings_json, gen)

    in_run = set(partitions)
    removed = sorted(p for p in mine if p not in in_run)
    if generation is None:
        why = "first pass"
    else:
        changed = [p for p in partitions if p in mine and mine[p] != expected(p, generation)]
        why = (
            f"{len(changed)} partition(s) changed or re-decided upstream"
            if changed
            else f"{len(removed)} partition(s) left the dataset"
            if removed
            else "incremental"
        )
    if why != "incremental":
        return Scope(
            dataset,
            stage,
            True,
            why,
            list(partitions),
            [],
            run_id,
            {p: expected(p, run_id) for p in partitions},
            removed,
        )
    new = [p for p in partitions if p not in mine]
    return Scope(
        dataset,
        stage,
        False,
        why,
        new,
        [p for p in partitions if p in mine],
        generation,
        {p: expected(p, generation) for p in new},
        [],
    )


def forget_decisions(conn: Connection, run_id: str, stage: Stage | str) -> str:
    """Delete the stage's decisions on the run's partitions (a stage turned off in the recipe); returns the
    run's dataset, for the stage to forget its own state too."""
    conn.execute(
        sa.text(
            "delete from decisions d using run_partitions rp where rp.run_id = :r"
            " and d.partition_id = rp.partition_id and d.stage = :s"
        ),
        {"r": run_id, "s": str(stage)},
    )
    return conn.execute(sa.text("select dataset from runs where run_id = :r"), {"r": run_id}).scalar_one()


def deciding_table(conn: Connection, scope: Scope, priorities: dict[str, int]) -> None:
    """Temp tables of the pass (dropped at commit): `deciding` (the partitions it decides) and
    `source_priority` (the keep rule's source order), for the stage's SQL to join."""
    conn.execute(sa.text("create temp table deciding (partition_id text primary key) on commit drop"))
    if scope.new:
        conn.execute(sa.text("insert into deciding values (:p)"), [{"p": p} for p in scope.new])
    conn.execute(
        sa.text("create temp table source_priority (source text primary key, priority int not null) on commit drop")
    )
    conn.execute(
        sa.text("insert into source_priority values (:s, :p)"), [{"s": s, "p": p} for s, p in priorities.items()]
    )


def finish_scope(conn: Connection, run_id: str, scope: Scope, result: dict) -> None:
    """Record the pass (in the transaction that wrote its decisions): completions of the decided
    partitions, and on a full pass the new generation and the forgotten partitions."""
    if scope.full:
        conn.execute(
            sa.text(
                "insert into dataset_stages (dataset, stage, generation) values (:d, :s, :g) on conflict (dataset, stage)"
                " do update set generation = excluded.generation, updated_at = now()"
            ),
            {"d": scope.dataset, "s": scope.stage, "g": scope.generation},
        )
        conn.execute(
            sa.text("delete from stage_completions where stage = :s and partition_id = any(:ps)"),
            {"s": scope.stage, "ps": scope.removed},
        )
    for partition_id, print_ in scope.prints.items():
        complete(conn, partition_id, scope.stage, print_, run_id, result)
