"""Integration: the pipeline steps against a real PostgreSQL, without Airflow.

Each test builds its own small dataset (a unique recipe name), runs the steps the DAG would run, and
checks what is in the store.
"""

from __future__ import annotations

import os
import time
import uuid

import pytest
import sqlalchemy as sa

from conftest import write_jsonl, write_recipe
from infinstruct import pipeline
from infinstruct.sources import plan
from infinstruct.sources.ingest import IngestError
from infinstruct.store.ledger import accounting

GOOD = [{"instruction": f"Question number {i}?", "input": "", "output": f"Answer {i}."} for i in range(10)]


def start(recipe_path) -> str:
    run_id = f"test-{uuid.uuid4().hex[:8]}"
    pipeline.start_run(run_id, recipe_path)
    return run_id


def ingest_all(run_id: str) -> list[dict]:
    return [pipeline.ingest_partition(run_id, p) for p in pipeline.plan(run_id)]


def count(engine, sql: str, **params) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar_one()


def test_ingest_accounts_for_every_line(engine, tmp_path):
    lines = GOOD[:5] + ["{not json", "", {"instruction": "no answer"}, ["a list"]] + GOOD[5:]
    write_jsonl(tmp_path / "a.jsonl", lines)
    recipe = write_recipe(
        tmp_path,
        f"acct-{uuid.uuid4().hex[:6]}",
        [{"name": "a", "path": "a.jsonl", "format": "alpaca"}],
        ingest={"shard_lines": 4, "max_quarantine_ratio": 1.0},
    )
    run_id = start(recipe)
    results = ingest_all(run_id)

    assert len(results) == 4  # 14 lines in shards of 4
    assert sum(r["lines"] for r in results) == 14
    assert sum(r["records"] for r in results) == 10
    assert sum(r["quarantined"] for r in results) == 4
    pipeline.deduplicate(run_id)
    assert accounting(engine, run_id) == {"a": {"lines": 14, "kept": 10, "dropped": 0, "quarantined": 4}}
    with engine.connect() as conn:
        reasons = dict(
            conn.execute(
                sa.text(
                    "select line_no, reason from quarantine q join run_partitions rp using (partition_id) where rp.run_id = :r"
                ),
                {"r": run_id},
            ).all()
        )
    assert reasons == {
        6: "quarantine:invalid_json",
        7: "quarantine:blank_line",
        8: "quarantine:missing_field",
        9: "quarantine:not_an_object",
    }


def test_rerun_skips_unchanged_partitions_and_duplicates_nothing(engine, tmp_path):
    write_jsonl(tmp_path / "a.jsonl", GOOD)
    recipe = write_recipe(
        tmp_path,
        f"rerun-{uuid.uuid4().hex[:6]}",
        [{"name": "a", "path": "a.jsonl", "format": "alpaca"}],
        ingest={"shard_lines": 3},
    )
    first = start(recipe)
    assert all(not r["skipped"] for r in ingest_all(first))
    second = start(recipe)
    again = ingest_all(second)
    assert all(r["skipped"] for r in again)
    parts = pipeline.plan(second)
    assert count(engine, "select count(*) from records where partition_id = any(:p)", p=parts) == 10

    # a retry that forces the work again replaces the partition's rows instead of adding to them
    from infinstruct.sources.ingest import ingest_partition
    from infinstruct.store.db import get_engine

    ingest_partition(get_engine(), pipeline.run_recipe(second), second, parts[0], force=True)
    assert count(engine, "select count(*) from records where partition_id = any(:p)", p=parts) == 10


