"""Every input line is accounted for, and bad input fails once, naming the file (issue 14, section 3).

* A `.json` array goes on after an element it cannot read: that element is quarantined with its reason and
  position, the ones after it are read (a raw NUL, bad JSON, an element far over `max_record_chars`).
  A UTF-8 byte order mark starts a `.json`, JSONL or benchmark file like any other.
* A file that cannot be read or parsed (missing, corrupt Parquet, not UTF-8) raises a `DataError` naming
  it, which the DAG does not retry; an I/O error that may pass (EIO) is left to the retries.
* A file a source matches but that has nothing to read (empty, a broken symlink) is reported by the plan:
  `SkippedFile` with its reason, a warning in the log, a row in `skipped_files` for the run.
"""

from __future__ import annotations

import errno
import json
import logging
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from conftest import write_jsonl, write_recipe
from infinstruct import pipeline
from infinstruct.config import DecontamSettings, load_recipe
from infinstruct.curate.decontam import stage as decontam_stage
from infinstruct.curate.decontam.ngrams import BenchmarkError, BenchmarkSpec, load_items
from infinstruct.errors import DataError
from infinstruct.record.conversation import ConversationError
from infinstruct.record.reasons import Quarantine
from infinstruct.sources import plan, readers
from infinstruct.sources.ingest import excerpt

CHUNK = plan.READ_CHUNK
BOM = b"\xef\xbb\xbf"


def read_array(path: Path, data: bytes, max_chars: int = 10_000_000) -> list[tuple[int, object]]:
    path.write_bytes(data)
    return list(readers.read_json_array(str(path), max_chars))


def reasons(got: list[tuple[int, object]]) -> list:
    return [v.reason if isinstance(v, ConversationError) else v for _, v in got]


# --------------------------------------------------------------------------------------------------
# a bad .json element spoils itself only
# --------------------------------------------------------------------------------------------------


def test_a_raw_nul_in_one_element_quarantines_that_element_and_the_rest_is_read(tmp_path):
    got = read_array(tmp_path / "a.json", b'[{"q": "fine"}, {"q": "b\x00c"}, {"q": "after"}, {"q": "last"}]')
    assert [no for no, _ in got] == [1, 2, 3, 4]
    assert reasons(got) == [{"q": "fine"}, Quarantine.NUL_BYTE, {"q": "after"}, {"q": "last"}]
    err = got[1][1]
    assert "element 2" in err.detail and "character 16" in err.detail  # which element, and where it starts
    assert excerpt(err) == '{"q": "b\\0c"}'  # its raw text, readable


def test_an_element_far_over_max_chars_is_too_long_and_the_rest_is_read(tmp_path):
    elements = [{"q": "small"}, {"q": "x" * 2_500_000, "nested": [{"a": "]}"}]}, {"q": "after"}]
    got = read_array(tmp_path / "a.json", json.dumps(elements).encode(), max_chars=100_000)
    assert [no for no, _ in got] == [1, 2, 3]
    assert reasons(got) == [{"q": "small"}, Quarantine.TOO_LONG, {"q": "after"}]
    assert "element 2" in got[1][1].detail and "100000 characters" in got[1][1].detail
    assert excerpt(got[1][1]).startswith('{"q": "xxx')


@pytest.mark.parametrize(
    "bad, expected",
    [
        (b'{"q": tru}', Quarantine.INVALID_JSON),
        (b'{"q": "a" "b"}', Quarantine.INVALID_JSON),
        (
            b'{"q": "has \\"quoted\\" ] and , and }", "r": tru}',
            Quarantine.INVALID_JSON,
        ),  # brackets in strings do not count
        (b"[" * 100_000 + b"]" * 100_000, Quarantine.INVALID_JSON),
        (b'{"q": "caf\xe9"}', Quarantine.INVALID_UTF8),
    ],
    ids=["bad-literal", "missing-colon", "brackets-in-a-string", "nested-too-deep", "not-utf8"],
)
def test_an_element_that_is_not_json_is_quarantined_and_the_rest_is_read(tmp_path, bad, expected):
    got = read_array(tmp_path / "a.json", b'[{"q": "first"}, ' + bad + b', {"q": "after"}]')
    assert [no for no, _ in got] == [1, 2, 3]
    assert reasons(got) == [{"q": "first"}, expected, {"q": "after"}]
    assert "element 2" in got[1][1].detail


