"""Clearing state no run will read again: partitions of a file's former spelling, runs a killed process left
`running`. Both are called where a run starts its work, so the store never piles them up."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

# What a partition owns, besides its `partitions` row (decisions cascade from records, run_partitions
# from partitions); ingest deletes the same rows before it re-ingests one.
_PARTITION_TABLES = ("records", "quarantine", "contamination", "stage_completions", "lsh_keys", "release_parts")


def forget_spellings(conn: Connection, dataset: str, spellings: set[tuple[str, str]]) -> list[str]:
    """Delete the partitions (with everything they own) and the scans of the (source, path) pairs that name a
    planned file by another spelling; returns the partition ids deleted.

    Their records are the file's records a second time. The whole-dataset stages start over (a full pass):
    their stored state (accepted sets, generations) counted the deleted records."""
    if not spellings:
        return []
    sources, paths = zip(*sorted(spellings))
    pairs = {"d": dataset, "sources": list(sources), "paths": list(paths)}
    gone = (
        conn.execute(
            sa.text(
                "select partition_id from partitions where dataset = :d and (source, path) in"
                " (select * from unnest(cast(:sources as text[]), cast(:paths as text[])))"
            ),
            pairs,
        )
        .scalars()
        .all()
    )
    for table in _PARTITION_TABLES:
        conn.execute(sa.text(f"delete from {table} where partition_id = any(:ps)"), {"ps": gone})
    conn.execute(sa.text("delete from partitions where partition_id = any(:ps)"), {"ps": gone})
    conn.execute(
        sa.text(
            "delete from source_files where dataset = :d and (source, path) in"
            " (select * from unnest(cast(:sources as text[]), cast(:paths as text[])))"
        ),
        pairs,
    )
    if gone:
        conn.execute(sa.text("delete from dataset_stages where dataset = :d"), {"d": dataset})
    return gone


def abandon_stale_runs(conn: Connection, dataset: str, run_id: str) -> list[str]:
    """Mark the dataset's other runs still recorded `running` as failed, with the reason; returns their ids.

    Called as `run_id` starts: runs of one dataset never overlap (the DAG's max_active_runs, the dataset's
    run lease), so another run still `running` was stopped without its failure callback (a killed
    `infinstruct run`, a lost worker). A run that was only waiting for the dataset sets itself `running`
    again when it gets it."""
    return (
        conn.execute(
            sa.text(
                "update runs set status = 'failed', finished_at = now(), end_reason = :why"
                " where dataset = :d and run_id <> :run and status = 'running' returning run_id"
            ),
            {
                "d": dataset,
                "run": run_id,
                "why": f"abandoned: still recorded as running when run {run_id} of the dataset started",
            },
        )
        .scalars()
        .all()
    )
