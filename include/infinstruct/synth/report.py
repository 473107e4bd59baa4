"""What a synthesis run did, for people: the UI plugin's Phase-2 pages read it from here."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine


def recent_synthesis_runs(engine: Engine, limit: int = 50) -> list[dict[str, Any]]:
    """The latest synthesis runs: release, status, seeds, children and kept, the synthetic version."""
    with engine.connect() as conn:
        return [
            dict(r)
            for r in conn.execute(
                sa.text("""
            select s.run_id, s.dataset, s.release_version, s.status, s.started_at,
                   (select count(*) from synth_seeds x where x.run_id = s.run_id) as seeds,
                   (select count(*) from synth_children c where c.run_id = s.run_id) as children,
                   (select count(*) from synth_children c where c.run_id = s.run_id and c.verdict = 'kept') as kept,
                   (select max(version) from run_releases r where r.run_id = s.run_id) as version
            from synth_runs s order by s.started_at desc limit :n"""),
                {"n": limit},
            ).mappings()
        ]


def synthesis_summary(engine: Engine, run_id: str) -> dict[str, Any] | None:
    """One run: its children by outcome and by operation and round, its LLM calls by role, its diagnosis."""
    with engine.connect() as conn:
        run = (
            conn.execute(
                sa.text(
                    "select run_id, dataset, release_version, release_path, status from synth_runs where run_id = :r"
                ),
                {"r": run_id},
            )
            .mappings()
            .first()
        )
        if run is None:
            return None
        outcomes = conn.execute(
            sa.text(
                "select coalesce(reason, verdict) as outcome, count(*) as n from synth_children where run_id = :r"
                " group by 1 order by 2 desc, 1"
            ),
            {"r": run_id},
        ).all()
        operations = (
            conn.execute(
                sa.text(
                    "select operation, round, count(*) as children, count(*) filter (where verdict = 'kept') as kept,"
                    " avg(reward) filter (where verdict = 'kept') as mean_reward from synth_children where run_id = :r"
                    " group by 1, 2 order by 2, 1"
                ),
                {"r": run_id},
            )
            .mappings()
            .all()
        )
        calls = (
            conn.execute(
                sa.text(
                    "select role, count(*) as calls, count(*) filter (where status <> 'ok') as not_ok,"
                    " coalesce(sum(prompt_tokens), 0) as prompt_tokens, coalesce(sum(completion_tokens), 0) as completion_tokens,"
                    " sum(cost_usd) as cost_usd, round(avg(latency_ms)) as mean_latency_ms from llm_calls where run_id = :r"
                    " group by 1 order by 1"
                ),
                {"r": run_id},
            )
            .mappings()
            .all()
        )
        diagnosis = (
            conn.execute(
                sa.text(
                    "select category, graded, failed, fail_rate, weak from synth_diagnosis where run_id = :r"
                    " order by fail_rate desc, category"
                ),
                {"r": run_id},
            )
            .mappings()
            .all()
        )
    return {
        **dict(run),
        "outcomes": [tuple(o) for o in outcomes],
        "operations": [dict(o) for o in operations],
        "calls": [dict(c) for c in calls],
        "diagnosis": [dict(d) for d in diagnosis],
    }
