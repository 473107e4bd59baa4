"""The ledger: the final verdict for every input line of a run's dataset, and the kept set.

Every input line is exactly one of: a record (kept, or dropped by a stage's decision) or a
quarantined line. `accounting` checks lines = kept + dropped + quarantined per source.
"""
from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from infinstruct.errors import DataError
from infinstruct.record.reasons import Stage, Verdict
from infinstruct.stages import ledger_order
from infinstruct.store.db import decisions, partitions, quarantine, records, run_partitions

LEDGER_COLUMNS = ("source", "file", "line", "partition_id", "record_id", "verdict", "stage", "reason", "score",
                  "duplicate_of", "detail", "run_id")


def in_run(run_id: str, partition_col):
    """The partition (column) is one of the run's."""
    return sa.exists().where(run_partitions.c.run_id == run_id, run_partitions.c.partition_id == partition_col)


def dropped(rec=records):
    """Some stage dropped the record line (of `records` or an alias of it)."""
    return sa.exists().where(decisions.c.partition_id == rec.c.partition_id, decisions.c.line_no == rec.c.line_no,
                             decisions.c.verdict == Verdict.DROPPED.value)


def kept_records(run_id: str, *columns) -> sa.Select:
    """Records of the run's partitions that no stage dropped."""
    return sa.select(*(columns or (records,))).where(in_run(run_id, records.c.partition_id), ~dropped())


def ledger_query(run_id: str, partition_id: str | None = None) -> sa.Select:
    """One row per input line (LEDGER_COLUMNS) of the run, or of one of its partitions, ordered by source,
    file and line."""
    # a line dropped by several stages is reported under the earliest stage of the pipeline
    stage_rank = sa.func.array_position(sa.literal(ledger_order(), sa.ARRAY(sa.Text)), decisions.c.stage)
    drop = sa.select(decisions).where(decisions.c.verdict == Verdict.DROPPED.value)
    if partition_id is not None:
        drop = drop.where(decisions.c.partition_id == partition_id)
    drop = (drop
            .order_by(decisions.c.partition_id, decisions.c.line_no, stage_rank)
            .distinct(decisions.c.partition_id, decisions.c.line_no).subquery("drop"))
    parsed = (
        sa.select(
            records.c.source, partitions.c.path.label("file"), records.c.line_no.label("line"), records.c.partition_id,
            records.c.record_id,
            sa.case((drop.c.verdict.is_(None), Verdict.KEPT.value), else_=Verdict.DROPPED.value).label("verdict"),
            drop.c.stage, drop.c.reason, drop.c.score, drop.c.duplicate_of, drop.c.detail, drop.c.run_id)
        .select_from(records.join(partitions, partitions.c.partition_id == records.c.partition_id)
                     .outerjoin(drop, sa.and_(drop.c.partition_id == records.c.partition_id, drop.c.line_no == records.c.line_no)))
        .where(in_run(run_id, records.c.partition_id)))
    if partition_id is not None:
        parsed = parsed.where(records.c.partition_id == partition_id)
    quarantined = (
        sa.select(
            quarantine.c.source, partitions.c.path.label("file"), quarantine.c.line_no.label("line"), quarantine.c.partition_id,
            sa.null().label("record_id"), sa.literal(Verdict.QUARANTINED.value).label("verdict"),
            sa.literal(Stage.INGEST.value).label("stage"), quarantine.c.reason, sa.null().label("score"),
            sa.null().label("duplicate_of"), quarantine.c.error.label("detail"), partitions.c.run_id)
        .select_from(quarantine.join(partitions, partitions.c.partition_id == quarantine.c.partition_id))
        .where(in_run(run_id, quarantine.c.partition_id)))
    if partition_id is not None:
        quarantined = quarantined.where(quarantine.c.partition_id == partition_id)
    union = sa.union_all(parsed, quarantined).subquery("ledger")
    return sa.select(*(union.c[name] for name in LEDGER_COLUMNS)).order_by(union.c.source, union.c.file, union.c.line)


def accounting(engine: Engine, run_id: str) -> dict[str, dict[str, int]]:
    """Per source: lines (as ingest counted them), kept, dropped, quarantined; raises if they do not add up."""
    ledger = ledger_query(run_id).subquery()
    counted = sa.select(ledger.c.source, ledger.c.verdict, sa.func.count()).group_by(ledger.c.source, ledger.c.verdict)
    lines = (sa.select(partitions.c.source, sa.func.sum(partitions.c.lines))
             .select_from(partitions.join(run_partitions, run_partitions.c.partition_id == partitions.c.partition_id))
             .where(run_partitions.c.run_id == run_id).group_by(partitions.c.source))
    with engine.connect() as conn:
        per_source: dict[str, dict[str, int]] = {
            source: {"lines": int(n or 0), **{v.value: 0 for v in Verdict}} for source, n in conn.execute(lines)}
        for source, verdict, n in conn.execute(counted):
            per_source[source][verdict] = n
    for source, counts in per_source.items():
        accounted = sum(counts[v.value] for v in Verdict)
        if accounted != counts["lines"]:
            raise AccountingError(f"source {source!r}: {counts['lines']} input lines but {accounted} accounted for {counts}")
    return per_source


class AccountingError(DataError, RuntimeError):
    """Input lines and ledger rows disagree: a record was lost or counted twice."""
