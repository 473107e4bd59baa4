"""The funnel as each run saw it (`run_stage_counts`): stored when a deciding stage's step returns, read by the UI.

Written in one place, the `counted` wrapper of the pipeline's deciding steps: after a per-partition step, that
partition's counts; after a whole-dataset step, every partition of the run's. The counts are the ledger's at
that moment (a line dropped by several stages is counted under the first, as the ledger reports it), so a later
run that re-decides the dataset, or a repaired partition, leaves a past run's funnel as it was.

Reading: a stage is done for a run when every partition of the run has its row; a running run's other stages
are pending (never "kept": their records are not decided yet), a failed run's were not run.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from infinstruct.record.reasons import Stage
from infinstruct.stages import decided_before, ledger_order
from infinstruct.store.ledger import standing_sql

_INGEST = """
select p.partition_id, p.source,
       (select count(*) from records r where r.partition_id = p.partition_id)
     + (select count(*) from quarantine q where q.partition_id = p.partition_id) as standing_in,
       coalesce((select jsonb_object_agg(reason, n) from (select q.reason, count(*) as n from quarantine q
                 where q.partition_id = p.partition_id group by q.reason) x), '{}') as dropped,
       (select count(*) from records r where r.partition_id = p.partition_id) as standing_out
from partitions p where p.partition_id = any(:ps)
"""

# the records standing before the stage, and those of them the stage dropped (one reason per line)
_DECIDING = f"""
with standing as (
    select r.partition_id, count(*) as n from records r
    where r.partition_id = any(:ps) and {standing_sql("r")} group by r.partition_id),
drops as (
    select partition_id, reason, count(*) as n from (
        select distinct on (dd.partition_id, dd.line_no) dd.partition_id, dd.line_no, dd.reason from decisions dd
        where dd.partition_id = any(:ps) and dd.stage = :stage and dd.verdict = 'dropped' and {standing_sql("dd")}
        order by dd.partition_id, dd.line_no, dd.reason) one_per_line
    group by partition_id, reason)
select p.partition_id, p.source, coalesce(s.n, 0) as standing_in,
       coalesce((select jsonb_object_agg(d.reason, d.n) from drops d where d.partition_id = p.partition_id), '{{}}')
           as dropped,
       coalesce(s.n, 0) - coalesce((select sum(d.n) from drops d where d.partition_id = p.partition_id), 0)
           as standing_out
