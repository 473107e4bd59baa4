"""The ledger's lineage: a duplicate names the record it was found to duplicate (`duplicate_of`) and the
record that stands for it after deduplication (`representative`), even when a later stage dropped the
first one."""

from __future__ import annotations

import uuid

from conftest import publish, run_dedup_steps, run_record_id, write_jsonl, write_recipe

STORY = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle that was sent "
    "by her grandmother fifty years ago, and describe how it changes her life"
)
LONG_ANSWER = (
    "Mara kept the lamp at Gull Point for thirty years. One grey morning she found a green bottle wedged "
    "between the rocks, and inside it a letter in her grandmother's careful hand, written the summer "
    "before Mara was born. It told of a sister who had sailed away and never written home. Mara took "
    "the ferry to the mainland the following week, found the sister's grandchildren, and for the first "
    "time in decades the family gathered at one long table."
)


def alpaca(instruction: str, output: str = "A complete and helpful answer to the question.") -> dict:
    return {"instruction": instruction, "input": "", "output": output}


def test_a_copy_of_a_record_that_near_dedup_dropped_is_represented_by_the_record_kept_for_both(engine, tmp_path):
    import pyarrow.parquet as pq

    # b.jsonl 1 is an exact copy of a.jsonl 1 (dedup drops it, naming a.jsonl 1); near dedup then drops
    # a.jsonl 1 for a.jsonl 2, a near-copy with a longer answer: the copy's representative is a.jsonl 2
    write_jsonl(tmp_path / "a.jsonl", [alpaca(STORY + " forever"), alpaca(STORY, LONG_ANSWER)])
    write_jsonl(tmp_path / "b.jsonl", [alpaca(STORY + " forever")])
    recipe = write_recipe(
        tmp_path,
        f"lineage-{uuid.uuid4().hex[:6]}",
        [{"name": "a", "path": "a.jsonl", "format": "alpaca"}, {"name": "b", "path": "b.jsonl", "format": "alpaca"}],
    )
    run_id = run_dedup_steps(recipe)
    copied, kept = run_record_id(engine, run_id, "a.jsonl", 1), run_record_id(engine, run_id, "a.jsonl", 2)
    manifest = publish(run_id, tmp_path / "out")
    ledger = {
        (row["file"].rsplit("/", 1)[-1], row["line"]): row
        for row in pq.read_table(f"{manifest['path']}/ledger.parquet").to_pylist()
    }
    assert (ledger["b.jsonl", 1]["reason"], ledger["b.jsonl", 1]["duplicate_of"]) == ("exact_duplicate", copied)
    assert ledger["b.jsonl", 1]["representative"] == kept
    assert (ledger["a.jsonl", 1]["reason"], ledger["a.jsonl", 1]["duplicate_of"]) == ("near_duplicate", kept)
    assert ledger["a.jsonl", 1]["representative"] == kept
    assert ledger["a.jsonl", 2]["verdict"] == "kept" and ledger["a.jsonl", 2]["representative"] is None


def test_standing_is_one_definition_for_python_and_sql(engine, tmp_path):
    """`dropped` (SQLAlchemy) and `dropped_sql` / `standing_sql` (SQL text, as the stages' statements use it)
    select the same records before every stage."""
    import sqlalchemy as sa

    from infinstruct.stages import decided_before, ledger_order
    from infinstruct.store.db import records
    from infinstruct.store.ledger import dropped, in_run, standing_sql

    write_jsonl(
        tmp_path / "a.jsonl",
        [alpaca(STORY + " forever"), alpaca(STORY, LONG_ANSWER), alpaca("Hi", ""), alpaca(STORY + " forever")],
    )
    recipe = write_recipe(
        tmp_path, f"standing-{uuid.uuid4().hex[:6]}", [{"name": "a", "path": "a.jsonl", "format": "alpaca"}]
    )
    run_id = run_dedup_steps(recipe)
    with engine.connect() as conn:
        for stage in ledger_order()[1:]:
            earlier = decided_before(stage)
            by_python = (
                conn.execute(
                    sa.select(records.c.line_no)
                    .where(in_run(run_id, records.c.partition_id), ~dropped(records, earlier))
                    .order_by(records.c.line_no)
                )
                .scalars()
                .all()
            )
            by_sql = (
                conn.execute(
                    sa.text(
                        "select r.line_no from records r join run_partitions rp on rp.partition_id = r.partition_id"
                        f" and rp.run_id = :run where {standing_sql('r')} order by r.line_no"
                    ),
                    {"run": run_id, "earlier": earlier},
                )
                .scalars()
                .all()
            )
            assert by_python == by_sql, stage
        assert by_python == [2]  # before selection: the copy, the empty answer and the near-copy are gone
