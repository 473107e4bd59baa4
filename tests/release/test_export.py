"""Release versions: unchanged content keeps its version, new content gets the next one, and a release
folder is never overwritten by different content."""

from __future__ import annotations

import json
import uuid

import pandas as pd
import pytest

from conftest import publish, write_jsonl, write_recipe
from infinstruct import pipeline
from infinstruct.release.parts import ReleasePartError, sha256_file
from infinstruct.store.run_report import run_release
from infinstruct.store.run_status import last_runs

ROWS = [{"instruction": f"Task {i}?", "input": "", "output": f"Done {i}."} for i in range(4)]


def release(recipe, out) -> dict:
    run_id = f"export-{uuid.uuid4().hex[:8]}"
    pipeline.start_run(run_id, recipe)
    for part in pipeline.plan(run_id):
        pipeline.ingest_partition(run_id, part)
    pipeline.deduplicate(run_id)
    result = publish(run_id, out)
    return {
        **result,
        "manifest": json.loads((out / recipe.stem / f"v{result['version']:04d}" / "manifest.json").read_text()),
    }


def test_versions_and_diffs(engine, tmp_path):
    source = write_jsonl(tmp_path / "a.jsonl", ROWS)
    recipe = write_recipe(
        tmp_path, f"rel-{uuid.uuid4().hex[:6]}", [{"name": "a", "path": "a.jsonl", "format": "alpaca"}]
    )
    out = tmp_path / "out"

    first = release(recipe, out)
    assert first["version"] == 1 and first["manifest"]["diff"]["added"] == 4

    again = release(recipe, out)
    assert again["version"] == 1 and again["manifest"]["content_hash"] == first["manifest"]["content_hash"]
    # both runs made v0001: each one's page and `status` still show it
    for made in (first, again):
        assert run_release(engine, made["manifest"]["run_id"])["version"] == 1
    assert [r["version"] for r in last_runs(engine, recipe.stem)] == [1, 1]

    write_jsonl(source, ROWS + [{"instruction": "Task new?", "input": "", "output": "Done new."}])
    grown = release(recipe, out)
    assert grown["version"] == 2
    assert grown["manifest"]["diff"] == {"previous_version": 1, "added": 1, "removed": 0, "unchanged": 4}
    assert (out / recipe.stem / "LATEST").read_text().strip() == "v0002"

    # someone else's v0003 in the same folder (another store) is never overwritten
    foreign = out / recipe.stem / "v0003"
    foreign.mkdir()
    (foreign / "manifest.json").write_text(json.dumps({"content_hash": "not-ours"}))
    write_jsonl(source, ROWS[:2])
    shrunk = release(recipe, out)
    assert shrunk["version"] == 4
    assert json.loads((foreign / "manifest.json").read_text()) == {"content_hash": "not-ours"}
    assert shrunk["manifest"]["diff"]["removed"] == 3


def test_a_nightly_release_writes_only_the_new_partitions_files(engine, tmp_path):
    """Release files are per partition: an added file's partition is written, the others are hard links to
    the files the last release already has; the manifest checksums every file and the diff counts ids."""
    write_jsonl(tmp_path / "a.jsonl", ROWS)
    recipe = write_recipe(
        tmp_path, f"rel-{uuid.uuid4().hex[:6]}", [{"name": "a", "path": "*.jsonl", "format": "alpaca"}]
    )
    out = tmp_path / "out"
    first = release(recipe, out)
    old_files = {name for name in first["manifest"]["files"] if name != "ledger.parquet"}
    assert {name.split("/")[0] for name in old_files} == {"data", "jsonl"}

    write_jsonl(tmp_path / "b.jsonl", [{"instruction": "Task new?", "input": "", "output": "Done new."}])
    run_id = f"export-{uuid.uuid4().hex[:8]}"
    pipeline.start_run(run_id, recipe)
    parts = pipeline.plan(run_id)
    for part in parts:
        pipeline.ingest_partition(run_id, part)
    pipeline.deduplicate(run_id)
    written = [pipeline.write_release_part(run_id, part, out)["written"] for part in parts]
    assert sorted(written) == [False, True]  # only the new file's partition
    pipeline.check_release(run_id)
    second = pipeline.export_release(run_id, out)

    v1, v2 = out / recipe.stem / "v0001", out / recipe.stem / "v0002"
    manifest = json.loads((v2 / "manifest.json").read_text())
    assert manifest["diff"] == {"previous_version": 1, "added": 1, "removed": 0, "unchanged": 4}
    for name in old_files:  # the same bytes on disk, not a copy
        assert (v2 / name).stat().st_ino == (v1 / name).stat().st_ino
    for name, file in manifest["files"].items():
        assert file["bytes"] == (v2 / name).stat().st_size and file["sha256"] == sha256_file(v2 / name)
    data = pd.read_parquet(v2 / "data")
    ledger = pd.read_parquet(v2 / "ledger.parquet")
    assert len(data) == second["totals"]["kept"] == 5
    assert sorted(data.id) == sorted(ledger[ledger.verdict == "kept"].record_id)
    assert ledger.file.str.endswith("b.jsonl").sum() == 1 and len(ledger) == 5


