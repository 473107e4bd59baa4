"""Specification of partition planning and of the streaming readers.

* JSONL: `plan.jsonl_shards(path, shard_lines)` cuts a file into shards of `shard_lines` lines
  (byte ranges plus the 1-based number of the shard's first line and a checksum);
  `readers.read_jsonl(path, start, end, first_line)` yields `(line_no, raw line bytes)` for one shard.
* JSON array: `readers.read_json_array(path, max_chars)` yields `(element_no, value)`, a ConversationError
  as the value of an element it cannot read (and goes on), and one final `(element_no, ConversationError)`
  when the rest of the file cannot be read (an element never closes, a separator is missing).
* Parquet: `plan.parquet_shards(path, shard_lines)` groups whole row groups;
  `readers.read_parquet(path, start_group, end_group, first_row, batch_size)` yields `(row_no, row)`.

Pure unit tests on small files under tmp_path; no database.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import write_jsonl
from infinstruct.record.conversation import ConversationError
from infinstruct.record.reasons import Quarantine
from infinstruct.sources import plan, readers

CHUNK = plan.READ_CHUNK  # the JSON array reader decodes the file in chunks of this many bytes


# --------------------------------------------------------------------------------------------------
# JSONL shards
# --------------------------------------------------------------------------------------------------


def read_all_shards(path: Path, shard_lines: int) -> list[tuple[int, bytes]]:
    return [
        item
        for start, end, first, _ in plan.jsonl_shards(str(path), shard_lines)
        for item in readers.read_jsonl(str(path), start, end, first)
    ]


def numbered_lines(n: int) -> list[bytes]:
    return [json.dumps({"instruction": f"question {i}", "output": f"answer {i}"}).encode() for i in range(1, n + 1)]


@pytest.mark.parametrize("trailing_newline", [True, False], ids=["newline-at-end", "no-newline-at-end"])
@pytest.mark.parametrize(
    "n_lines, shard_lines",
    [
        (1, 3),
        (2, 3),
        (3, 3),
        (7, 3),
        (9, 3),
        (10, 3),
        (5, 1),
        (4, 100),
        (12, 4),
    ],
)
def test_reading_every_shard_yields_every_line_once_with_its_number(tmp_path, n_lines, shard_lines, trailing_newline):
    lines = numbered_lines(n_lines)
    data = b"\n".join(lines) + (b"\n" if trailing_newline else b"")
    path = tmp_path / "data.jsonl"
    path.write_bytes(data)

    shards = plan.jsonl_shards(str(path), shard_lines)

    assert len(shards) == -(-n_lines // shard_lines)  # ceil: an exact multiple has no empty tail shard
    assert shards[0][0] == 0 and shards[-1][1] == len(data)
    assert all(a[1] == b[0] for a, b in zip(shards, shards[1:])), "shards are contiguous byte ranges"
    assert [first for _, _, first, _ in shards] == list(range(1, n_lines + 1, shard_lines))
    got = read_all_shards(path, shard_lines)
    assert [no for no, _ in got] == list(range(1, n_lines + 1))
    assert [raw.rstrip(b"\n") for _, raw in got] == lines
    assert b"".join(raw for _, raw in got) == data


def test_each_shard_holds_exactly_shard_lines_lines_except_the_last(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [{"n": i} for i in range(1, 11)])
    per_shard = [
        [no for no, _ in readers.read_jsonl(str(path), start, end, first)]
        for start, end, first, _ in plan.jsonl_shards(str(path), 4)
    ]
    assert per_shard == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]


def test_blank_and_malformed_lines_are_still_lines(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [{"n": 1}, "", "{broken", {"n": 4}])
    assert [(no, raw) for no, raw in read_all_shards(path, 2)] == [
        (1, b'{"n": 1}\n'),
        (2, b"\n"),
        (3, b"{broken\n"),
        (4, b'{"n": 4}\n'),
    ]


def test_an_empty_file_has_no_shards(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    assert plan.jsonl_shards(str(path), 3) == []


def test_appending_lines_keeps_the_checksums_of_earlier_full_shards(tmp_path):
    path = write_jsonl(tmp_path / "growing.jsonl", [{"n": i} for i in range(1, 8)])  # 7 lines: 3 + 3 + 1
    before = plan.jsonl_shards(str(path), 3)
    with path.open("a") as fh:
        fh.write("".join(json.dumps({"n": i}) + "\n" for i in range(8, 12)))  # now 11 lines: 3 + 3 + 3 + 2
    after = plan.jsonl_shards(str(path), 3)

    assert len(before) == 3 and len(after) == 4
    assert after[:2] == before[:2], "full shards before the appended tail are unchanged (offsets and checksums)"
    assert (after[2][0], after[2][2]) == (before[2][0], before[2][2]), "the partial shard starts where it did"
    assert after[2][1] > before[2][1] and after[2][3] != before[2][3], "it grew: new end and new checksum"
    assert after[3][2] == 10
    assert [no for no, _ in read_all_shards(path, 3)] == list(range(1, 12))


def test_appending_to_an_exact_multiple_only_adds_shards(tmp_path):
    path = write_jsonl(tmp_path / "growing.jsonl", [{"n": i} for i in range(1, 7)])
    before = plan.jsonl_shards(str(path), 3)
    with path.open("a") as fh:
        fh.write(json.dumps({"n": 7}) + "\n")
    after = plan.jsonl_shards(str(path), 3)
    assert after[:2] == before and len(after) == 3


def test_changing_a_line_changes_only_its_shard_checksum(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [{"n": i} for i in range(1, 10)])
    before = plan.jsonl_shards(str(path), 3)
    write_jsonl(path, [{"n": i if i != 5 else -5} for i in range(1, 10)])
    after = plan.jsonl_shards(str(path), 3)
    assert [a[3] == b[3] for a, b in zip(before, after)] == [True, False, True]


# --------------------------------------------------------------------------------------------------
# JSON array
# --------------------------------------------------------------------------------------------------


def read_array(path: Path, max_chars: int = 10_000_000) -> list[tuple[int, object]]:
    return list(readers.read_json_array(str(path), max_chars))


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_json_array_elements_are_numbered_from_one(tmp_path):
    elements = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(1, 6)] + [[1, 2], "text", None]
    path = write_bytes(tmp_path / "a.json", json.dumps(elements, indent=2).encode())
    assert read_array(path) == list(enumerate(elements, start=1))


@pytest.mark.parametrize("data", [b"[]", b"  [ \n ]\n"], ids=["compact", "spaced"])
def test_an_empty_json_array_yields_nothing(tmp_path, data):
    assert read_array(write_bytes(tmp_path / "a.json", data)) == []


def test_an_element_bigger_than_the_read_chunk(tmp_path):
    big = "\u00e9\u20acx" * 850_000  # ~2.5M characters, ~5 MB of UTF-8; multi-byte characters straddle chunks
    elements = [
        {"question": "small", "answer": "first"},
        {"question": "big", "answer": big},
        {"question": "small", "answer": "last"},
    ]
    data = json.dumps(elements, ensure_ascii=False).encode()
    assert len(data) > 2 * CHUNK
    got = read_array(write_bytes(tmp_path / "a.json", data))
    assert [no for no, _ in got] == [1, 2, 3]
    assert [value for _, value in got] == elements


def test_an_element_far_over_max_chars_is_too_long_and_the_next_is_read(tmp_path):
    elements = [{"q": "small"}, {"q": "x" * 2_500_000}, {"q": "after"}]
    got = read_array(write_bytes(tmp_path / "a.json", json.dumps(elements).encode()), max_chars=100_000)
    assert got[0] == (1, {"q": "small"})
    assert [no for no, _ in got] == [1, 2, 3]
    assert isinstance(got[1][1], ConversationError) and got[1][1].reason == Quarantine.TOO_LONG
    assert got[2] == (3, {"q": "after"})


@pytest.mark.parametrize(
    "data",
    [b'{"question": "q", "answer": "a"}', b"", b"   \n", b"not json", b'"[]"'],
    ids=["object", "empty-file", "whitespace", "text", "string"],
)
def test_a_file_that_is_not_an_array_is_one_invalid_json_item(tmp_path, data):
    got = read_array(write_bytes(tmp_path / "a.json", data))
    assert len(got) == 1
    no, err = got[0]
    assert no == 1
    assert isinstance(err, ConversationError) and err.reason == Quarantine.INVALID_JSON


@pytest.mark.parametrize(
    "tail",
    [
        b', {"c": ',  # cut inside an element
        b', {"c": 3',  # cut before the closing brace
        b",",  # cut after a separator
        b"",  # cut after an element
        b" ",  # cut after an element and whitespace
        b" garbage]",  # no separator
        b', {"c": 3} {"d": 4}]',  # missing comma later on
    ],
)
def test_a_truncated_array_yields_its_valid_elements_then_one_error(tmp_path, tail):
    data = b'[{"a": 1}, {"b": 2}' + tail
    got = read_array(write_bytes(tmp_path / "a.json", data))
    numbers = [no for no, _ in got]
    assert len(numbers) == len(set(numbers)), "no element number is used twice"
    assert numbers == list(range(1, len(got) + 1))
    *good, (last_no, err) = got
    assert all(not isinstance(v, ConversationError) for _, v in good)
    assert good[:2] == [(1, {"a": 1}), (2, {"b": 2})]
    assert isinstance(err, ConversationError) and err.reason == Quarantine.INVALID_JSON
    assert last_no == len(good) + 1


def test_invalid_utf8_spoils_only_its_own_element_across_chunks(tmp_path):
    first = {"q": "x" * (CHUNK // 2)}
    second = b'{"q": "' + b"y" * CHUNK + b'caf\xe9"}'  # starts in the first chunk, its bad byte is in the second
    data = b"[" + json.dumps(first).encode() + b", " + second + b', {"q": "after"}]'
    got = read_array(write_bytes(tmp_path / "a.json", data))
    assert got[0] == (1, first)
    assert [no for no, _ in got] == [1, 2, 3]
    assert isinstance(got[1][1], ConversationError) and got[1][1].reason == Quarantine.INVALID_UTF8
    assert got[2] == (3, {"q": "after"})


def test_invalid_utf8_spoils_only_its_own_element(tmp_path):
    data = b'[{"q": "fine"}, {"q": "caf\xe9"}, {"q": "after"}]'
    got = read_array(write_bytes(tmp_path / "a.json", data))
    assert got[0] == (1, {"q": "fine"})
    assert [no for no, _ in got] == [1, 2, 3]
    assert isinstance(got[1][1], ConversationError) and got[1][1].reason == Quarantine.INVALID_UTF8
    assert got[2] == (3, {"q": "after"})


def test_a_number_element_on_the_chunk_boundary_is_read_whole(tmp_path):
    filler = "x" * (CHUNK - 10)
    data = b'["' + filler.encode() + b'",1234567890, {"a": 1}]'
    assert data.index(b"1234567890") < CHUNK < data.index(b"1234567890") + 10
    assert read_array(write_bytes(tmp_path / "a.json", data)) == [(1, filler), (2, 1234567890), (3, {"a": 1})]


# --------------------------------------------------------------------------------------------------
# Parquet
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def parquet_file(tmp_path) -> tuple[Path, int]:
    """10 rows in row groups of 3, 3, 3 and 1 rows; column n is the row's 1-based number."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 10
    table = pa.table(
        {
            "n": list(range(1, n + 1)),
            "messages": [
                [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]
                for i in range(1, n + 1)
            ],
        }
    )
    path = tmp_path / "data.parquet"
    pq.write_table(table, path, row_group_size=3)
    assert pq.ParquetFile(path).metadata.num_row_groups == 4
    return path, n


