"""Read-only views of the store for people: recent runs, and one run's funnel, gates and release."""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from infinstruct.record.reasons import Verdict
from infinstruct.store.ledger import ledger_query


def recent_runs(engine: Engine, limit: int = 50) -> list[dict[str, Any]]:
    """Newest runs first, with their release version when they produced one (and `end_reason`: why a run
    was marked failed by another, e.g. abandoned by a killed process)."""
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.text(
            "select r.run_id, r.dataset, r.status, r.end_reason, r.started_at, r.finished_at, r.recipe_hash, rel.version,"
            " (select count(*) from run_partitions rp where rp.run_id = r.run_id) as partitions,"
            " (select count(*) from gate_results g where g.run_id = r.run_id and not g.success) as failed_gates"
            " from runs r left join releases rel on rel.run_id = r.run_id"
            " order by r.started_at desc limit :n"), {"n": limit}).mappings()]


def run_funnel(engine: Engine, run_id: str) -> list[dict[str, Any]]:
    """Per source: lines, records, quarantined, dropped and kept, with the reasons: the counts of the run's
    ledger (`ledger_query`: one row per input line, a line dropped by several stages under the first)."""
    ledger = ledger_query(run_id).subquery()
    counted = (sa.select(ledger.c.source, ledger.c.verdict, ledger.c.reason, sa.func.count().label("n"))
               .group_by(ledger.c.source, ledger.c.verdict, ledger.c.reason)
               .order_by(ledger.c.source, sa.func.count().desc(), ledger.c.reason))
    funnel: dict[str, dict[str, Any]] = {}
    with engine.connect() as conn:
        for source, verdict, reason, n in conn.execute(counted):
            row = funnel.setdefault(source, {"source": source, "lines": 0, "records": 0, "reasons": {},
                                             **{v.value: 0 for v in Verdict}})
            row["lines"] += n
            row[verdict] += n
            row["records"] += n if verdict != Verdict.QUARANTINED.value else 0
            if reason:
                row["reasons"][reason] = row["reasons"].get(reason, 0) + n
    return list(funnel.values())


def run_gates(engine: Engine, run_id: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.text(
            "select gate, scope, success, statistics, failures, created_at from gate_results"
            " where run_id = :run order by id"), {"run": run_id}).mappings()]