from partitions p left join standing s on s.partition_id = p.partition_id
where p.partition_id = any(:ps)
"""


def record_stage_counts(conn: Connection, run_id: str, stage: Stage | str, partition_id: str | None = None) -> int:
    """Store the run's counts at `stage` for one partition, or (None) for every partition of the run, replacing
    what an earlier try of the stage stored; returns the rows written."""
    if partition_id is None:
        partitions = list(
            conn.execute(sa.text("select partition_id from run_partitions where run_id = :r"), {"r": run_id}).scalars()
        )
        conn.execute(
            sa.text("delete from run_stage_counts where run_id = :r and stage = :s"), {"r": run_id, "s": str(stage)}
        )
    else:
        partitions = [partition_id]
    if not partitions:
        return 0
    sql = _INGEST if str(stage) == Stage.INGEST.value else _DECIDING
    rows = (
        conn.execute(
            sa.text(sql),
            {
                "ps": partitions,
                "stage": str(stage),
                "earlier": decided_before(stage) if str(stage) != Stage.INGEST.value else [],
            },
        )
        .mappings()
        .all()
    )
    conn.execute(
        sa.text(
            "insert into run_stage_counts (run_id, stage, partition_id, source, standing_in, dropped, standing_out)"
            " values (:run, :stage, :partition_id, :source, :standing_in, cast(:dropped as jsonb), :standing_out)"
            " on conflict (run_id, stage, partition_id) do update set source = excluded.source,"
            " standing_in = excluded.standing_in, dropped = excluded.dropped, standing_out = excluded.standing_out,"
            " taken_at = now()"
        ),
        [{**row, "run": run_id, "stage": str(stage), "dropped": json.dumps(row["dropped"])} for row in rows],
    )
    return len(rows)


def counted(stage: Stage | str) -> Callable:
    """Wrap a deciding stage's step (`step(run_id)` or `step(run_id, partition_id)`): when it returns, the run's
    counts at `stage` are stored. The one writer of `run_stage_counts`; a stage of your own uses it too."""

    def wrap(step: Callable) -> Callable:
        @functools.wraps(step)
        def run(run_id: str, *args: Any) -> Any:
            from infinstruct.store.db import get_engine

            result = step(run_id, *args)
            with get_engine().begin() as conn:
                record_stage_counts(conn, run_id, stage, args[0] if args else None)
            return result

        run.counts = stage  # the DAG wraps a step of your own stage that lacks it (dags/infinstruct_tasks.py)
        return run

    return wrap


def _totals(conn: Connection, run_ids: list[str], by_source: bool) -> list[dict[str, Any]]:
    source = "c.source" if by_source else "''"
    totals = {
        (r["run_id"], r["stage"], r["source"]): {**r, "dropped": {}}
        for r in conn.execute(
            sa.text(
                f"select c.run_id, c.stage, {source} as source, count(*) as partitions, sum(c.standing_in) as standing_in,"
                " sum(c.standing_out) as standing_out, max(c.taken_at) as taken_at from run_stage_counts c"
                " where c.run_id = any(:runs) group by 1, 2, 3"
            ),
            {"runs": run_ids},
        ).mappings()
    }
    for run_id, stage, src, reason, n in conn.execute(
        sa.text(
            f"select c.run_id, c.stage, {source}, kv.key, sum(cast(kv.value as bigint)) from run_stage_counts c,"
            " jsonb_each_text(c.dropped) kv where c.run_id = any(:runs) group by 1, 2, 3, 4 order by 5 desc, 4"
        ),
        {"runs": run_ids},
    ):
        totals[(run_id, stage, src)]["dropped"][reason] = int(n)
    return list(totals.values())


def _planned(conn: Connection, run_ids: list[str]) -> dict[str, int]:
    return dict(
        conn.execute(
            sa.text("select run_id, count(*) from run_partitions where run_id = any(:runs) group by run_id"),
            {"runs": run_ids},
        ).all()
    )


def _stage_state(counted_partitions: int, planned: int, run_status: str) -> str:
    if planned and counted_partitions >= planned:
        return "done"
    if run_status == "running":
        return "running" if counted_partitions else "pending"
    return "partial" if counted_partitions else "not run"


def run_funnels(engine: Engine, run_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Per run: `stages`, in pipeline order, each {stage, state (done | running | pending | partial | not run),
    partitions, planned, standing_in, dropped {reason: n}, standing_out, taken_at}, counts None unless some
    partition was counted; `kept`: the records standing after the last stage, None until every stage is done;
    `status` and `planned` (the run's partitions)."""
    order = ledger_order()
    with engine.connect() as conn:
        status = dict(
            conn.execute(sa.text("select run_id, status from runs where run_id = any(:runs)"), {"runs": run_ids}).all()
        )
        planned = _planned(conn, run_ids)
        totals = {(t["run_id"], t["stage"]): t for t in _totals(conn, run_ids, by_source=False)}
    out = {}
    for run_id in run_ids:
        stages = []
        extra = sorted({s for r, s in totals if r == run_id} - set(order))  # a stage no longer declared
        for stage in [*order, *extra]:
            t = totals.get((run_id, stage))
            n = t["partitions"] if t else 0
            stages.append(
                {
                    "stage": stage,
                    "state": _stage_state(n, planned.get(run_id, 0), status.get(run_id, "")),
                    "partitions": n,
                    "planned": planned.get(run_id, 0),
                    "standing_in": int(t["standing_in"]) if t else None,
                    "dropped": t["dropped"] if t else {},
                    "standing_out": int(t["standing_out"]) if t else None,
                    "taken_at": t["taken_at"] if t else None,
                }
            )
        recorded = any(s["partitions"] for s in stages)
        done = recorded and all(s["state"] == "done" for s in stages if s["stage"] in order)
        out[run_id] = {
            "run_id": run_id,
            "status": status.get(run_id),
            "planned": planned.get(run_id, 0),
            "recorded": recorded,
            "stages": stages,
            "kept": stages[len(order) - 1]["standing_out"] if done else None,
        }
    return out


def run_funnel_by_source(engine: Engine, run_id: str) -> list[dict[str, Any]]:
    """Per source of the run: its lines (what ingest read), and per stage the lines it dropped by reason and the
    records standing after it, as counted when the stage finished (`stages`: {stage: {...}}); sources by name."""
    with engine.connect() as conn:
        rows = _totals(conn, [run_id], by_source=True)
    sources: dict[str, dict[str, Any]] = {}
    for row in rows:
        source = sources.setdefault(row["source"], {"source": row["source"], "stages": {}})
        source["stages"][row["stage"]] = {k: row[k] for k in ("partitions", "standing_in", "standing_out", "dropped")}
    return [sources[s] for s in sorted(sources)]
