"""The last runs and their funnels (`infinstruct status`): input lines, kept, dropped by stage, quarantined, and
the release a run produced. A run with a release shows the counts its release recorded (manifest.json); any other
run the counts it stored as each stage finished (`run_stage_counts`, as the UI shows them: kept is unknown until
every stage is done), or, for a run from before those were stored, its ledger as the store holds it now.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from infinstruct.record.reasons import Stage, Verdict
from infinstruct.stages import ledger_order
from infinstruct.store.ledger import ledger_query
from infinstruct.store.stage_counts import run_funnels


def last_runs(engine: Engine, dataset: str | None = None, limit: int = 5) -> list[dict[str, Any]]:
    """Newest first: each run with its release (version, path) and funnel (lines, kept, dropped, quarantined,
    `dropped_by_stage`, and `as_of`: "release" or "now")."""
    with engine.connect() as conn:
        runs = [
            dict(r)
            for r in conn.execute(
                sa.text(
                    "select r.run_id, r.dataset, r.status, r.end_reason, r.started_at, r.finished_at, rel.version, rel.path,"
                    " rel.manifest from runs r left join run_releases rel on rel.run_id = r.run_id"
                    " where cast(:d as text) is null or r.dataset = :d order by r.started_at desc limit :n"
                ),
                {"d": dataset, "n": limit},
            ).mappings()
        ]
        for run in runs:
            manifest = run.pop("manifest")
            run["funnel"] = _from_manifest(manifest) if manifest else None
    counted = run_funnels(engine, [r["run_id"] for r in runs if r["funnel"] is None])
    with engine.connect() as conn:
        for run in runs:
            if run["funnel"] is None:
                funnel = counted.get(run["run_id"])
                run["funnel"] = (
                    _from_counts(funnel) if funnel and funnel["recorded"] else _from_ledger(conn, run["run_id"])
                )
    return runs


def _from_counts(funnel: dict) -> dict[str, Any]:
    """A run's stored per-stage counts as a funnel; stages not done yet are `pending`."""
    stages = {s["stage"]: s for s in funnel["stages"]}
    ingest = stages.get(Stage.INGEST.value) or {}
    by_stage = {name: sum(s["dropped"].values()) for name, s in stages.items() if name != Stage.INGEST.value}
    return {
        "lines": ingest.get("standing_in"),
        "kept": funnel["kept"],
        "dropped": sum(by_stage.values()),
        "quarantined": sum((ingest.get("dropped") or {}).values()) if ingest.get("standing_in") is not None else None,
        "dropped_by_stage": _ordered(by_stage),
        "pending": [name for name, s in stages.items() if s["state"] != "done"],
        "as_of": "run",
    }


def _from_manifest(manifest: dict) -> dict[str, Any]:
    totals = manifest["totals"]
    by_stage = {stage: sum(reasons.values()) for stage, reasons in manifest.get("stages", {}).items()}
    by_stage.pop("ingest", None)  # quarantined lines, counted apart
    return {
        **{k: totals[k] for k in ("lines", "kept", "dropped", "quarantined")},
        "dropped_by_stage": _ordered(by_stage),
        "as_of": "release",
    }


def _from_ledger(conn, run_id: str) -> dict[str, Any]:
    ledger = ledger_query(run_id).subquery()
    counts = {v.value: 0 for v in Verdict}
    by_stage: dict[str, int] = {}
    for verdict, stage, n in conn.execute(
        sa.select(ledger.c.verdict, ledger.c.stage, sa.func.count()).group_by(ledger.c.verdict, ledger.c.stage)
    ):
        counts[verdict] += n
        if verdict == Verdict.DROPPED.value:
            by_stage[stage] = by_stage.get(stage, 0) + n
    return {"lines": sum(counts.values()), **counts, "dropped_by_stage": _ordered(by_stage), "as_of": "now"}


def _ordered(by_stage: dict[str, int]) -> dict[str, int]:
    order = ledger_order()
    return dict(
        sorted(
            ((s, n) for s, n in by_stage.items() if n),
            key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order),
        )
    )


def render(runs: list[dict[str, Any]]) -> str:
    """`infinstruct status`'s text."""
    if not runs:
        return "no runs yet"
    out = []
    for run in runs:
        f = run["funnel"]
        release = f"release v{run['version']:04d} ({run['path']})" if run["version"] else "no release"
        why = f" ({run['end_reason']})" if run["end_reason"] else ""
        out.append(f"{run['run_id']}  {run['dataset']}  {run['status']}{why}  {str(run['started_at'])[:19]}  {release}")
        stages = ", ".join(f"{s} {n}" for s, n in f["dropped_by_stage"].items())
        out.append(
            f"  {f['lines']} lines: {'?' if f['kept'] is None else f['kept']} kept, {f['dropped']} dropped{f' ({stages})' if stages else ''},"
            f" {f['quarantined']} quarantined"
            + {"release": "", "run": "", "now": "  [ledger now]"}[f["as_of"]]
            + (f"  [not done: {', '.join(f['pending'])}]" if f.get("pending") else "")
        )
    return "\n".join(out)
