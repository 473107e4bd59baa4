"""Bookkeeping shared by the pipeline's stages: decision rows and per-partition completion markers."""
from __future__ import annotations

import hashlib
import json

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .pgcopy import Copier, CopyTable, text_field
from .reasons import Stage

DECISION_COLUMNS = ("partition_id", "line_no", "stage", "verdict", "reason", "score", "detail", "duplicate_of", "run_id")


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


def replace_decisions(conn: Connection, partition_id: str, stage: Stage, rows: list[dict]) -> None:
    """A per-partition stage's decisions, replacing the ones it made before."""
    conn.execute(sa.text("delete from decisions where partition_id = :p and stage = :s"), {"p": partition_id, "s": stage.value})
    insert_decisions(conn, rows)


def fingerprint(conn: Connection, partition_id: str, *settings: object) -> str:
    """What a per-partition stage's result depends on: the partition's content and the stage's settings."""
    content = conn.execute(sa.text("select ingested_checksum from partitions where partition_id = :p"),
                           {"p": partition_id}).scalar()
    blob = json.dumps([content, *[s.model_dump(mode="json") if hasattr(s, "model_dump") else s for s in settings]],
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def completed(conn: Connection, partition_id: str, stage: Stage, print_: str) -> dict | None:
    """The stored result when this stage already ran on this exact input, else None."""
    return conn.execute(sa.text(
        "select result from stage_completions where partition_id = :p and stage = :s and fingerprint = :f"),
        {"p": partition_id, "s": stage.value, "f": print_}).scalar()


def complete(conn: Connection, partition_id: str, stage: Stage, print_: str, run_id: str, result: dict) -> None:
    """Mark the stage done for this input (in the transaction that wrote its rows)."""
    conn.execute(sa.text(
        "insert into stage_completions (partition_id, stage, fingerprint, run_id, result)"
        " values (:p, :s, :f, :r, cast(:res as jsonb)) on conflict (partition_id, stage) do update set"
        " fingerprint = excluded.fingerprint, run_id = excluded.run_id, result = excluded.result, completed_at = now()"),
        {"p": partition_id, "s": stage.value, "f": print_, "r": run_id, "res": json.dumps(result)})
