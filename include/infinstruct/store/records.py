"""Reading a partition's records back, in batches, for the per-partition stages."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from infinstruct.store.stage_state import stream

RECORD_BATCH = 2_000


def partition_records(conn: Connection, partition_id: str, with_stats: bool = False) -> Iterator[list]:
    """The partition's records in batches: (line_no, record_id, turns[, stats, measurement versions]); the
    versions of stats stored under the former single version are {"*": that version}."""
    # JSON as text, parsed by orjson: psycopg2's json.loads was a quarter of the reading
    stats = """, s.stats::text, coalesce(s.versions::text, '{"*": ' || s.version || '}')""" if with_stats else ""
    join = " left join record_stats s on s.record_id = r.record_id" if with_stats else ""
    result = conn.execute(
        sa.text(
            f"select r.line_no, r.record_id, r.conversation::text{stats} from records r{join}"
            " where r.partition_id = :p order by r.line_no"
        ),
        {"p": partition_id},
        execution_options=stream(RECORD_BATCH),
    )
    for rows in result.partitions(RECORD_BATCH):  # the size given here: yield_per alone does not batch a text() query
        if with_stats:
            yield [
                (
                    line_no,
                    record_id,
                    parse_turns(conversation),
                    None if stats is None else orjson.loads(stats),
                    None if stats is None else orjson.loads(versions),
                )
                for line_no, record_id, conversation, stats, versions in rows
            ]
        else:
            yield [(line_no, record_id, parse_turns(conversation)) for line_no, record_id, conversation in rows]


def parse_turns(conversation: str) -> tuple[tuple[str, str], ...]:
    return tuple((turn["role"], turn["content"]) for turn in orjson.loads(conversation))
