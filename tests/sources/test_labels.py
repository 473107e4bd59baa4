"""Partition labels: what Airflow's grid names a mapped instance by (source and shard, not a hash)."""

from __future__ import annotations

from infinstruct.sources.labels import Shard, partition_labels


def test_a_source_with_one_file_is_labelled_by_source_and_shard():
    shards = [Shard(f"p{i}", "alpaca_eval_models", "/data/alpaca.jsonl", i) for i in range(7)]
    labels = partition_labels(shards)
    assert labels["p2"] == "alpaca_eval_models/3 of 7"
    assert len(set(labels.values())) == 7


def test_a_source_with_several_files_names_the_file_below_their_common_folder():
    shards = [
        Shard("a0", "chat", "/in/2026-12-01/a.jsonl", 0),
        Shard("a1", "chat", "/in/2026-12-01/a.jsonl", 1),
        Shard("b0", "chat", "/in/2026-12-02/a.jsonl", 0),
        Shard("q0", "qa", "/in/qa.json", 0),
    ]
    assert partition_labels(shards) == {
        "a0": "chat/2026-12-01/a.jsonl/1 of 2",
        "a1": "chat/2026-12-01/a.jsonl/2 of 2",
        "b0": "chat/2026-12-02/a.jsonl/1 of 1",
        "q0": "qa/1 of 1",
    }
