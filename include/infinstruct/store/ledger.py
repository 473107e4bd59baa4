"""The ledger: the final verdict for every input line of a run's dataset, and the kept set.

Every input line is exactly one of: a record (kept, or dropped by a stage's decision) or a
quarantined line. `accounting` checks lines = kept + dropped + quarantined per source.

A duplicate's `duplicate_of` is the record it was found to duplicate when its stage ran; a later stage
may drop that one too (an exact copy of a record that semantic dedup removed afterwards). Its
`representative` follows those drops to the record that stands for it after deduplication
(`representatives`), which the release holds unless the selection left it out.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from infinstruct.errors import DataError
from infinstruct.record.reasons import Drop, Stage, Verdict
from infinstruct.stages import ledger_order
from infinstruct.store.db import decisions, partitions, quarantine, records, run_partitions

STORED_COLUMNS = (
    "source",
    "file",
    "line",
    "partition_id",
    "record_id",
    "verdict",
    "stage",
    "reason",
    "score",
    "duplicate_of",
    "detail",
    "run_id",
)  # what `ledger_query` returns
LEDGER_COLUMNS = (*STORED_COLUMNS, "representative")  # a release's ledger.parquet: `ledger_rows`
DUPLICATE_REASONS = frozenset(d.value for d in Drop)
MAX_CHAIN = 32  # duplicate_of links followed at most; a longer chain is a defect, reported as such


def in_run(run_id: str, partition_col):
    """The partition (column) is one of the run's."""
    return sa.exists().where(run_partitions.c.run_id == run_id, run_partitions.c.partition_id == partition_col)


def dropped(rec=records, stages: list[str] | None = None):
    """Some stage (of `stages`, when given) dropped the record line (of `records` or an alias of it).
    The same test in SQL text: `dropped_sql`; "standing before stage S" is its negation over
    `stages.decided_before(S)`."""
    found = sa.exists().where(
        decisions.c.partition_id == rec.c.partition_id,
        decisions.c.line_no == rec.c.line_no,
        decisions.c.verdict == Verdict.DROPPED.value,
    )
    return found if stages is None else found.where(decisions.c.stage.in_(stages))


def dropped_sql(alias: str = "r", stages: str | None = ":earlier", *, fence: bool = False) -> str:
    """`dropped` as SQL text: some stage of the text[] expression `stages` (None: any stage) dropped the
    record line `alias`. `fence` adds `offset 0`, which keeps the test a per-row index lookup whatever the
    planner's statistics say (right after the stages' bulk writes they are often missing or stale)."""
    stage = f" and d.stage = any({stages})" if stages is not None else ""
    return (
        f"exists (select 1 from decisions d where d.partition_id = {alias}.partition_id"
        f" and d.line_no = {alias}.line_no and d.verdict = 'dropped'{stage}{' offset 0' if fence else ''})"
    )


def standing_sql(alias: str = "r", stages: str = ":earlier", *, fence: bool = False) -> str:
    """SQL text: the record line `alias` stands before a stage: no stage of `stages` (the stages deciding
    before it, `stages.decided_before`, bound as :earlier) dropped it."""
    return "not " + dropped_sql(alias, stages, fence=fence)


def kept_records(run_id: str, *columns) -> sa.Select:
    """Records of the run's partitions that no stage dropped."""
    return sa.select(*(columns or (records,))).where(in_run(run_id, records.c.partition_id), ~dropped())


def ledger_query(run_id: str, partition_id: str | None = None) -> sa.Select:
    """One row per input line (STORED_COLUMNS) of the run, or of one of its partitions, ordered by source,
    file and line."""
    # a line dropped by several stages is reported under the earliest stage of the pipeline
    stage_rank = sa.func.array_position(sa.literal(ledger_order(), sa.ARRAY(sa.Text)), decisions.c.stage)
    drop = sa.select(decisions).where(decisions.c.verdict == Verdict.DROPPED.value)
    if partition_id is not None:
        drop = drop.where(decisions.c.partition_id == partition_id)
    drop = (
        drop.order_by(decisions.c.partition_id, decisions.c.line_no, stage_rank)
        .distinct(decisions.c.partition_id, decisions.c.line_no)
        .subquery("drop")
    )
    parsed = (
        sa.select(
            records.c.source,
            partitions.c.path.label("file"),
            records.c.line_no.label("line"),
            records.c.partition_id,
            records.c.record_id,
            sa.case((drop.c.verdict.is_(None), Verdict.KEPT.value), else_=Verdict.DROPPED.value).label("verdict"),
            drop.c.stage,
            drop.c.reason,
            drop.c.score,
            drop.c.duplicate_of,
            drop.c.detail,
            drop.c.run_id,
        )
        .select_from(
            records.join(partitions, partitions.c.partition_id == records.c.partition_id).outerjoin(
                drop, sa.and_(drop.c.partition_id == records.c.partition_id, drop.c.line_no == records.c.line_no)
            )
        )
        .where(in_run(run_id, records.c.partition_id))
    )
    if partition_id is not None:
        parsed = parsed.where(records.c.partition_id == partition_id)
    quarantined = (
        sa.select(
            quarantine.c.source,
            partitions.c.path.label("file"),
            quarantine.c.line_no.label("line"),
            quarantine.c.partition_id,
            sa.null().label("record_id"),
            sa.literal(Verdict.QUARANTINED.value).label("verdict"),
            sa.literal(Stage.INGEST.value).label("stage"),
            quarantine.c.reason,
            sa.null().label("score"),
            sa.null().label("duplicate_of"),
            quarantine.c.error.label("detail"),
            partitions.c.run_id,
        )
        .select_from(quarantine.join(partitions, partitions.c.partition_id == quarantine.c.partition_id))
        .where(in_run(run_id, quarantine.c.partition_id))
    )
    if partition_id is not None:
        quarantined = quarantined.where(quarantine.c.partition_id == partition_id)
    union = sa.union_all(parsed, quarantined).subquery("ledger")
    return sa.select(*(union.c[name] for name in STORED_COLUMNS)).order_by(union.c.source, union.c.file, union.c.line)


