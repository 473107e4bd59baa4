"""The run report (the UI's funnel): counts come from the run's ledger, one per input line.

Specification:
* per source: lines = kept + dropped + quarantined, and records = kept + dropped;
* a line that several stages could drop is counted once, under the first stage's reason: decontamination
  does not decide a line the rules already dropped.
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa

from conftest import run_partition_steps, write_jsonl, write_recipe
from infinstruct.store.ledger import accounting
from infinstruct.store.run_report import run_funnel

LEAKED = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?"
)


def test_the_funnel_counts_each_line_once_under_its_first_reason(engine, tmp_path):
    bench = write_jsonl(tmp_path / "bench.jsonl", [{"id": "q1", "question": LEAKED}])
    write_jsonl(
        tmp_path / "a.jsonl",
        [
            {
                "instruction": LEAKED,
                "input": "",
                "output": "I'm sorry, but I can't help with that.",
            },  # refused and leaked
            {
                "instruction": LEAKED,
                "input": "",
                "output": "In May she sold 48 / 2 = 24 clips, so 48 + 24 = 72 in all.",
            },
            {"instruction": "Name three primary colours.", "input": "", "output": "Red, yellow and blue."},
            "{not json",
        ],
    )
    recipe = write_recipe(
        tmp_path,
        f"funnel-{uuid.uuid4().hex[:6]}",
        [{"name": "a", "path": "a.jsonl", "format": "alpaca"}],
        ingest={"max_quarantine_ratio": 1.0},
        decontamination={
            "benchmarks": [{"name": "bench", "path": str(bench), "fields": ["question"], "id_field": "id"}],
            "embedding": None,
        },
    )
    run_id = run_partition_steps(recipe)

    [funnel] = run_funnel(engine, run_id)
    assert funnel == {
        "source": "a",
        "lines": 4,
        "records": 3,
        "kept": 1,
        "dropped": 2,
        "quarantined": 1,
        "reasons": {"rule:refusal": 1, "contaminated:bench": 1, "quarantine:invalid_json": 1},
    }
    counts = accounting(engine, run_id)["a"]
    assert {k: funnel[k] for k in counts} == counts
    with engine.connect() as conn:
        decided = (
            conn.execute(
                sa.text(
                    "select d.stage from decisions d join run_partitions rp on rp.partition_id = d.partition_id"
                    " where rp.run_id = :r and d.line_no = 1"
                ),
                {"r": run_id},
            )
            .scalars()
            .all()
        )
    assert decided == ["rules"]
