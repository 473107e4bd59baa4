"""Integration: state that must not pile up in the store (issue 14, section 3, point 8).

One file has one identity however a recipe or a glob spells it (no doubled records, no rows of a former
spelling left behind), and a run a killed process left `running` is marked failed, with the reason, when
the next run of its dataset starts."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from conftest import write_jsonl, write_recipe
from infinstruct import pipeline
from infinstruct.sources.plan import SourceError, other_spellings, partition_id
from infinstruct.store.run_report import recent_runs

GOOD = [{"instruction": f"Question number {i}?", "input": "", "output": f"Answer {i}."} for i in range(10)]


def start(recipe_path) -> str:
    run_id = f"test-{uuid.uuid4().hex[:8]}"
    pipeline.start_run(run_id, recipe_path)
    return run_id


def ingest_all(run_id: str) -> list[dict]:
    return [pipeline.ingest_partition(run_id, p) for p in pipeline.plan(run_id)]


def dataset_rows(engine, dataset: str) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(
            conn.execute(
                sa.text(
                    "select 'partitions', count(*) from partitions where dataset = :d"
                    " union all select 'records', count(*) from records r join partitions p using (partition_id) where p.dataset = :d"
                    " union all select 'source_files', count(*) from source_files where dataset = :d"
                ),
                {"d": dataset},
            ).all()
        )


@pytest.fixture
def linked(tmp_path):
    """data/a.jsonl, and `link` -> data: one file, two spellings."""
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "a.jsonl", GOOD)
    (tmp_path / "link").symlink_to(tmp_path / "data", target_is_directory=True)
    return tmp_path


def test_a_glob_reaching_one_file_through_a_symlink_plans_it_once(engine, linked):
    name = f"glob-{uuid.uuid4().hex[:6]}"
    recipe = write_recipe(linked, name, [{"name": "a", "path": str(linked / "**" / "*.jsonl"), "format": "alpaca"}])
    results = ingest_all(start(recipe))
    assert sum(r["records"] for r in results) == 10
    assert dataset_rows(engine, name) == {"partitions": 1, "records": 10, "source_files": 1}
    with engine.connect() as conn:
        assert conn.execute(sa.text("select path from partitions where dataset = :d"), {"d": name}).scalar_one() == str(
            (linked / "data" / "a.jsonl").resolve()
        )


@pytest.mark.parametrize("spelling", ["link/a.jsonl", "data/./a.jsonl", "data//a.jsonl", "link/../data/a.jsonl"])
def test_a_recipe_spelling_its_file_another_way_reuses_the_stored_partitions(engine, linked, spelling):
    name = f"spell-{uuid.uuid4().hex[:6]}"
    sources = [{"name": "a", "path": str(linked / "data" / "a.jsonl"), "format": "alpaca"}]
    ingest_all(start(write_recipe(linked, name, sources)))
    sources[0]["path"] = f"{linked}/{spelling}"  # absolute, so the recipe loader keeps it as written
    again = ingest_all(start(write_recipe(linked, name, sources)))
    assert [r["skipped"] for r in again] == [True]
    assert dataset_rows(engine, name) == {"partitions": 1, "records": 10, "source_files": 1}


def test_rows_stored_under_a_former_spelling_are_deleted_and_the_dataset_stages_start_over(engine, linked):
    name = f"former-{uuid.uuid4().hex[:6]}"
    real, former = str(linked / "data" / "a.jsonl"), str(linked / "link" / "a.jsonl")
    recipe = write_recipe(linked, name, [{"name": "a", "path": real, "format": "alpaca"}])
    first = start(recipe)
    (part,) = ingest_all(first)
    pipeline.deduplicate(first)
    # what a store written before real paths were a file's identity holds: the file again, under the link
    old = partition_id(name, "a", former, 0)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "insert into partitions select :old, dataset, source, :path, shard, format, start_offset,"
                " end_offset, first_line, checksum, ingested_checksum, status, lines, records, quarantined,"
                " run_id, updated_at from partitions where dataset = :d"
            ),
            {"old": old, "path": former, "d": name},
        )
        conn.execute(
            sa.text(
                "insert into records select :old, line_no, record_id, instruction_key, source, conversation,"
                " role_pattern, min_turn_chars, total_chars, created_at from records where partition_id = :p"
            ),
            {"old": old, "p": part["partition_id"]},
        )
        conn.execute(
            sa.text(
                "insert into decisions (partition_id, line_no, stage, verdict, reason, run_id)"
                " values (:old, 1, 'dedup', 'dropped', 'exact_duplicate', :run)"
            ),
            {"old": old, "run": first},
        )
        conn.execute(
            sa.text(
                "insert into stage_completions (partition_id, stage, fingerprint, run_id, result)"
                " select :old, stage, fingerprint, run_id, result from stage_completions where partition_id = :p"
            ),
            {"old": old, "p": part["partition_id"]},
        )
        conn.execute(
            sa.text(
                "insert into source_files select dataset, source, :path, size, mtime_ns, ctime_ns, inode,"
                " shard_lines, scanned_at_ns, shards from source_files where dataset = :d"
            ),
            {"path": former, "d": name},
        )
    assert dataset_rows(engine, name) == {"partitions": 2, "records": 20, "source_files": 2}

    second = start(recipe)
    assert [r["skipped"] for r in ingest_all(second)] == [True]
    assert dataset_rows(engine, name) == {"partitions": 1, "records": 10, "source_files": 1}
    with engine.connect() as conn:
        left = conn.execute(
            sa.text(
                "select (select count(*) from decisions where partition_id = :old)"
                " + (select count(*) from stage_completions where partition_id = :old)"
                " + (select count(*) from run_partitions where partition_id = :old)"
            ),
            {"old": old},
        ).scalar_one()
    assert left == 0
    result = pipeline.deduplicate(second)
    assert result["full_pass"] and result["why"] == "first pass", "its earlier passes counted the deleted records"


def test_a_file_in_two_sources_fails_the_plan_naming_both(engine, linked):
    recipe = write_recipe(
        linked,
        f"two-{uuid.uuid4().hex[:6]}",
        [
            {"name": "a", "path": str(linked / "data" / "a.jsonl"), "format": "alpaca"},
            {"name": "b", "path": str(linked / "link" / "*.jsonl"), "format": "alpaca"},
        ],
    )
    with pytest.raises(SourceError, match=r"a.jsonl is a file of source 'a' and of source 'b'"):
        pipeline.plan(start(recipe))


def test_other_spellings_are_the_stored_names_of_planned_files_only(linked):
    real = str(linked / "data" / "a.jsonl")
    stored = {
        ("a", real),
        ("a", str(linked / "link" / "a.jsonl")),
        ("b", str(linked / "link" / "a.jsonl")),
        ("a", str(linked / "gone.jsonl")),
    }
    assert other_spellings({("a", real)}, stored) == {("a", str(linked / "link" / "a.jsonl"))}


def run_status(engine, run_id: str) -> tuple[str, str | None, bool]:
    with engine.connect() as conn:
        row = conn.execute(
            sa.text("select status, end_reason, finished_at is not null from runs where run_id = :r"), {"r": run_id}
        ).one()
    return tuple(row)


def test_a_run_left_running_is_marked_failed_with_the_reason_when_the_next_run_of_its_dataset_starts(engine, tmp_path):
    write_jsonl(tmp_path / "a.jsonl", GOOD)
    recipe = write_recipe(
        tmp_path, f"killed-{uuid.uuid4().hex[:6]}", [{"name": "a", "path": "a.jsonl", "format": "alpaca"}]
    )
    other = write_recipe(
        tmp_path, f"other-{uuid.uuid4().hex[:6]}", [{"name": "a", "path": "a.jsonl", "format": "alpaca"}]
    )
    finished, killed, elsewhere = start(recipe), start(recipe), start(other)
    with engine.begin() as conn:
        conn.execute(
            sa.text("update runs set status = 'succeeded', finished_at = now() where run_id = :r"), {"r": finished}
        )
        conn.execute(sa.text("update runs set status = 'running', finished_at = null where run_id = :r"), {"r": killed})
    assert run_status(engine, killed) == ("running", None, False)  # what a killed `infinstruct run` leaves

    nxt = start(recipe)
    status, reason, ended = run_status(engine, killed)
    assert (status, ended) == ("failed", True) and reason.startswith("abandoned") and nxt in reason
    assert {r["run_id"]: r["end_reason"] for r in recent_runs(engine, limit=10_000)}[killed] == reason  # the UI's list
    assert run_status(engine, finished)[0] == "succeeded"
    assert run_status(engine, elsewhere) == ("running", None, False), "another dataset's run is not this one's business"
    assert run_status(engine, nxt) == ("running", None, False)
    pipeline.start_run(nxt, recipe)  # a retry of the start task is the same run, not a stale one
    assert run_status(engine, nxt) == ("running", None, False)
