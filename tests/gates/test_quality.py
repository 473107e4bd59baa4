"""Integration: Great Expectations gates on a real PostgreSQL; failures fail and are stored."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from conftest import (
    kept_record_ids,
    publish,
    run_partition_steps,
    run_partitions,
    run_record_id,
    write_jsonl,
    write_recipe,
)
from infinstruct import pipeline
from infinstruct.gates.checks import GateFailed
from infinstruct.release.parts import ReleasePartError

ROWS = [{"instruction": f"Explain idea {i}.", "input": "", "output": f"Idea {i} explained."} for i in range(6)]


@pytest.fixture
def ingested(tmp_path):
    rows = ROWS + [ROWS[0] | {"output": "Another answer to the same instruction."}]
    write_jsonl(tmp_path / "a.jsonl", rows)
    recipe = write_recipe(
        tmp_path, f"gate-{uuid.uuid4().hex[:6]}", [{"name": "a", "path": "a.jsonl", "format": "alpaca"}]
    )
    run_id = f"gate-{uuid.uuid4().hex[:8]}"
    pipeline.start_run(run_id, recipe)
    (part,) = pipeline.plan(run_id)
    pipeline.ingest_partition(run_id, part)
    return run_id, part


def stored_gates(engine, run_id):
    with engine.connect() as conn:
        return conn.execute(
            sa.text("select gate, scope, success, failures from gate_results where run_id = :r order by id"),
            {"r": run_id},
        ).all()


def test_ingest_gate_passes_and_is_stored(engine, ingested):
    run_id, part = ingested
    assert pipeline.check_ingested(run_id)["success"] is True
    [(gate, scope, success, failures)] = stored_gates(engine, run_id)
    assert (gate, scope, success, failures) == ("ingested", "partitions ingested by the run", True, [])


def test_ingest_gate_fails_on_broken_role_alternation(engine, ingested):
    run_id, part = ingested
    with engine.begin() as conn:  # simulate a bug upstream that let a user/user conversation through
        conn.execute(
            sa.text("update records set role_pattern = 'uu' where partition_id = :p and line_no = 2"), {"p": part}
        )
    with pytest.raises(GateFailed, match="expect_column_values_to_match_regex"):
        pipeline.check_ingested(run_id)
    [(_, _, success, failures)] = stored_gates(engine, run_id)
    assert success is False
    assert (
        failures[0]["column"] == "role_pattern"
        and failures[0]["unexpected_count"] == 1
        and failures[0]["sample"] == ["uu"]
    )


def test_release_gate_rejects_duplicate_instructions_until_deduplicated(engine, ingested, tmp_path):
    run_id, part = ingested
    pipeline.write_release_part(run_id, part, tmp_path)
    with pytest.raises(GateFailed, match="instruction_key"):
        pipeline.check_release(run_id)
    pipeline.deduplicate(run_id)
    with pytest.raises(ReleasePartError, match="write_release_part"):  # the part predates dedup's decisions
        pipeline.check_release(run_id)
    pipeline.write_release_part(run_id, part, tmp_path)
    assert pipeline.check_release(run_id)["success"] is True
    assert [success for *_, success, _ in stored_gates(engine, run_id)] == [False, True]


def test_release_gate_checks_a_new_partition_against_the_whole_release(engine, tmp_path):
    """A nightly release validates only the new partition's records, but each one against every released
    record: a copy of an already released instruction that slipped past dedup fails the gate."""
    write_jsonl(tmp_path / "a.jsonl", ROWS)
    recipe = write_recipe(
        tmp_path, f"gate-{uuid.uuid4().hex[:6]}", [{"name": "a", "path": "*.jsonl", "format": "alpaca"}]
    )
    first = run_partition_steps(recipe)
    pipeline.deduplicate(first)
    publish(first, tmp_path / "out")

    write_jsonl(
        tmp_path / "b.jsonl",
        [ROWS[2] | {"output": "A second answer."}, {"instruction": "A new task.", "input": "", "output": "Done."}],
    )
    nightly = run_partition_steps(recipe)  # no deduplicate: the copy of ROWS[2]'s instruction stays
    for part in pipeline.plan(nightly):
        pipeline.write_release_part(nightly, part, tmp_path / "out")
    with pytest.raises(GateFailed, match="instruction_key_copies"):
        pipeline.check_release(nightly)
    [*_, (gate, scope, success, failures)] = stored_gates(engine, nightly)
    assert (gate, scope, success) == ("release", "release: 1 new or changed of 2 parts", False)
    assert [f["unexpected_count"] for f in failures] == [1]

    pipeline.deduplicate(nightly)
    publish(nightly, tmp_path / "out")
    [*_, (_, scope, success, _)] = stored_gates(engine, nightly)
    assert (scope, success) == ("release: 1 new or changed of 2 parts", True)


NEAR = [
    {
        "instruction": "Write a short story about a lighthouse keeper who finds a message in a bottle on the shore.",
        "input": "",
        "output": "The keeper read it twice.",
    },
    {
        "instruction": "Write a short story about a lighthouse keeper who finds a message in a bottle on the shore today.",
        "input": "",
        "output": "He kept the bottle.",
    },
]


def test_release_gate_bounds_the_near_duplicates_left_in_the_release(engine, tmp_path):
    """The gate re-derives near-duplicate pairs over the release from the stored LSH band keys: a pair that
    near_deduplicate never saw fails it; after the stage dropped one of the two, the release passes."""
    write_jsonl(tmp_path / "a.jsonl", ROWS + NEAR)
    recipe = write_recipe(
        tmp_path,
        f"gate-{uuid.uuid4().hex[:6]}",
        [{"name": "a", "path": "a.jsonl", "format": "alpaca"}],
        semantic_dedup=None,
    )
    run_id = run_partition_steps(recipe)
    (part,) = pipeline.plan(run_id)
    pipeline.minhash(run_id, part)
    pipeline.deduplicate(run_id)
    pipeline.write_release_part(run_id, part, tmp_path / "out")
    with pytest.raises(GateFailed, match="near_duplicate_share"):
        pipeline.check_release(run_id)
    [*_, (_, _, _, failures)] = stored_gates(engine, run_id)
    with engine.connect() as conn:
        audit = conn.execute(
            sa.text("select statistics->'near_duplicates' from gate_results where run_id = :r"), {"r": run_id}
        ).scalar()
    assert (audit["audited"], audit["with_near_duplicate"]) == (8, 2) and len(audit["examples"]) == 2

    pipeline.near_deduplicate(run_id)
    publish(run_id, tmp_path / "out")
    with engine.connect() as conn:
        audit = conn.execute(
            sa.text("select statistics->'near_duplicates' from gate_results where run_id = :r and success"),
            {"r": run_id},
        ).scalar()
    assert (audit["audited"], audit["with_near_duplicate"]) == (7, 0)


def test_release_gate_finds_a_new_records_near_duplicate_among_the_old_parts(engine, tmp_path):
    """On a nightly release only the new part is audited, but against every released record of the old
    parts: its near-copy of a released record is flagged with that record's id, and a record a stage
    dropped from the release does not count."""
    refused = {
        "instruction": "Describe the daily routine of a baker who opens a small bakery in a mountain village.",
        "input": "",
        "output": "As an AI language model, I cannot describe that.",
    }
    write_jsonl(tmp_path / "a.jsonl", ROWS + NEAR + [refused])
    recipe = write_recipe(
        tmp_path,
        f"gate-{uuid.uuid4().hex[:6]}",
        [{"name": "a", "path": "*.jsonl", "format": "alpaca"}],
        semantic_dedup=None,
    )
    first = run_partition_steps(recipe)  # the rules drop `refused`
    pipeline.deduplicate(first)
    pipeline.near_deduplicate(first)  # drops NEAR[1], keeps NEAR[0]
    publish(first, tmp_path / "out")
    kept = run_record_id(engine, first, "a.jsonl", len(ROWS) + 1)

    write_jsonl(
        tmp_path / "b.jsonl",
        [
            NEAR[1] | {"instruction": NEAR[1]["instruction"].replace("today", "tonight")},
            refused | {"instruction": refused["instruction"] + " Today.", "output": "She rises at four."},
        ],
    )
    nightly = run_partition_steps(recipe)
    for part in run_partitions(nightly):
        pipeline.minhash(nightly, part)
    pipeline.deduplicate(nightly)  # no near_deduplicate: the near-copy stays
    for part in run_partitions(nightly):
        pipeline.write_release_part(nightly, part, tmp_path / "out")
    with pytest.raises(GateFailed, match="near_duplicate_share"):
        pipeline.check_release(nightly)
    with engine.connect() as conn:
        audit = conn.execute(
            sa.text("select statistics->'near_duplicates' from gate_results where run_id = :r"), {"r": nightly}
        ).scalar()
    new = run_record_id(engine, nightly, "b.jsonl", 1)
    assert (audit["audited"], audit["with_near_duplicate"], audit["examples"]) == (2, 1, [[new, kept]])


def test_gate_snapshot_table_is_replaced_and_dropped(engine, ingested):
    """A gate validates a snapshot table of its query's rows: a leftover of a crashed try is replaced, and the
    table is gone after the gate, passed or failed."""
    from infinstruct.gates.checks import snapshot_table

    run_id, part = ingested
    table = snapshot_table("ingested", run_id)
    assert table.startswith("gate_rows_ingested_") and table.replace("_", "").isalnum()
    gone = sa.text("select to_regclass(:t) is null")
    with engine.begin() as conn:
        conn.execute(sa.text(f"create unlogged table {table} (junk int)"))
    assert pipeline.check_ingested(run_id)["success"] is True
    with engine.begin() as conn:
        assert conn.execute(gone, {"t": table}).scalar()
        conn.execute(
            sa.text("update records set role_pattern = 'uu' where partition_id = :p and line_no = 2"), {"p": part}
        )
    with pytest.raises(GateFailed):
        pipeline.check_ingested(run_id)
    with engine.connect() as conn:
        assert conn.execute(gone, {"t": table}).scalar()


def test_release_gate_fails_a_release_with_no_record(engine, tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"instruction": "", "input": "", "output": ""}, "not json"])  # nothing survives
    recipe = write_recipe(
        tmp_path,
        f"empty-{uuid.uuid4().hex[:6]}",
        [{"name": "a", "path": "a.jsonl", "format": "alpaca"}],
        ingest={"max_quarantine_ratio": 1.0},
    )
    run_id = run_partition_steps(recipe)
    for part in run_partitions(run_id):
        pipeline.write_release_part(run_id, part, tmp_path / "out")
    with pytest.raises(GateFailed, match="release_records"):
        pipeline.check_release(run_id)
    assert not (tmp_path / "out" / "LATEST").exists()


ITEM = (
    "A farmer has 48 sheep and sells a quarter of them at the spring market, then buys 9 lambs from his "
    "neighbour and loses 3 during a storm in the summer. How many sheep does the farmer have at the end of the year?"
)
# every sixth word changed: the decontamination stage's 13-grams find nothing, the audit's 6-grams do
EDITED = (
    "A farmer owns 48 sheep and sells a quarter of them at the autumn market, then buys 9 lambs off his "
    "neighbour and loses 3 in a storm during the summer. How many sheep will the farmer have by the end of the year?"
)


def test_release_gate_reports_what_an_independent_looser_contamination_check_still_finds(engine, tmp_path):
    """The stage's own table cannot show its misses: the gate re-matches a sample of the released records
    against the benchmark files with looser settings and reports the share it flags, with examples; a
    recipe can bound it."""
    write_jsonl(tmp_path / "bench.jsonl", [{"question": ITEM}])
    write_jsonl(
        tmp_path / "a.jsonl", ROWS + [{"instruction": EDITED, "input": "", "output": "The farmer has 42 sheep."}]
    )
    decontamination = {
        "benchmarks": [{"name": "farm", "path": str(tmp_path / "bench.jsonl"), "fields": ["question"]}],
        "embedding": None,
    }
    for bound, passes in ((None, True), (0.0, False)):
        gates = {} if bound is None else {"max_contamination_suspect_share": bound}
        recipe = write_recipe(
            tmp_path,
            f"gate-{uuid.uuid4().hex[:6]}",
            [{"name": "a", "path": "a.jsonl", "format": "alpaca"}],
            decontamination=decontamination,
            gates=gates,
            semantic_dedup=None,
        )
        run_id = run_partition_steps(recipe)  # the stage keeps the edited item: no 13-gram survives the edits
        assert run_record_id(engine, run_id, "a.jsonl", len(ROWS) + 1) in kept_record_ids(engine, run_id)
        pipeline.deduplicate(run_id)
        pipeline.near_deduplicate(run_id)
        (part,) = run_partitions(run_id)
        pipeline.write_release_part(run_id, part, tmp_path / "out")
        if passes:
            pipeline.check_release(run_id)
        else:
            with pytest.raises(GateFailed, match="contamination_suspect_share"):
                pipeline.check_release(run_id)
        with engine.connect() as conn:
            audit = conn.execute(
                sa.text(
                    "select statistics->'contamination_suspects' from gate_results"
                    " where run_id = :r and gate = 'release'"
                ),
                {"r": run_id},
            ).scalar()
        assert (audit["sampled"], audit["suspects"]) == (7, 1)
        [example] = audit["examples"]
        assert (
            example["record_id"] == run_record_id(engine, run_id, "a.jsonl", len(ROWS) + 1)
            and example["item"] == "farm:1"
        )
