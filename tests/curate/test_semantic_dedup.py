"""The semantic dedup stage, with the real MiniLM and a real PostgreSQL (both index kinds).

Specification:
* an instruction reworded beyond MinHash's reach is dropped as `semantic_duplicate` of the record the
  keep rule prefers (source priority first), with the cosine as score and the kept id beside it;
* templated prompts that differ in a number or a name stay, however close their embeddings are;
* a nightly run that adds a file compares its records with everything accepted before, and the
  accepted records win; the old decisions are not touched;
* `semantic_dedup: null` turns the stage off and leaves no decision of it behind.
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa

from conftest import run_partition_steps, run_record_id, write_jsonl, write_recipe
from infinstruct import pipeline

STORY = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle sent by her "
    "grandmother fifty years ago."
)
REWORDED = (
    "Write a brief story about a lighthouse keeper who discovers a bottle with a message her "
    "grandmother sent fifty years earlier."
)
INTEREST = "Calculate the compound interest on $5,000 at 4% per year for 10 years, compounded monthly."
INTEREST_SIBLING = "Calculate the compound interest on $7,000 at 3% per year for 6 years, compounded monthly."
OTHER = "Give me three tips for keeping houseplants alive during a dry and dark winter."


def alpaca(instruction: str, output: str = "A complete and helpful answer to the request.") -> dict:
    return {"instruction": instruction, "input": "", "output": output}


def run_all(recipe) -> tuple[str, dict]:
    run_id = run_partition_steps(recipe)
    pipeline.deduplicate(run_id)
    near = pipeline.near_deduplicate(run_id)
    assert near["near_duplicate"] == 0  # what follows is beyond MinHash
    return run_id, pipeline.semantic_deduplicate(run_id)


def drops(engine, run_id: str) -> dict[tuple[str, int], tuple]:
    """(file name, line) -> (stage, reason, duplicate_of, score) of the run's dropped lines."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "select p.path, d.line_no, d.stage, d.reason, d.duplicate_of, d.score, d.run_id from decisions d"
                " join partitions p using (partition_id) join run_partitions rp on rp.partition_id = d.partition_id"
                " where rp.run_id = :r"
            ),
            {"r": run_id},
        ).all()
    return {
        (path.rsplit("/", 1)[1], line): (stage, reason, dup, score, run)
        for path, line, stage, reason, dup, score, run in rows
    }


def test_a_reworded_instruction_is_dropped_for_the_preferred_source_and_siblings_stay(engine, tmp_path, index):
    write_jsonl(
        tmp_path / "minor.jsonl",
        [alpaca(STORY, "A much longer answer, so completeness alone would keep this one."), alpaca(INTEREST)],
    )
    write_jsonl(tmp_path / "major.jsonl", [alpaca(REWORDED), alpaca(INTEREST_SIBLING), alpaca(OTHER)])
    recipe = write_recipe(
        tmp_path,
        f"sem-{uuid.uuid4().hex[:6]}",
        [
            {"name": "major", "path": "major.jsonl", "format": "alpaca"},  # listed first: preferred
            {"name": "minor", "path": "minor.jsonl", "format": "alpaca"},
        ],
        semantic_dedup={"index": index},
    )
    run_id, result = run_all(recipe)

    assert result["index"] == index and result["full_pass"] and result["decided"] == 5
    [(where, (stage, reason, dup, score, _))] = drops(engine, run_id).items()
    assert where == ("minor.jsonl", 1)
    assert (stage, reason, dup) == (
        "semantic_dedup",
        "semantic_duplicate",
        run_record_id(engine, run_id, "major.jsonl", 1),
    )
    assert 0.9 <= score <= 1.0
    # the interest prompts embed close together, but their numbers make them different requests


def test_a_nightly_file_is_compared_with_the_accepted_records_which_win(engine, tmp_path, index):
    (tmp_path / "pool").mkdir()
    write_jsonl(tmp_path / "pool" / "a1.jsonl", [alpaca(STORY), alpaca(INTEREST)])
    write_jsonl(tmp_path / "pool" / "b1.jsonl", [alpaca(OTHER)])
    recipe = write_recipe(
        tmp_path,
        f"semn-{uuid.uuid4().hex[:6]}",
        [
            {"name": "fresh", "path": "pool/b*.jsonl", "format": "alpaca"},  # preferred, yet arrives later
            {"name": "pool", "path": "pool/a*.jsonl", "format": "alpaca"},
        ],
        semantic_dedup={"index": index},
    )
    first_run, first = run_all(recipe)
    assert first["semantic_duplicate"] == 0

    write_jsonl(
        tmp_path / "pool" / "b2.jsonl", [alpaca(REWORDED, "An even longer and more complete answer than before.")]
    )
    second_run, second = run_all(recipe)

    assert second["full_pass"] is False and second["decided"] == 1
    dropped = drops(engine, second_run)
    assert list(dropped) == [("b2.jsonl", 1)]
    assert dropped[("b2.jsonl", 1)][1:3] == ("semantic_duplicate", run_record_id(engine, second_run, "a1.jsonl", 1))


def test_turned_off_it_decides_nothing_and_leaves_nothing(engine, tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [alpaca(STORY), alpaca(REWORDED)])
    recipe = write_recipe(
        tmp_path, f"semoff-{uuid.uuid4().hex[:6]}", [{"name": "a", "path": "a.jsonl", "format": "alpaca"}]
    )
    run_id, result = run_all(recipe)
    assert result["semantic_duplicate"] == 1

    import yaml

    raw = yaml.safe_load(recipe.read_text())
    recipe.write_text(yaml.safe_dump({**raw, "semantic_dedup": None}))
    pipeline.start_run(run_id, recipe)  # the same run, restarted with the new recipe
    assert pipeline.semantic_deduplicate(run_id)["disabled"] is True
    assert drops(engine, run_id) == {}
