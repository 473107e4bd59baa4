"""The funnel as each run saw it (`run_stage_counts`, issue 13 point 4).

Specification:
* every deciding step stores the run's counts at its stage when it returns: records standing before it, its
  drops by reason (a line under the first stage that dropped it), records standing after;
* a past run's funnel stays what it was when a later run re-ingests the same file (the ledger's recount does not);
* a running run's unfinished stages are pending and it has no kept count; a failed run's are "not run";
* a retried stage replaces its counts.
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa

from conftest import write_jsonl, write_recipe
from infinstruct import pipeline
from infinstruct.store.run_report import run_funnel
from infinstruct.store.stage_counts import run_funnel_by_source, run_funnels

GOOD = [
    {"instruction": f"Name {n} primary colours.", "input": "", "output": "Red, yellow and blue."} for n in range(2, 8)
]
REFUSAL = {"instruction": "Tell me a joke about cats.", "input": "", "output": "I'm sorry, but I can't help with that."}


def _start(tmp_path, lines) -> tuple:
    write_jsonl(tmp_path / "a.jsonl", lines)
    recipe = write_recipe(
        tmp_path,
        f"counts-{uuid.uuid4().hex[:6]}",
        [{"name": "a", "path": "a.jsonl", "format": "alpaca"}],
        ingest={"max_quarantine_ratio": 1.0},
    )
    return recipe


def _run(recipe, upto: str = "select") -> tuple[str, list[str]]:
    run_id = f"counts-{uuid.uuid4().hex[:8]}"
    pipeline.start_run(run_id, recipe)
    parts = pipeline.plan(run_id)
    for step in ("ingest_partition", "apply_rules", "decontaminate"):
        for part in parts:
            getattr(pipeline, step)(run_id, part)
        if step.startswith(upto):
            return run_id, parts
    for step in ("deduplicate", "near_deduplicate", "semantic_deduplicate", "select"):
        getattr(pipeline, step)(run_id)
        if step == upto:
            break
    return run_id, parts


def _stage(funnel: dict, name: str) -> dict:
    return next(s for s in funnel["stages"] if s["stage"] == name)


def test_each_stage_stores_what_it_saw(engine, tmp_path):
    recipe = _start(tmp_path, [GOOD[0], GOOD[0], REFUSAL, "{oops", GOOD[1]])
    run_id, _ = _run(recipe)
    funnel = run_funnels(engine, [run_id])[run_id]
    ingest, rules, dedup, select = (_stage(funnel, s) for s in ("ingest", "rules", "dedup", "select"))
    assert (ingest["standing_in"], ingest["dropped"], ingest["standing_out"]) == (5, {"quarantine:invalid_json": 1}, 4)
    assert (rules["standing_in"], rules["dropped"], rules["standing_out"]) == (4, {"rule:refusal": 1}, 3)
    assert (dedup["standing_in"], dedup["dropped"], dedup["standing_out"]) == (3, {"exact_duplicate": 1}, 2)
    assert all(s["state"] == "done" for s in funnel["stages"])
    assert select["standing_out"] == funnel["kept"] == 2
    [source] = run_funnel_by_source(engine, run_id)
    assert source["source"] == "a" and source["stages"]["dedup"]["dropped"] == {"exact_duplicate": 1}


def test_a_past_run_keeps_its_funnel_when_a_later_run_reingests_the_file(engine, tmp_path):
    recipe = _start(tmp_path, [GOOD[0], "{oops", "{oops", "{oops"])
    first, _ = _run(recipe)
    write_jsonl(tmp_path / "a.jsonl", GOOD)  # repaired: six good lines
    second, _ = _run(recipe)
    funnels = run_funnels(engine, [first, second])
    assert _stage(funnels[first], "ingest")["standing_in"] == 4 and funnels[first]["kept"] == 1
    assert _stage(funnels[second], "ingest")["standing_in"] == 6 and funnels[second]["kept"] == 6
    # what the UI showed before: the first run recounted from today's tables
    assert run_funnel(engine, first)[0]["lines"] == 6


def test_a_running_run_shows_undecided_stages_as_pending(engine, tmp_path):
    recipe = _start(tmp_path, [GOOD[0], GOOD[0], GOOD[1]])
    run_id, _ = _run(recipe, upto="apply_rules")
    funnel = run_funnels(engine, [run_id])[run_id]
    assert [(s["stage"], s["state"]) for s in funnel["stages"][:4]] == [
        ("ingest", "done"),
        ("rules", "done"),
        ("decontam", "pending"),
        ("dedup", "pending"),
    ]
    assert _stage(funnel, "dedup")["standing_out"] is None and funnel["kept"] is None
    pipeline.mark_failed(run_id)
    funnel = run_funnels(engine, [run_id])[run_id]
    assert _stage(funnel, "dedup")["state"] == "not run" and funnel["kept"] is None


def test_a_retried_stage_replaces_its_counts(engine, tmp_path):
    recipe = _start(tmp_path, [GOOD[0], GOOD[0], GOOD[1]])
    run_id, _ = _run(recipe, upto="deduplicate")
    pipeline.deduplicate(run_id)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("select count(*), sum(standing_out) from run_stage_counts where run_id = :r and stage = 'dedup'"),
            {"r": run_id},
        ).one()
    assert tuple(rows) == (1, 2)


def test_status_shows_a_run_without_a_release_as_the_run_saw_it(engine, tmp_path):
    """`infinstruct status` reads the same stored counts for a run that made no release (yet): the stages
    done, the drops they made, and no kept count until every stage is done."""
    from infinstruct.store.run_status import last_runs, render

    recipe = _start(tmp_path, [GOOD[0], GOOD[0], REFUSAL, "not json"])
    run_id, _ = _run(recipe, upto="apply_rules")
    [run] = last_runs(engine, recipe.stem, limit=1)
    funnel = run["funnel"]
    assert (funnel["lines"], funnel["quarantined"], funnel["kept"], funnel["dropped_by_stage"]) == (
        4,
        1,
        None,
        {"rules": 1},
    )
    assert funnel["pending"][:2] == ["decontam", "dedup"] and funnel["as_of"] == "run"
    assert (
        render([run])
        .splitlines()[1]
        .startswith("  4 lines: ? kept, 1 dropped (rules 1), 1 quarantined  [not done: decontam, dedup")
    )