def test_a_bad_element_across_read_chunks_spoils_only_itself(tmp_path):
    first = {"q": "x" * (CHUNK - 100)}
    bad = b'{"q": "' + b"y" * CHUNK + b'\x00"}'  # starts in the first chunk, its NUL is in the second
    data = b"[" + json.dumps(first).encode() + b", " + bad + b', {"q": "after"}]'
    got = read_array(tmp_path / "a.json", data)
    assert reasons(got) == [first, Quarantine.NUL_BYTE, {"q": "after"}]


@pytest.mark.parametrize(
    "data, expected",
    [
        (b"[1,,2]", [1, Quarantine.INVALID_JSON, 2]),
        (b"[1, 2, ]", [1, 2, Quarantine.INVALID_JSON]),
        (b'[{"a": "\\\\", "b": tru}, 3]', [Quarantine.INVALID_JSON, 3]),  # an escaped backslash escapes no quote
    ],
)
def test_each_bad_element_between_commas_is_one_item(tmp_path, data, expected):
    assert reasons(read_array(tmp_path / "a.json", data)) == expected


def test_an_element_that_never_ends_is_the_last_item(tmp_path):
    got = read_array(tmp_path / "a.json", b'[{"q": "first"}, {"q": "never closed ]')
    assert reasons(got) == [{"q": "first"}, Quarantine.INVALID_JSON]
    assert "element 2" in got[1][1].detail and "file ends inside it" in got[1][1].detail


# --------------------------------------------------------------------------------------------------
# a byte order mark
# --------------------------------------------------------------------------------------------------


def test_a_json_array_after_a_utf8_byte_order_mark_is_read(tmp_path):
    assert read_array(tmp_path / "a.json", BOM + b'[{"q": "a"}, {"q": "b"}]') == [(1, {"q": "a"}), (2, {"q": "b"})]


def test_a_benchmark_file_after_a_utf8_byte_order_mark_is_read(tmp_path):
    (tmp_path / "b.jsonl").write_bytes(BOM + b'{"prompt": "first item"}\n{"prompt": "second item"}\n')
    items = load_items(BenchmarkSpec(name="b", path=str(tmp_path / "b.jsonl"), fields=["prompt"]))
    assert [item.text for item in items] == ["first item", "second item"]


def test_jsonl_and_json_with_a_byte_order_mark_ingest_like_without(engine, tmp_path):
    rows = [{"instruction": f"Question {i}?", "input": "", "output": f"Answer {i}."} for i in range(3)]
    (tmp_path / "a.jsonl").write_bytes(BOM + b"".join(json.dumps(r).encode() + b"\n" for r in rows))
    (tmp_path / "b.json").write_bytes(BOM + json.dumps(rows).encode())
    run_id = start(
        write_recipe(
            tmp_path,
            f"bom-{uuid.uuid4().hex[:6]}",
            [{"name": "a", "path": "a.jsonl", "format": "alpaca"}, {"name": "b", "path": "b.json", "format": "alpaca"}],
        )
    )
    results = [pipeline.ingest_partition(run_id, p) for p in pipeline.plan(run_id)]
    assert sorted((r["lines"], r["records"], r["quarantined"]) for r in results) == [(3, 3, 0), (3, 3, 0)]


# --------------------------------------------------------------------------------------------------
# ingest: the store holds every element, good or bad
# --------------------------------------------------------------------------------------------------


def start(recipe_path) -> str:
    run_id = f"test-{uuid.uuid4().hex[:8]}"
    pipeline.start_run(run_id, recipe_path)
    return run_id


