"""The stage contract's result: one shape for every stage, read back the same from what was stored."""

from __future__ import annotations

from infinstruct.contract import StageResult


def test_a_result_reads_back_as_it_was_written():
    result = StageResult(
        "dedup",
        10,
        {"exact_duplicate": 2, "duplicate_instruction": 1},
        full_pass=True,
        why="first pass",
        numbers={"decided_partitions": 3},
    )
    stored = result.as_dict()
    assert stored["dropped"] == 3 and stored["exact_duplicate"] == 2 and stored["decided_partitions"] == 3
    assert StageResult.from_dict(stored) == result


def test_a_result_stored_before_the_contract_keeps_its_counts_by_reason():
    """Completions written before StageResult held the reasons as top-level keys."""
    old = {"partition_id": "p1", "measured": 40, "dropped": 3, "rule:refusal": 2, "rule:echo": 1}
    result = StageResult.from_dict({"stage": "rules", **old}, skipped=True)
    assert result.by_reason == {"rule:refusal": 2, "rule:echo": 1} and result.dropped == 3
    assert result.numbers == {"measured": 40} and result.skipped and result.partition_id == "p1"
