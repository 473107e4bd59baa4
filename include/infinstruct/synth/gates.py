"""Great Expectations gates between the Phase-2 stages (thresholds: `synthesis.gates`).

tags       every released record has a tag row (labels, or the tagger's error), its categories are of the
           recipe's set, and at least `min_labelled_share` of them have labels
evolution  no kept child is its parent again or carries the evolver's scaffolding; at most
           `max_refusal_share` of the children were refusals
judging    every kept child has a reward within [min_reward, 10]; at least `min_valid_judge_share` of the
           judged children got a verdict that fitted the rubric; at least `min_records` kept
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Engine

from infinstruct.gates.checks import GateResult, run_gate
from infinstruct.synth.prompts import SCAFFOLDING_MARKERS
from infinstruct.synth.run import SynthesisRun
from infinstruct.synth.tagging.labels import TaggingSettings


def check_tags(engine: Engine, run: SynthesisRun, tagger: str) -> GateResult:
    import great_expectations.expectations as gxe

    allowed = list((run.recipe.tagging or TaggingSettings()).categories)
    rel = sa.table("synth_release_records", sa.column("run_id"), sa.column("record_id"))
    tags = sa.table(
        "record_tags",
        sa.column("record_id"),
        sa.column("tagger"),
        sa.column("abilities", ARRAY(sa.Text)),
        sa.column("categories", ARRAY(sa.Text)),
    )
    query = (
        sa.select(
            rel.c.record_id,
            (tags.c.record_id.is_not(None)).label("tagged"),
            sa.cast(sa.func.coalesce(sa.func.cardinality(tags.c.abilities), 0) > 0, sa.Integer).label("labelled"),
            sa.func.coalesce(tags.c.categories.contained_by(sa.cast(allowed, ARRAY(sa.Text))), True).label(
                "categories_known"
            ),
        )
        .select_from(rel.outerjoin(tags, sa.and_(tags.c.record_id == rel.c.record_id, tags.c.tagger == tagger)))
        .where(rel.c.run_id == run.run_id)
    )
    expectations = [
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectColumnValuesToBeInSet(column="tagged", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="categories_known", value_set=[True]),
        gxe.ExpectColumnMeanToBeBetween(column="labelled", min_value=run.settings.gates.min_labelled_share),
    ]
    return run_gate(engine, run.run_id, "tags", "released records", query, expectations)


CHILDREN = sa.table(
    "synth_children",
    *(
        sa.column(c)
        for c in ("run_id", "child_id", "parent_id", "instruction", "verdict", "reason", "reward", "stage", "judge")
    ),
)


def check_evolution(engine: Engine, run: SynthesisRun) -> GateResult:
    import great_expectations.expectations as gxe

    child, parent = CHILDREN, CHILDREN.alias("parent")
    seeds = sa.table("synth_seeds", sa.column("run_id"), sa.column("record_id"), sa.column("instruction"))
    parent_text = sa.func.coalesce(parent.c.instruction, seeds.c.instruction)
    kept = child.c.verdict == "kept"
    scaffolding = sa.or_(
        *(sa.func.lower(child.c.instruction).contains(m, autoescape=True) for m in SCAFFOLDING_MARKERS)
    )
    query = (
        sa.select(
            child.c.child_id,
            sa.case(
                (kept, sa.func.lower(sa.func.btrim(child.c.instruction)) != sa.func.lower(sa.func.btrim(parent_text))),
                else_=True,
            ).label("changed"),
            sa.case((kept, scaffolding), else_=False).label("scaffolding"),
            sa.cast(child.c.reason == "evolution:refusal", sa.Integer).label("refusal"),
        )
        .select_from(
            child.outerjoin(
                parent, sa.and_(parent.c.run_id == child.c.run_id, parent.c.child_id == child.c.parent_id)
            ).outerjoin(seeds, sa.and_(seeds.c.run_id == child.c.run_id, seeds.c.record_id == child.c.parent_id))
        )
        .where(child.c.run_id == run.run_id)
    )
    expectations = [
        gxe.ExpectColumnValuesToBeInSet(column="changed", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="scaffolding", value_set=[False]),
        gxe.ExpectColumnMeanToBeBetween(column="refusal", max_value=run.settings.gates.max_refusal_share),
    ]
    return run_gate(engine, run.run_id, "evolution", "evolved children", query, expectations)


def check_judging(engine: Engine, run: SynthesisRun) -> GateResult:
    import great_expectations.expectations as gxe

    child = CHILDREN
    kept = child.c.verdict == "kept"
    judged = sa.select(
        child.c.child_id,
        sa.case((kept, child.c.reward), else_=None).label("kept_reward"),
        sa.cast(sa.and_(kept, child.c.reward.is_(None)), sa.Integer).label("kept_without_reward"),
        sa.cast(kept, sa.Integer).label("kept"),
        sa.cast(child.c.reason.is_distinct_from("judge:invalid_answer"), sa.Integer).label("valid_verdict"),
    ).where(child.c.run_id == run.run_id, child.c.stage == "judging")
    gates, floor = run.settings.gates, run.settings.judging.min_reward
    expectations = [
        gxe.ExpectColumnValuesToBeBetween(column="kept_reward", min_value=floor, max_value=10),  # nulls: dropped
        gxe.ExpectColumnValuesToBeInSet(column="kept_without_reward", value_set=[0]),
        gxe.ExpectColumnMeanToBeBetween(column="valid_verdict", min_value=gates.min_valid_judge_share),
        gxe.ExpectColumnSumToBeBetween(column="kept", min_value=gates.min_records),
    ]
    return run_gate(engine, run.run_id, "judging", "judged children", judged, expectations)
