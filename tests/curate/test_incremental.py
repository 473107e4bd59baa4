"""Incremental nightly runs: whole-dataset stages decide only what a run added, against what stands.

Specification:
* a run that only adds files decides only the new files' records (exact, same-instruction and near
  duplicates), against every record still standing; a record accepted before always wins over a new
  copy, whatever the source priorities say, and the old files' decisions are left untouched;
* a run that changes or removes a file, or changes a stage's settings, re-decides the whole dataset;
* a record an earlier pass dropped is no one's original in a later one;
* an incremental near-dedup pass holds only the new records and the standing ones sharing a band key
  with one of them, not every standing record (its cost follows what the run added);
* re-running a stage (a retry) decides nothing twice.
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa

from conftest import run_partition_steps, run_record_id, write_jsonl, write_recipe
from infinstruct import pipeline

LONG = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle that was sent "
    "by her grandmother fifty years ago, and describe how it changes her life"
)
NEAR = LONG + " forever"  # one appended word: a near-duplicate instruction
OTHERS = [
    "Explain how a refrigerator keeps food cold using the compression and expansion of a gas",
    "Give me three tips for keeping houseplants alive during a dry and dark winter",
    "What were the main causes of the fall of the Western Roman Empire in the fifth century",
    "Translate the sentence 'the weather is lovely today' into French and Spanish",
    "Write a Python function that returns the n-th Fibonacci number using iteration",
]


def alpaca(instruction: str, output: str = "A complete and helpful answer to the question.") -> dict:
    return {"instruction": instruction, "input": "", "output": output}


def nightly(recipe) -> tuple[str, dict]:
    """One run of every step but the gates and the export, as the DAG orders them."""
    run_id = run_partition_steps(recipe)
    return run_id, {"dedup": pipeline.deduplicate(run_id), "near_dedup": pipeline.near_deduplicate(run_id)}


def decisions(engine, run_id: str) -> list[tuple]:
    """(file, line, stage, reason, duplicate_of, deciding run, decided at) of the run's partitions."""
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "select p.path, d.line_no, d.stage, d.reason, d.duplicate_of, d.run_id, d.decided_at from decisions d"
                " join partitions p using (partition_id) join run_partitions rp on rp.partition_id = d.partition_id"
                " where rp.run_id = :r order by p.path, d.line_no, d.stage"
            ),
            {"r": run_id},
        ).all()


def make_pool(tmp_path, name: str):
    (tmp_path / "pool").mkdir()
    write_jsonl(tmp_path / "pool" / "a.jsonl", [alpaca(LONG)] + [alpaca(t) for t in OTHERS])
    write_jsonl(
        tmp_path / "pool" / "b0.jsonl", [alpaca("List three rivers of South America and the countries they cross")]
    )
    # the new file's source is listed FIRST (preferred), yet must not displace accepted records
    return write_recipe(
        tmp_path,
        f"{name}-{uuid.uuid4().hex[:6]}",
        [
            {"name": "fresh", "path": "pool/b*.jsonl", "format": "alpaca"},
            {"name": "pool", "path": "pool/a*.jsonl", "format": "alpaca"},
        ],
    )


def test_an_added_file_is_decided_against_the_accepted_records_and_nothing_else_moves(engine, tmp_path):
    recipe = make_pool(tmp_path, "incr")
    first_run, first = nightly(recipe)
    assert first["dedup"]["full_pass"] and first["near_dedup"]["full_pass"]
    before = decisions(engine, first_run)
    assert before == []  # five distinct prompts and the story: all kept

    write_jsonl(
        tmp_path / "pool" / "b1.jsonl",
        [
            alpaca(LONG),  # 1: exact copy of an accepted record
            alpaca(
                OTHERS[0], "Another, much longer and more complete answer than the accepted one has."
            ),  # 2: same instruction
            alpaca(NEAR),  # 3: near-duplicate of the accepted story
            alpaca("Describe the water cycle for a ten year old child in simple words and short sentences"),  # 4: new
            alpaca(
                "Describe the water cycle for a ten year old child in simple words and short sentences"
            ),  # 5: its copy
        ],
    )
    second_run, second = nightly(recipe)

    assert second["dedup"]["full_pass"] is False and second["dedup"]["decided_partitions"] == 1
    assert second["near_dedup"]["full_pass"] is False and second["near_dedup"]["decided"] == 2  # lines 3 and 4 stand
    story, fridge = run_record_id(engine, second_run, "a.jsonl", 1), run_record_id(engine, second_run, "a.jsonl", 2)
    new = [
        (path.rsplit("/", 1)[1], line, stage, reason, dup)
        for path, line, stage, reason, dup, _, _ in decisions(engine, second_run)
    ]
    assert new == [
        ("b1.jsonl", 1, "dedup", "exact_duplicate", story),
        ("b1.jsonl", 2, "dedup", "duplicate_instruction", fridge),
        ("b1.jsonl", 3, "near_dedup", "near_duplicate", story),
        ("b1.jsonl", 5, "dedup", "exact_duplicate", run_record_id(engine, second_run, "b1.jsonl", 4)),
    ]


