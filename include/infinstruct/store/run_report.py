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
        return [
            dict(r)
            for r in conn.execute(
                sa.text(
                    "select r.run_id, r.dataset, r.status, r.end_reason, r.started_at, r.finished_at, r.recipe_hash, rel.version,"
                    " (select count(*) from run_partitions rp where rp.run_id = r.run_id) as partitions,"
                    " (select count(*) from gate_results g where g.run_id = r.run_id and not g.success) as failed_gates"
                    " from runs r left join run_releases rel on rel.run_id = r.run_id"
                    " order by r.started_at desc limit :n"
                ),
                {"n": limit},
            ).mappings()
        ]


def run_funnel(engine: Engine, run_id: str) -> list[dict[str, Any]]:
    """Per source: lines, records, quarantined, dropped and kept, with the reasons: the counts of the run's
    ledger (`ledger_query`: one row per input line, a line dropped by several stages under the first)."""
    ledger = ledger_query(run_id).subquery()
    counted = (
        sa.select(ledger.c.source, ledger.c.verdict, ledger.c.reason, sa.func.count().label("n"))
        .group_by(ledger.c.source, ledger.c.verdict, ledger.c.reason)
        .order_by(ledger.c.source, sa.func.count().desc(), ledger.c.reason)
    )
    funnel: dict[str, dict[str, Any]] = {}
    with engine.connect() as conn:
        for source, verdict, reason, n in conn.execute(counted):
            row = funnel.setdefault(
                source, {"source": source, "lines": 0, "records": 0, "reasons": {}, **{v.value: 0 for v in Verdict}}
            )
            row["lines"] += n
            row[verdict] += n
            row["records"] += n if verdict != Verdict.QUARANTINED.value else 0
            if reason:
                row["reasons"][reason] = row["reasons"].get(reason, 0) + n
    return list(funnel.values())


def run_gates(engine: Engine, run_id: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [
            dict(r)
            for r in conn.execute(
                sa.text(
                    "select gate, scope, success, statistics, failures, created_at from gate_results"
                    " where run_id = :run order by id"
                ),
                {"run": run_id},
            ).mappings()
        ]


def run_release(engine: Engine, run_id: str) -> dict[str, Any] | None:
    """The release a run produced: version, path, manifest, its card (the folder's README.md, else rendered from
    the manifest) and what changed against the release before it: the manifest's diff (records added, removed,
    unchanged), kept per source and dropped per stage and reason, before -> after. None without a release."""
    from pathlib import Path

    from infinstruct.release.card import render

    with engine.connect() as conn:
        release = (
            conn.execute(
                sa.text(
                    "select dataset, version, path, manifest, created_at from run_releases"
                    " where run_id = :r order by version desc limit 1"
                ),
                {"r": run_id},
            )
            .mappings()
            .first()
        )
        if release is None:
            return None
        previous = (
            conn.execute(
                sa.text(
                    "select version, manifest from releases where dataset = :d and version < :v"
                    " order by version desc limit 1"
                ),
                {"d": release["dataset"], "v": release["version"]},
            )
            .mappings()
            .first()
        )
    manifest = release["manifest"]
    card_file = Path(release["path"]) / "README.md"
    out = {
        **release,
        "card": card_file.read_text() if card_file.is_file() else render(manifest),
        "card_from": str(card_file) if card_file.is_file() else "manifest",
        "diff": manifest.get("diff", {}),
        "previous_version": previous["version"] if previous else None,
        "sources": [],
        "reasons": [],
    }
    before = previous["manifest"] if previous else {"sources": {}, "stages": {}, "totals": {}}
    for source in sorted(set(manifest["sources"]) | set(before["sources"])):
        was, now = before["sources"].get(source, {}), manifest["sources"].get(source, {})
        out["sources"].append(
            {
                "source": source,
                **{f"{k}_before": was.get(k) for k in ("lines", "kept")},
                **{f"{k}_after": now.get(k) for k in ("lines", "kept")},
            }
        )
    for stage in [*manifest["stages"], *(s for s in before["stages"] if s not in manifest["stages"])]:
        was, now = before["stages"].get(stage, {}), manifest["stages"].get(stage, {})
        out["reasons"] += [
            {
                "stage": stage,
                "reason": reason,
                "before": was.get(reason, 0) if previous else None,
                "after": now.get(reason, 0),
            }
            for reason in sorted(set(was) | set(now))
        ]
    return out


def datasets(engine: Engine) -> list[str]:
    """Datasets with runs, the one run most recently first."""
    with engine.connect() as conn:
        return list(
            conn.execute(sa.text("select dataset from runs group by dataset order by max(started_at) desc")).scalars()
        )


def funnel_history(engine: Engine, dataset: str, limit: int = 20) -> list[dict[str, Any]]:
    """The last `limit` runs of a dataset, oldest first, each with its funnel as it saw it
    (`stage_counts.run_funnels`) and its release version."""
    from infinstruct.store.stage_counts import run_funnels

    with engine.connect() as conn:
        runs = [
            dict(r)
            for r in conn.execute(
                sa.text(
                    "select r.run_id, r.status, r.started_at, rel.version from runs r"
                    " left join run_releases rel on rel.run_id = r.run_id where r.dataset = :d"
                    " order by r.started_at desc limit :n"
                ),
                {"d": dataset, "n": limit},
            ).mappings()
        ][::-1]
    funnels = run_funnels(engine, [r["run_id"] for r in runs])
    return [{**r, "funnel": funnels[r["run_id"]]} for r in runs]