def test_changed_file_is_reingested_and_new_tail_added(engine, tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", GOOD[:6])
    recipe = write_recipe(
        tmp_path,
        f"grow-{uuid.uuid4().hex[:6]}",
        [{"name": "a", "path": "a.jsonl", "format": "alpaca"}],
        ingest={"shard_lines": 4},
    )
    ingest_all(start(recipe))
    write_jsonl(path, GOOD)  # 4 lines appended: shard 0 unchanged, shard 1 grows, shard 2 is new
    run_id = start(recipe)
    results = ingest_all(run_id)
    assert [r["skipped"] for r in results] == [True, False, False]
    pipeline.deduplicate(run_id)
    assert accounting(engine, run_id)["a"] == {"lines": 10, "kept": 10, "dropped": 0, "quarantined": 0}


def test_a_file_repaired_after_planning_fails_its_retry_until_re_planned_and_then_loses_no_line(engine, tmp_path):
    # the operator's story (issue 13): a shard fails, mostly malformed; the file is fixed; only the failed ingest
    # is cleared. Its planned byte range no longer holds the file's lines: it must fail, not ingest half of them
    broken = [GOOD[0], GOOD[1], "{oops", "{oops", "{oops", "{oops"]
    path = write_jsonl(tmp_path / "a.jsonl", broken)
    recipe = write_recipe(
        tmp_path, f"fix-{uuid.uuid4().hex[:6]}", [{"name": "a", "path": "a.jsonl", "format": "alpaca"}]
    )
    run_id = start(recipe)
    (part,) = pipeline.plan(run_id)
    with pytest.raises(IngestError, match="4 of 6 lines quarantined"):
        pipeline.ingest_partition(run_id, part)
    write_jsonl(path, GOOD[:6])  # repaired: longer, every line good
    with pytest.raises(IngestError, match="changed since it was planned"):
        pipeline.ingest_partition(run_id, part)  # the cleared task alone
    (part,) = pipeline.plan(run_id)  # re-planned (clear plan_partitions with its downstream)
    pipeline.ingest_partition(run_id, part)
    pipeline.deduplicate(run_id)
    assert accounting(engine, run_id)["a"] == {"lines": 6, "kept": 6, "dropped": 0, "quarantined": 0}


def test_a_shard_rewritten_in_place_with_the_same_size_and_times_is_not_ingested_as_planned(engine, tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", GOOD[:3])
    recipe = write_recipe(
        tmp_path, f"same-{uuid.uuid4().hex[:6]}", [{"name": "a", "path": "a.jsonl", "format": "alpaca"}]
    )
    run_id = start(recipe)
    (part,) = pipeline.plan(run_id)
    stat = os.stat(path)
    path.write_bytes(path.read_bytes().replace(b"Answer 1.", b"Answer 9."))  # the same length
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with engine.begin() as conn:  # as if stat could not tell (ctime cannot be set back): only the bytes differ
        conn.execute(
            sa.text("update source_files set ctime_ns = :c where path = :p"),
            {"c": os.stat(path).st_ctime_ns, "p": str(path)},
        )
    with pytest.raises(IngestError, match="not the ones planned"):
        pipeline.ingest_partition(run_id, part)
    with engine.connect() as conn:
        assert conn.execute(sa.text("select count(*) from records where partition_id = :p"), {"p": part}).scalar() == 0


def age(path, seconds: float = 60) -> None:
    """Set the file's mtime in the past, as a file written before yesterday's run has it."""
    past = time.time() - seconds
    os.utime(path, (past, past))


def test_a_plan_reads_only_files_changed_since_their_last_scan(engine, tmp_path, monkeypatch):
    old, new = write_jsonl(tmp_path / "a.jsonl", GOOD[:6]), write_jsonl(tmp_path / "b.jsonl", GOOD[6:])
    age(old)
    recipe = write_recipe(
        tmp_path,
        f"stat-{uuid.uuid4().hex[:6]}",
        [{"name": "a", "path": "*.jsonl", "format": "alpaca"}],
        ingest={"shard_lines": 4},
    )
    ingest_all(start(recipe))
    read = []
    monkeypatch.setattr(plan, "scan_file", lambda *args, real=plan.scan_file: read.append(args[1]) or real(*args))

    assert len(pipeline.plan(start(recipe))) == 3
    assert read == [str(new)], "b.jsonl was written just now (racy): read again; a.jsonl is not"

    # same size, mtime put back: the ctime still tells; the new checksum re-ingests the shard
    stamp = os.stat(old).st_mtime_ns
    old.write_text(old.read_text().replace("Answer 0.", "Answer 9."))
    os.utime(old, ns=(stamp, stamp))
    read.clear()
    run_id = start(recipe)
    results = ingest_all(run_id)
    assert str(old) in read
    assert [r["skipped"] for r in results] == [False, True, True], "a.jsonl's first shard changed, nothing else"


def test_a_new_shard_size_reads_every_file_again(engine, tmp_path, monkeypatch):
    age(write_jsonl(tmp_path / "a.jsonl", GOOD))
    name = f"shard-{uuid.uuid4().hex[:6]}"
    sources = [{"name": "a", "path": "a.jsonl", "format": "alpaca"}]
    assert len(pipeline.plan(start(write_recipe(tmp_path, name, sources, ingest={"shard_lines": 4})))) == 3
    assert len(pipeline.plan(start(write_recipe(tmp_path, name, sources, ingest={"shard_lines": 5})))) == 2


def test_exact_and_instruction_duplicates_keep_one_by_priority(engine, tmp_path):
    same_q = {"instruction": "Name a prime number.", "input": "", "output": "7"}
    longer = {"instruction": "name a  PRIME number.", "input": "", "output": "2 is the smallest prime number."}
    write_jsonl(tmp_path / "first.jsonl", [same_q, same_q, GOOD[0]])
    write_jsonl(tmp_path / "second.jsonl", [longer, GOOD[0], GOOD[1]])
    recipe = write_recipe(
        tmp_path,
        f"dedup-{uuid.uuid4().hex[:6]}",
        [
            {"name": "first", "path": "first.jsonl", "format": "alpaca"},
            {"name": "second", "path": "second.jsonl", "format": "alpaca"},
        ],
    )
    run_id = start(recipe)
    ingest_all(run_id)
    counts = pipeline.deduplicate(run_id)
    assert (counts["exact_duplicate"], counts["duplicate_instruction"]) == (2, 1)

    with engine.connect() as conn:
        drops = {
            (source, line): (reason, dup)
            for source, line, reason, dup in conn.execute(
                sa.text(
                    "select r.source, r.line_no, d.reason, d.duplicate_of from decisions d join records r using (partition_id, line_no)"
                    " join run_partitions rp using (partition_id) where rp.run_id = :r"
                ),
                {"r": run_id},
            )
        }
        kept_same_q = conn.execute(
            sa.text(
                "select record_id from records r join run_partitions rp using (partition_id)"
                " where rp.run_id = :r and r.source = 'first' and r.line_no = 1"
            ),
            {"r": run_id},
        ).scalar_one()
    # the second copy in `first` and the copy in `second` are exact duplicates of the earlier kept lines;
    # the longer answer in `second` loses to the higher-priority source listed first
    assert drops[("first", 2)] == ("exact_duplicate", kept_same_q)
    assert drops[("second", 2)][0] == "exact_duplicate"
    assert drops[("second", 1)] == ("duplicate_instruction", kept_same_q)
    assert len(drops) == 3
    # re-running the stage (a retry) decides nothing again and adds no rows
    assert pipeline.deduplicate(run_id)["decided_partitions"] == 0
    assert (
        count(
            engine,
            "select count(*) from decisions d join run_partitions rp using (partition_id) where rp.run_id = :r",
            r=run_id,
        )
        == 3
    )


def test_mostly_malformed_partition_fails_with_a_clear_error(engine, tmp_path):
    write_jsonl(tmp_path / "wrong.jsonl", [{"question": f"q{i}", "answer": "a"} for i in range(5)])
    recipe = write_recipe(
        tmp_path, f"bad-{uuid.uuid4().hex[:6]}", [{"name": "w", "path": "wrong.jsonl", "format": "alpaca"}]
    )
    run_id = start(recipe)
    (part,) = pipeline.plan(run_id)
    with pytest.raises(IngestError, match=r"5 of 5 lines quarantined \(quarantine:missing_field x5\).*format 'alpaca'"):
        pipeline.ingest_partition(run_id, part)
    # the evidence stays readable, and the partition is not considered done
    assert count(engine, "select count(*) from quarantine where partition_id = :p", p=part) == 5
    assert count(engine, "select count(*) from partitions where partition_id = :p and status = 'failed'", p=part) == 1


def test_migrations_are_recorded_and_idempotent(engine):
    from infinstruct.store.db import migrate, migrations, schema_version

    assert schema_version(engine) == migrations()[-1][0]
    assert migrate(engine) == []


def test_nightly_run_with_one_added_file_touches_only_that_file(engine, tmp_path):
    (tmp_path / "pool").mkdir()
    write_jsonl(
        tmp_path / "pool" / "a.jsonl",
        GOOD[:5] + [{"instruction": "Refuse.", "input": "", "output": "As an AI language model, I cannot do that."}],
    )
    recipe = write_recipe(
        tmp_path, f"nightly-{uuid.uuid4().hex[:6]}", [{"name": "pool", "path": "pool/*.jsonl", "format": "alpaca"}]
    )

    def nightly() -> tuple[str, dict[str, dict]]:
        run_id = start(recipe)
        steps = {}
        for part in pipeline.plan(run_id):
            steps[part] = {
                "ingest": pipeline.ingest_partition(run_id, part),
                "rules": pipeline.apply_rules(run_id, part),
                "decontam": pipeline.decontaminate(run_id, part),
            }
        pipeline.deduplicate(run_id)
        return run_id, steps

    first_run, first = nightly()
    [old] = first

    def decided():
        with engine.connect() as conn:
            return conn.execute(
                sa.text(
                    "select line_no, stage, reason, run_id from decisions where partition_id = :p order by line_no"
                ),
                {"p": old},
            ).all()

    before = decided()
    assert [(line, reason) for line, _, reason, _ in before] == [(6, "rule:refusal")]

    write_jsonl(tmp_path / "pool" / "b.jsonl", GOOD[5:])
    second_run, second = nightly()
    assert set(second) == {old, *(set(second) - {old})} and len(second) == 2
    assert all(second[old][step]["skipped"] for step in ("ingest", "rules", "decontam"))
    [new] = set(second) - {old}
    assert not any(second[new][step]["skipped"] for step in ("ingest", "rules", "decontam"))
    assert decided() == before  # the old file's decisions still carry the first run's id
    assert before[0][3] == first_run != second_run


def test_partitions_ingested_by_an_earlier_record_version_are_ingested_again(engine, tmp_path):
    # issue 14: records ingested before the control-junk cleaning kept it; an unchanged file must not keep them
    write_jsonl(
        tmp_path / "a.jsonl",
        [
            {"instruction": "\x1b[31mName\x1b[0m a \u202ecolour\u202c.", "input": "", "output": "Blue\x07\ufffe."},
            *GOOD[:2],
        ],
    )
    recipe = write_recipe(
        tmp_path, f"version-{uuid.uuid4().hex[:6]}", [{"name": "a", "path": "a.jsonl", "format": "alpaca"}]
    )
    (first,) = ingest_all(start(recipe))
    with engine.begin() as conn:  # what the previous version wrote: the shard's checksum alone
        conn.execute(
            sa.text("update partitions set ingested_checksum = checksum where partition_id = :p"),
            {"p": first["partition_id"]},
        )
    (again,) = ingest_all(start(recipe))
    assert not again["skipped"] and again["records"] == 3
    (third,) = ingest_all(start(recipe))
    assert third["skipped"]
    with engine.connect() as conn:
        texts = conn.execute(
            sa.text("select conversation::text from records where partition_id = :p and line_no = 1"),
            {"p": first["partition_id"]},
        ).scalar_one()
    assert texts == '[{"role":"user","content":"Name a colour."},{"role":"assistant","content":"Blue."}]'


def test_forced_reingest_redoes_the_later_stages(engine, tmp_path):
    write_jsonl(
        tmp_path / "a.jsonl",
        GOOD[:3] + [{"instruction": "Refuse.", "input": "", "output": "As an AI language model, I cannot do that."}],
    )
    recipe = write_recipe(
        tmp_path, f"force-{uuid.uuid4().hex[:6]}", [{"name": "a", "path": "a.jsonl", "format": "alpaca"}]
    )
    run_id = start(recipe)
    (part,) = pipeline.plan(run_id)
    pipeline.ingest_partition(run_id, part)
    assert pipeline.apply_rules(run_id, part)["dropped"] == 1
    from infinstruct.sources.ingest import ingest_partition
    from infinstruct.store.db import get_engine

    ingest_partition(get_engine(), pipeline.run_recipe(run_id), run_id, part, force=True)  # drops its decisions
    again = pipeline.apply_rules(run_id, part)
    assert again["skipped"] is False and again["dropped"] == 1


@pytest.mark.parametrize("name", ["records; drop table records", "Records", "gate_rows_x y"])
def test_sql_identifiers_built_in_code_are_checked_by_a_raise_not_an_assert(engine, name):
    """An assert vanishes under `python -O`; these checks must not."""
    from infinstruct.gates.checks import snapshot_table
    from infinstruct.store.db import refresh_statistics

    with pytest.raises(ValueError, match="table name"):
        refresh_statistics(engine, name)
    with pytest.raises(ValueError, match="gate name"):
        snapshot_table(name, "run-1")
