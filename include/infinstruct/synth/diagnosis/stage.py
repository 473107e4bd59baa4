"""Diagnosis: where the student model fails, per coarse category; the report that steers the next run.

`diagnose_batch`: the student role answers every kept child's instruction as a user would ask it; the judge
grades that answer with the judging rubric; an overall under `diagnosis.fail_below` (or an unusable grade)
is a failure. `report_diagnosis`: per category of the children's seeds, how many answers were graded and
failed; a category failed at least `weak_fail_rate` of the time (over at least `min_graded` answers) is
weak. The report is stored (`synth_diagnosis`), goes into the release card, and the dataset's next run
favours seeds of weak categories (`seeds`); as `weak_domains.json` it is Phase 1's top-up input.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from infinstruct.ml.roles import Role, chat_for
from infinstruct.synth import prompts
from infinstruct.synth.judging.stage import grade
from infinstruct.synth.requests import request_seed, within_budget
from infinstruct.synth.run import SynthesisRun

log = logging.getLogger(__name__)


def diagnose_batch(engine: Engine, run: SynthesisRun, batch: int) -> dict[str, Any]:
    """The student's answer to each kept child of the batch, graded by the judge (stored in `student`)."""
    settings = run.settings.diagnosis
    if not settings.enabled:
        return {"batch": batch, "disabled": True}
    with engine.connect() as conn:
        children = conn.execute(
            sa.text(
                "select child_id, instruction from synth_children where run_id = :r and"
                " batch = :b and verdict = 'kept' order by child_id"
            ),
            {"r": run.run_id, "b": batch},
        ).all()
    student = chat_for(run.recipe.llm, Role.STUDENT, engine, run_id=run.run_id, free_text=True)
    judge = chat_for(run.recipe.llm, Role.JUDGE, engine, run_id=run.run_id)
    asks = [
        [{"role": "user", "content": prompts.render("student", run.settings.prompts, instruction=c.instruction)}]
        for c in children
    ]
    answers = within_budget(
        student.ask_many, asks, "student-v1", str, [request_seed(c.child_id, "student") for c in children]
    )
    grades = grade(judge, run, [(c.child_id, c.instruction, a) for c, a in zip(children, answers)], "student")
    rows = []
    for child, answer, verdict in zip(children, answers, grades):
        score = float(verdict.value.overall) if verdict.value is not None else None
        failed = score is None or score < settings.fail_below
        rows.append(
            {
                "c": child.child_id,
                "s": json.dumps(
                    {
                        "answer": answer,
                        "model": student.settings.model,
                        "overall": score,
                        "failed": failed,
                        "grade_error": verdict.error,
                        "prompt_version": prompts.version("student", run.settings.prompts),
                    }
                ),
            }
        )
    with engine.begin() as conn:
        if rows:
            conn.execute(
                sa.text("update synth_children set student = cast(:s as jsonb) where run_id = :r and child_id = :c"),
                [{**row, "r": run.run_id} for row in rows],
            )
    failed = sum(1 for row in rows if json.loads(row["s"])["failed"])
    log.info("synthesis %s batch %d: the student failed %d of %d", run.run_id, batch, failed, len(rows))
    return {"batch": batch, "graded": len(rows), "failed": failed}


_PER_CATEGORY = sa.text("""
select category, count(*) as graded,
       count(*) filter (where (c.student->>'failed')::boolean) as failed,
       avg((c.student->>'overall')::float) as mean_score
from synth_children c
join synth_seeds s on s.run_id = c.run_id and s.record_id = c.root_id, unnest(s.categories) category
where c.run_id = :r and c.student is not null
group by category order by category""")


def report_diagnosis(engine: Engine, run: SynthesisRun) -> dict[str, Any]:
    """Store the run's per-category report (replacing a previous try's); returns it with the weak categories."""
    settings = run.settings.diagnosis
    if not settings.enabled:
        return {"disabled": True}
    with engine.connect() as conn:
        rows = conn.execute(_PER_CATEGORY, {"r": run.run_id}).mappings().all()
    report = []
    for row in rows:
        rate = row["failed"] / row["graded"]
        report.append(
            {
                "category": row["category"],
                "graded": row["graded"],
                "failed": row["failed"],
                "fail_rate": rate,
                "mean_score": row["mean_score"],
                "weak": row["graded"] >= settings.min_graded and rate >= settings.weak_fail_rate,
            }
        )
    with engine.begin() as conn:
        conn.execute(sa.text("delete from synth_diagnosis where run_id = :r"), {"r": run.run_id})
        if report:
            conn.execute(
                sa.text(
                    "insert into synth_diagnosis (run_id, dataset, category, graded, failed, fail_rate, mean_score, weak)"
                    " values (:run, :d, :category, :graded, :failed, :fail_rate, :mean_score, :weak)"
                ),
                [{**r, "run": run.run_id, "d": run.dataset} for r in report],
            )
    weak = [r["category"] for r in report if r["weak"]]
    log.info("synthesis %s: diagnosis over %d categories, weak: %s", run.run_id, len(report), weak or "none")
    return {"categories": len(report), "weak": weak}


def diagnosis_report(engine: Engine, run_id: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [
            dict(r)
            for r in conn.execute(
                sa.text(
                    "select category, graded, failed, fail_rate, mean_score, weak from synth_diagnosis where run_id = :r"
                    " order by fail_rate desc, category"
                ),
                {"r": run_id},
            ).mappings()
        ]