@pytest.mark.parametrize("shard_lines", [1, 3, 4, 5, 6, 9, 10, 1000])
@pytest.mark.parametrize("batch_size", [1, 2, 1000])
def test_parquet_shards_yield_every_row_once_numbered_in_order(parquet_file, shard_lines, batch_size):
    path, n = parquet_file
    shards = plan.parquet_shards(str(path), shard_lines)
    assert shards[0][0] == 0 and shards[-1][1] == 4
    assert all(a[1] == b[0] for a, b in zip(shards, shards[1:])), "shards are contiguous runs of row groups"
    got = [
        item
        for start, end, first, _ in shards
        for item in readers.read_parquet(str(path), start, end, first, batch_size)
    ]
    assert [no for no, _ in got] == list(range(1, n + 1))
    assert all(row["n"] == no for no, row in got)
    assert got[0][1]["messages"] == [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]


def test_parquet_shards_are_whole_row_groups_of_about_shard_lines_rows(parquet_file):
    path, _ = parquet_file
    assert [s[:3] for s in plan.parquet_shards(str(path), 4)] == [(0, 2, 1), (2, 4, 7)]
    assert [s[:3] for s in plan.parquet_shards(str(path), 3)] == [(0, 1, 1), (1, 2, 4), (2, 3, 7), (3, 4, 10)]
    assert [s[:3] for s in plan.parquet_shards(str(path), 100)] == [(0, 4, 1)]
    assert len({s[3] for s in plan.parquet_shards(str(path), 3)}) == 1, "the checksum is the file's"


def test_an_empty_parquet_file_is_one_shard_with_no_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"n": pa.array([], pa.int64())}), path)
    shards = plan.parquet_shards(str(path), 5)
    assert len(shards) == 1
    assert [
        item for start, end, first, _ in shards for item in readers.read_parquet(str(path), start, end, first, 10)
    ] == []


@pytest.mark.parametrize("bad", [b"[" * 100_000 + b"]" * 100_000, b"9" * 5_000], ids=["nested", "long-integer"])
def test_an_element_python_cannot_read_is_quarantined_not_raised(tmp_path, bad):
    data = b'[{"q": "first"}, ' + bad + b', {"q": "unreached"}]'
    got = read_array(write_bytes(tmp_path / "a.json", data))
    assert got[0] == (1, {"q": "first"})
    assert isinstance(got[1][1], ConversationError) and got[1][1].reason == Quarantine.INVALID_JSON
