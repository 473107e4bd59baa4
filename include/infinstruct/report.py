"""Read-only views of the store for people: recent runs, and one run's funnel, gates and release."""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine


def recent_runs(engine: Engine, limit: int = 50) -> list[dict[str, Any]]:
    """Newest runs first, with their release version when they produced one."""
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.text(
            "select r.run_id, r.dataset, r.status, r.started_at, r.finished_at, r.recipe_hash, rel.version,"
            " (select count(*) from run_partitions rp where rp.run_id = r.run_id) as partitions,"
            " (select count(*) from gate_results g where g.run_id = r.run_id and not g.success) as failed_gates"
            " from runs r left join releases rel on rel.run_id = r.run_id"
            " order by r.started_at desc limit :n"), {"n": limit}).mappings()]


def run_funnel(engine: Engine, run_id: str) -> list[dict[str, Any]]:
    """Per source: lines, records, quarantined by reason, dropped by reason, kept (from the store, not a release)."""
    with engine.connect() as conn:
        rows = conn.execute(sa.text("""
            select p.source, sum(p.lines) as lines, sum(p.records) as records, sum(p.quarantined) as quarantined
            from partitions p join run_partitions rp on rp.partition_id = p.partition_id
            where rp.run_id = :run group by p.source order by p.source"""), {"run": run_id}).mappings().all()
        reasons = conn.execute(sa.text("""
            select source, reason, count(*) as n from (
                select q.source, q.reason from quarantine q join run_partitions rp on rp.partition_id = q.partition_id
                where rp.run_id = :run
                union all
                select r.source, d.reason from decisions d
                join records r on r.partition_id = d.partition_id and r.line_no = d.line_no
                join run_partitions rp on rp.partition_id = d.partition_id
                where rp.run_id = :run and d.verdict = 'dropped'
            ) x group by source, reason order by source, n desc"""), {"run": run_id}).all()
    by_source: dict[str, dict[str, int]] = {}
    for source, reason, n in reasons:
        by_source.setdefault(source, {})[reason] = n
    funnel = []
    for row in rows:
        source_reasons = by_source.get(row["source"], {})
        dropped = sum(n for reason, n in source_reasons.items() if not reason.startswith("quarantine:"))
        funnel.append({**row, "dropped": dropped, "kept": (row["records"] or 0) - dropped, "reasons": source_reasons})
    return funnel


def run_gates(engine: Engine, run_id: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.text(
            "select gate, scope, success, statistics, failures, created_at from gate_results"
            " where run_id = :run order by id"), {"run": run_id}).mappings()]