def test_a_json_array_with_bad_elements_is_ingested_whole(engine, tmp_path):
    good = [{"instruction": f"Question {i}?", "input": "", "output": f"Answer {i}."} for i in range(6)]
    parts = [json.dumps(g).encode() for g in good]
    parts[2] = b'{"instruction": "has a raw \x00 NUL", "output": "x"}'
    parts[4] = b'{"instruction": "q", "output": "' + b"z" * 5_000 + b'"}'
    (tmp_path / "a.json").write_bytes(b"[" + b",\n".join(parts) + b"]")
    recipe = write_recipe(
        tmp_path,
        f"arr-{uuid.uuid4().hex[:6]}",
        [{"name": "a", "path": "a.json", "format": "alpaca"}],
        ingest={"max_record_chars": 1_000, "max_quarantine_ratio": 0.5},
    )
    run_id = start(recipe)
    (part,) = pipeline.plan(run_id)
    assert pipeline.ingest_partition(run_id, part) == {
        "partition_id": part,
        "lines": 6,
        "records": 4,
        "quarantined": 2,
        "skipped": False,
    }
    with engine.connect() as conn:
        quarantined = conn.execute(
            sa.text("select line_no, reason, error from quarantine where partition_id = :p order by line_no"),
            {"p": part},
        ).all()
        lines = (
            conn.execute(sa.text("select line_no from records where partition_id = :p order by 1"), {"p": part})
            .scalars()
            .all()
        )
    assert [(no, reason) for no, reason, _ in quarantined] == [(3, "quarantine:nul_byte"), (5, "quarantine:too_long")]
    assert "element 3" in quarantined[0][2]
    assert lines == [1, 2, 4, 6]


# --------------------------------------------------------------------------------------------------
# permanent errors are DataErrors naming the file; transient ones are not
# --------------------------------------------------------------------------------------------------


def parquet_source(tmp_path: Path, data: bytes) -> tuple[Path, object]:
    path = tmp_path / "data.parquet"
    path.write_bytes(data)
    recipe, _ = load_recipe(write_recipe(tmp_path, "pq", [{"name": "p", "path": str(path), "format": "messages"}]))
    return path, recipe


@pytest.mark.parametrize(
    "data", [b"not a parquet file at all", b"PAR1" + b"\x00" * 50 + b"PAR1"], ids=["garbage", "bad-footer"]
)
def test_a_corrupt_parquet_file_fails_the_plan_with_a_data_error_naming_it(tmp_path, data):
    path, recipe = parquet_source(tmp_path, data)
    with pytest.raises(DataError, match=f"{path}: not a readable Parquet file"):
        plan.plan_recipe(recipe)


@pytest.mark.parametrize(
    "code, permanent", [(errno.ENOENT, True), (errno.EACCES, True), (errno.EIO, False), (errno.ESTALE, False)]
)
def test_an_os_error_planning_a_file_is_a_data_error_only_when_a_retry_cannot_fix_it(
    tmp_path, monkeypatch, code, permanent
):
    write_jsonl(tmp_path / "a.jsonl", [{"instruction": "q", "output": "a"}])
    recipe, _ = load_recipe(write_recipe(tmp_path, "os", [{"name": "a", "path": "a.jsonl", "format": "alpaca"}]))

    def failing_scan(source, path, shard_lines):
        raise OSError(code, "simulated", path)

    monkeypatch.setattr(plan, "scan_file", failing_scan)
    with pytest.raises(OSError if not permanent else DataError) as caught:
        plan.plan_recipe(recipe)
    assert isinstance(caught.value, DataError) is permanent
    if permanent:
        assert str(tmp_path / "a.jsonl") in str(caught.value)


def test_a_benchmark_file_gone_after_the_run_started_is_a_data_error_naming_it(tmp_path):
    gone = tmp_path / "bench.jsonl"
    settings = DecontamSettings(benchmarks=[BenchmarkSpec(name="b", path=str(gone), fields=["prompt"])], embedding=None)
    with pytest.raises(BenchmarkError, match=f"benchmark 'b': cannot read '{gone}'"):
        decontam_stage.benchmark_digests(settings)


