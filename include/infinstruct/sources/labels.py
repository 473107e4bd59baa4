"""Names of partitions for people: `chat/2 of 3` rather than a partition hash (Airflow's mapped-task labels).

A partition is the shard of a source file. Its label is the source, then the file when the source has
several (its path below the folder the source's files share), then the shard's place among its file's
shards: `alpaca_eval_models/3 of 7`, `chat/2026-12-01/a.jsonl/1 of 2`.
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Iterable, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Engine


class Shard(NamedTuple):
    partition_id: str
    source: str
    path: str
    shard: int  # 0-based place in its file


def partition_labels(shards: Iterable[Shard]) -> dict[str, str]:
    """Per partition id, its label among `shards` (the partitions of one plan)."""
    shards = list(shards)
    per_file: dict[tuple[str, str], int] = defaultdict(int)
    files: dict[str, set[str]] = defaultdict(set)
    for s in shards:
        per_file[(s.source, s.path)] += 1
        files[s.source].add(s.path)
    shown = {}
    for source, paths in files.items():
        if len(paths) == 1:
            shown.update({(source, p): "" for p in paths})
            continue
        try:
            common = os.path.commonpath([os.path.dirname(p) or "." for p in paths])
        except ValueError:  # absolute and relative paths: show them whole
            common = None
        shown.update({(source, p): (os.path.relpath(p, common) if common else p) + "/" for p in paths})
    return {
        s.partition_id: f"{s.source}/{shown[(s.source, s.path)]}{s.shard + 1} of {per_file[(s.source, s.path)]}"
        for s in shards
    }


def run_partition_labels(engine: Engine, run_id: str) -> dict[str, str]:
    """Per partition id of the run's plan, its label."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "select p.partition_id, p.source, p.path, p.shard from run_partitions rp"
                " join partitions p on p.partition_id = rp.partition_id where rp.run_id = :run"
            ),
            {"run": run_id},
        )
        return partition_labels(Shard(*row) for row in rows)