def test_export_refuses_parts_that_are_stale_or_not_validated(engine, tmp_path):
    write_jsonl(tmp_path / "a.jsonl", ROWS + [ROWS[0]])
    recipe = write_recipe(
        tmp_path, f"rel-{uuid.uuid4().hex[:6]}", [{"name": "a", "path": "a.jsonl", "format": "alpaca"}]
    )
    out = tmp_path / "out"
    run_id = f"export-{uuid.uuid4().hex[:8]}"
    pipeline.start_run(run_id, recipe)
    (part,) = pipeline.plan(run_id)
    pipeline.ingest_partition(run_id, part)
    pipeline.write_release_part(run_id, part, out)
    with pytest.raises(ReleasePartError, match="not validated by check_release"):
        pipeline.export_release(run_id, out)
    pipeline.deduplicate(run_id)  # new decisions: the part written before no longer matches
    with pytest.raises(ReleasePartError, match="run write_release_part"):
        pipeline.export_release(run_id, out)
    assert not list((out / recipe.stem).glob("v0*"))  # no release without its gate


def test_a_version_rewritten_is_never_missing_even_if_the_rewrite_is_cut_short(tmp_path):
    from infinstruct.release.assemble import replace_folder, restore_replaced

    dataset = tmp_path / "demo"
    (dataset / "v0001").mkdir(parents=True)
    (dataset / "v0001" / "manifest.json").write_text("old")
    staging = dataset / ".staging-x"
    staging.mkdir()
    (staging / "manifest.json").write_text("new")
    replace_folder(staging, dataset / "v0001")
    assert (dataset / "v0001" / "manifest.json").read_text() == "new" and sorted(p.name for p in dataset.iterdir()) == [
        "v0001"
    ]
    # a crash between moving the old folder aside and moving the new one in: the next export puts it back
    (dataset / "v0001").rename(dataset / ".replaced-v0001")
    restore_replaced(dataset)
    assert (dataset / "v0001" / "manifest.json").read_text() == "new"
    # a crash after the new one is in place: the old one left aside is deleted
    (dataset / ".replaced-v0001").mkdir()
    restore_replaced(dataset)
    assert sorted(p.name for p in dataset.iterdir()) == ["v0001"]


def test_the_recipe_chooses_the_record_formats_and_every_format_holds_the_same_records(engine, tmp_path):
    """Record writers sit behind one seam (release/writers.py): the recipe's `release.formats` says which
    files a release holds; Parquet is required (the card's load_dataset config and Phase 2 read it)."""
    import pyarrow.parquet as pq
    from pydantic import ValidationError

    from infinstruct.release.writers import ReleaseSettings

    write_jsonl(tmp_path / "a.jsonl", ROWS)
    both = write_recipe(tmp_path, f"fmt-{uuid.uuid4().hex[:6]}", [{"name": "a", "path": "a.jsonl", "format": "alpaca"}])
    folder = tmp_path / "out" / both.stem / "v0001"
    release(both, tmp_path / "out")
    [parquet], [jsonl] = list((folder / "data").glob("*.parquet")), list((folder / "jsonl").glob("*.jsonl"))
    as_json = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert pq.read_table(parquet).to_pylist() == as_json and len(as_json) == len(ROWS)

    only = write_recipe(
        tmp_path,
        f"fmt-{uuid.uuid4().hex[:6]}",
        [{"name": "a", "path": "a.jsonl", "format": "alpaca"}],
        release={"formats": ["parquet"]},
    )
    result = release(only, tmp_path / "out")
    folder = tmp_path / "out" / only.stem / "v0001"
    assert not (folder / "jsonl").exists() and len(list((folder / "data").glob("*.parquet"))) == 1
    assert not any(name.startswith("jsonl/") for name in result["manifest"]["files"])
    with pytest.raises(ValidationError, match="parquet is required"):
        ReleaseSettings(formats=["jsonl"])


def test_the_card_orders_tied_rows_the_same_way_in_every_process():
    """A set's iteration order depends on the process's string hashing: the card must not."""
    import subprocess
    import sys

    code = (
        "from infinstruct.release.card import _mix;"
        "c = {'before': {'language': {k: {'count': 1, 'share': .1} for k in 'zh ja ko fr de es it'.split()}},"
        " 'after': {'language': {k: {'count': 1, 'share': .1} for k in 'zh ja ko fr de es it'.split()}}};"
        "print(_mix(c, 'language'))"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": str(seed), "PATH": "/usr/bin:/bin"},
        ).stdout
        for seed in range(6)
    }
    assert len(outputs) == 1