@pytest.mark.parametrize(
    "line, why",
    [
        (b'{"prompt": "caf\xe9"}', "not UTF-8"),
        (b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
        (b'{"prompt": "p", "n": ' + b"9" * 5_000 + b"}", "digits"),
    ],
    ids=["not-utf8", "nested-too-deep", "long-integer"],
)
def test_an_unreadable_benchmark_line_is_a_benchmark_error_naming_file_and_line(tmp_path, line, why):
    path = tmp_path / "bench.jsonl"
    path.write_bytes(b'{"prompt": "fine"}\n' + line + b"\n")
    with pytest.raises(BenchmarkError, match=f"{path}:2: .*{why}"):
        load_items(BenchmarkSpec(name="b", path=str(path), fields=["prompt"]))


# --------------------------------------------------------------------------------------------------
# files with nothing to read are reported, not silently left out
# --------------------------------------------------------------------------------------------------


def test_empty_files_and_broken_symlinks_are_reported_by_the_plan(tmp_path):
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "a.jsonl", [{"instruction": "q", "output": "a"}])
    for name in ("empty.jsonl", "empty.json", "empty.parquet"):
        (tmp_path / "data" / name).write_bytes(b"")
    (tmp_path / "data" / "gone.jsonl").symlink_to(tmp_path / "nowhere.jsonl")
    recipe, _ = load_recipe(
        write_recipe(tmp_path, "skip", [{"name": "s", "path": str(tmp_path / "data" / "*"), "format": "alpaca"}])
    )
    plans, scans, skipped = plan.plan_recipe(recipe)
    assert [Path(p.path).name for p in plans] == ["a.jsonl"]
    assert {Path(s.path).name: s.reason for s in skipped} == {
        "empty.jsonl": plan.SkipReason.EMPTY_FILE,
        "empty.json": plan.SkipReason.EMPTY_FILE,
        "empty.parquet": plan.SkipReason.EMPTY_FILE,
        "gone.jsonl": plan.SkipReason.BROKEN_SYMLINK,
    }
    assert "nowhere.jsonl" in next(s.detail for s in skipped if s.reason == plan.SkipReason.BROKEN_SYMLINK)


def test_a_source_of_only_a_broken_symlink_says_so(tmp_path):
    (tmp_path / "a.jsonl").symlink_to(tmp_path / "nowhere.jsonl")
    recipe, _ = load_recipe(
        write_recipe(tmp_path, "broken", [{"name": "s", "path": str(tmp_path / "a.jsonl"), "format": "alpaca"}])
    )
    with pytest.raises(plan.SourceError, match="no file matches .*a.jsonl.*symlink to .*nowhere.jsonl"):
        plan.plan_recipe(recipe)


def test_the_run_records_and_logs_the_files_its_plan_left_out(engine, tmp_path, caplog):
    write_jsonl(tmp_path / "a.jsonl", [{"instruction": "q", "output": "a"}])
    (tmp_path / "b.jsonl").write_bytes(b"")
    (tmp_path / "c.jsonl").symlink_to(tmp_path / "nowhere.jsonl")
    run_id = start(
        write_recipe(tmp_path, f"left-{uuid.uuid4().hex[:6]}", [{"name": "s", "path": "*.jsonl", "format": "alpaca"}])
    )
    with caplog.at_level(logging.WARNING, logger="infinstruct.pipeline"):
        assert len(pipeline.plan(run_id)) == 1
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("select path, reason from skipped_files where run_id = :r order by path"), {"r": run_id}
        ).all()
    assert [(Path(path).name, reason) for path, reason in rows] == [
        ("b.jsonl", "empty_file"),
        ("c.jsonl", "broken_symlink"),
    ]
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "b.jsonl" in warned and "empty_file" in warned and "c.jsonl" in warned and "broken_symlink" in warned


def test_the_release_manifest_lists_the_files_left_out_and_only_then(engine, tmp_path):
    from conftest import publish

    write_jsonl(
        tmp_path / "a.jsonl", [{"instruction": f"Task {i}?", "input": "", "output": f"Done {i}."} for i in range(3)]
    )
    recipe = write_recipe(
        tmp_path, f"man-{uuid.uuid4().hex[:6]}", [{"name": "s", "path": "*.jsonl", "format": "alpaca"}]
    )

    def manifest() -> dict:
        run_id = start(recipe)
        for part in pipeline.plan(run_id):
            pipeline.ingest_partition(run_id, part)
        pipeline.deduplicate(run_id)
        return json.loads((Path(publish(run_id, tmp_path / "out")["path"]) / "manifest.json").read_text())

    assert "skipped_files" not in manifest()  # good input: the manifest as before
    (tmp_path / "b.jsonl").write_bytes(b"")
    left_out = manifest()
    assert [(Path(s["path"]).name, s["source"], s["reason"]) for s in left_out["skipped_files"]] == [
        ("b.jsonl", "s", "empty_file")
    ]
    card = (tmp_path / "out" / left_out["dataset"] / f"v{left_out['version']:04d}" / "README.md").read_text()
    assert "1 file(s) matched by the sources were left out, not read:" in card
    assert "| `s` | `b.jsonl` | `empty_file` |" in card