def test_records_dropped_in_an_earlier_pass_are_no_ones_original(engine, tmp_path):
    recipe = make_pool(tmp_path, "dropped")
    # the fresh source is preferred in a full pass: its copies win over a.jsonl's story and fridge answer
    write_jsonl(
        tmp_path / "pool" / "b1.jsonl",
        [alpaca(NEAR), alpaca(OTHERS[0], "Another, much longer and more complete answer than the first one has.")],
    )
    first_run, _ = nightly(recipe)
    assert [
        (line, reason) for path, line, _, reason, *_ in decisions(engine, first_run) if path.endswith("a.jsonl")
    ] == [(1, "near_duplicate"), (2, "duplicate_instruction")]

    write_jsonl(tmp_path / "pool" / "b2.jsonl", [alpaca(NEAR + " and ever"), alpaca(OTHERS[0], "A third answer.")])
    second_run, second = nightly(recipe)

    new = [
        (line, reason, dup)
        for path, line, _, reason, dup, *_ in decisions(engine, second_run)
        if path.endswith("b2.jsonl")
    ]
    assert new == [
        (1, "near_duplicate", run_record_id(engine, second_run, "b1.jsonl", 1)),
        (2, "duplicate_instruction", run_record_id(engine, second_run, "b1.jsonl", 2)),
    ]
    assert second["near_dedup"]["standing"] == 2  # the new copy and b1's kept one; not the dropped story


def test_an_incremental_near_dedup_pass_reads_only_the_records_sharing_a_band_key(engine, tmp_path):
    recipe = make_pool(tmp_path, "sharing")
    first_run, first = nightly(recipe)
    assert first["near_dedup"]["standing"] == 7  # a full pass holds every standing record

    write_jsonl(
        tmp_path / "pool" / "b1.jsonl",
        [alpaca(NEAR), alpaca("Describe the water cycle for a ten year old child in simple words and short sentences")],
    )
    second_run, second = nightly(recipe)

    result = second["near_dedup"]
    assert (result["full_pass"], result["decided"], result["near_duplicate"]) == (False, 2, 1)
    assert result["standing"] == 3  # the two new records and the story; the other five old ones are not read


def test_a_retried_stage_decides_nothing_twice(engine, tmp_path):
    recipe = make_pool(tmp_path, "retry")
    write_jsonl(tmp_path / "pool" / "b1.jsonl", [alpaca(LONG), alpaca(NEAR)])
    run_id, first = nightly(recipe)
    assert (first["dedup"]["exact_duplicate"], first["near_dedup"]["near_duplicate"]) == (1, 1)
    before = decisions(engine, run_id)

    assert pipeline.deduplicate(run_id)["decided_partitions"] == 0
    assert pipeline.near_deduplicate(run_id)["decided"] == 0
    assert decisions(engine, run_id) == before


def test_a_changed_file_re_decides_the_whole_dataset(engine, tmp_path):
    recipe = make_pool(tmp_path, "changed")
    write_jsonl(tmp_path / "pool" / "b1.jsonl", [alpaca(NEAR)])
    nightly(recipe)
    # the accepted story goes away: its near-duplicate in b.jsonl must come back, not stay dropped
    write_jsonl(tmp_path / "pool" / "a.jsonl", [alpaca(t) for t in OTHERS])
    run_id, result = nightly(recipe)

    assert result["dedup"]["full_pass"] and "changed" in result["dedup"]["why"]
    assert result["near_dedup"]["full_pass"]
    assert decisions(engine, run_id) == []


def test_a_removed_file_re_decides_the_whole_dataset(engine, tmp_path):
    recipe = make_pool(tmp_path, "removed")
    write_jsonl(tmp_path / "pool" / "b1.jsonl", [alpaca(NEAR)])
    _, first = nightly(recipe)
    assert first["near_dedup"]["near_duplicate"] == 1
    (tmp_path / "pool" / "a.jsonl").unlink()
    write_jsonl(
        tmp_path / "pool" / "a2.jsonl", [alpaca("A brand new prompt about gardening in small urban balconies today")]
    )
    run_id, result = nightly(recipe)

    assert result["dedup"]["full_pass"] and "left the dataset" in result["dedup"]["why"]
    assert decisions(engine, run_id) == []  # b.jsonl's record lost its original: it is kept now


def test_new_settings_re_decide_the_whole_dataset(engine, tmp_path):
    import yaml

    recipe = make_pool(tmp_path, "settings")
    nightly(recipe)
    raw = yaml.safe_load(recipe.read_text())
    raw["near_dedup"] = {"threshold": 0.7}
    recipe.write_text(yaml.safe_dump(raw))
    _, result = nightly(recipe)

    assert result["dedup"]["full_pass"] is False  # its settings did not change
    assert result["near_dedup"]["full_pass"] is True