def ledger_rows(
    conn: Connection,
    run_id: str,
    partition_id: str | None = None,
    *,
    batch: int = 50_000,
    stream_options: dict | None = None,
) -> Iterator[list[tuple]]:
    """`ledger_query`'s rows with their `representative` (LEDGER_COLUMNS), in batches."""
    reason_at, of_at = STORED_COLUMNS.index("reason"), STORED_COLUMNS.index("duplicate_of")
    result = conn.execute(ledger_query(run_id, partition_id), execution_options=stream_options or {})
    for rows in result.partitions(batch):
        wanted = {row[of_at] for row in rows if row[reason_at] in DUPLICATE_REASONS}
        found = representatives(conn, run_id, wanted)
        yield [(*row, found.get(row[of_at]) if row[reason_at] in DUPLICATE_REASONS else None) for row in rows]


_FATES = sa.text("""
select r.record_id, dd.stage, dd.reason, dd.duplicate_of
from records r
join run_partitions rp on rp.partition_id = r.partition_id and rp.run_id = :run
left join lateral (select d.stage, d.reason, d.duplicate_of from decisions d
                   where d.partition_id = r.partition_id and d.line_no = r.line_no and d.verdict = 'dropped'
                   order by array_position(cast(:order as text[]), d.stage) limit 1) dd on true
where r.record_id = any(:ids)
""")


def representatives(conn: Connection, run_id: str, record_ids: Iterable[str]) -> dict[str, str | None]:
    """Per record id (a duplicate's `duplicate_of`): the record that stands for it after deduplication.

    That is the id itself when one of its copies in the run is dropped by no stage, or by a stage after
    the deduplication (selection); else the `duplicate_of` of the copy a later dedup stage dropped,
    followed the same way. None when the chain ends at a record that no copy of stands for (or loops)."""
    order = ledger_order()
    last_dedup = max(order.index(s) for s in (Stage.DEDUP, Stage.NEAR_DEDUP, Stage.SEMANTIC_DEDUP) if s in order)
    out: dict[str, str | None] = {}
    links: dict[str, str | None] = {}  # id -> the next id of its chain (itself when it stands)
    todo = set(record_ids) - {None}
    for _ in range(MAX_CHAIN):
        if not todo:
            break
        fates: dict[str, list[tuple]] = {i: [] for i in todo}
        for record_id, stage, reason, duplicate_of in conn.execute(
            _FATES, {"run": run_id, "ids": sorted(todo), "order": order}
        ):
            fates[record_id].append((stage, reason, duplicate_of))
        for record_id, rows in fates.items():
            links[record_id] = _next(record_id, rows, order, last_dedup)
        todo = {n for n in links.values() if n is not None and n not in links}
    for record_id in set(record_ids) - {None}:
        seen, current = set(), record_id
        while current is not None and links.get(current) not in (current, None) and current not in seen:
            seen.add(current)
            current = links.get(current)
        out[record_id] = current if current is not None and links.get(current) == current else None
    return out


def _next(record_id: str, rows: Sequence[tuple], order: list[str], last_dedup: int) -> str | None:
    """Where a record id's chain goes: itself when a copy stands after deduplication, else the record a
    dedup stage dropped its surviving copy for (exact copies name the id itself: not a link)."""
    link = None
    for stage, reason, duplicate_of in rows:
        if stage is None or order.index(stage) > last_dedup:
            return record_id
        if reason in DUPLICATE_REASONS and reason != Drop.EXACT_DUPLICATE.value:
            link = duplicate_of
    return link


def accounting(engine: Engine, run_id: str) -> dict[str, dict[str, int]]:
    """Per source: lines (as ingest counted them), kept, dropped, quarantined; raises if they do not add up."""
    ledger = ledger_query(run_id).subquery()
    counted = sa.select(ledger.c.source, ledger.c.verdict, sa.func.count()).group_by(ledger.c.source, ledger.c.verdict)
    lines = (
        sa.select(partitions.c.source, sa.func.sum(partitions.c.lines))
        .select_from(partitions.join(run_partitions, run_partitions.c.partition_id == partitions.c.partition_id))
        .where(run_partitions.c.run_id == run_id)
        .group_by(partitions.c.source)
    )
    with engine.connect() as conn:
        per_source: dict[str, dict[str, int]] = {
            source: {"lines": int(n or 0), **{v.value: 0 for v in Verdict}} for source, n in conn.execute(lines)
        }
        for source, verdict, n in conn.execute(counted):
            per_source[source][verdict] = n
    for source, counts in per_source.items():
        accounted = sum(counts[v.value] for v in Verdict)
        if accounted != counts["lines"]:
            raise AccountingError(
                f"source {source!r}: {counts['lines']} input lines but {accounted} accounted for {counts}"
            )
    return per_source


class AccountingError(DataError, RuntimeError):
    """Input lines and ledger rows disagree: a record was lost or counted twice."""
