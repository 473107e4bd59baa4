"""Integration: Great Expectations gates on a real PostgreSQL; failures fail and are stored."""
from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from conftest import write_jsonl, write_recipe
from infinstruct import pipeline
from infinstruct.quality import GateFailed

ROWS = [{"instruction": f"Explain idea {i}.", "input": "", "output": f"Idea {i} explained."} for i in range(6)]


@pytest.fixture
def ingested(tmp_path):
    rows = ROWS + [ROWS[0] | {"output": "Another answer to the same instruction."}]
    write_jsonl(tmp_path / "a.jsonl", rows)
    recipe = write_recipe(tmp_path, f"gate-{uuid.uuid4().hex[:6]}", [{"name": "a", "path": "a.jsonl", "format": "alpaca"}])
    run_id = f"gate-{uuid.uuid4().hex[:8]}"
    pipeline.start_run(run_id, recipe)
    (part,) = pipeline.plan(run_id)
    pipeline.ingest_partition(run_id, part)
    return run_id, part


def stored_gates(engine, run_id):
    with engine.connect() as conn:
        return conn.execute(sa.text("select gate, scope, success, failures from gate_results where run_id = :r order by id"),
                            {"r": run_id}).all()


def test_ingest_gate_passes_and_is_stored(engine, ingested):
    run_id, part = ingested
    assert pipeline.check_ingested(run_id)["success"] is True
    [(gate, scope, success, failures)] = stored_gates(engine, run_id)
    assert (gate, scope, success, failures) == ("ingested", "partitions ingested by the run", True, [])


def test_ingest_gate_fails_on_broken_role_alternation(engine, ingested):
    run_id, part = ingested
    with engine.begin() as conn:  # simulate a bug upstream that let a user/user conversation through
        conn.execute(sa.text("update records set role_pattern = 'uu' where partition_id = :p and line_no = 2"), {"p": part})
    with pytest.raises(GateFailed, match="expect_column_values_to_match_regex"):
        pipeline.check_ingested(run_id)
    [(_, _, success, failures)] = stored_gates(engine, run_id)
    assert success is False
    assert failures[0]["column"] == "role_pattern" and failures[0]["unexpected_count"] == 1 and failures[0]["sample"] == ["uu"]


def test_release_gate_rejects_duplicate_instructions_until_deduplicated(engine, ingested):
    run_id, _ = ingested
    with pytest.raises(GateFailed, match="instruction_key"):
        pipeline.check_release(run_id)
    pipeline.deduplicate(run_id)
    assert pipeline.check_release(run_id)["success"] is True
    assert [success for *_, success, _ in stored_gates(engine, run_id)] == [False, True]
