"""Release versions: unchanged content keeps its version, new content gets the next one, and a release
folder is never overwritten by different content."""
from __future__ import annotations

import json
import uuid

from conftest import write_jsonl, write_recipe
from infinstruct import pipeline

ROWS = [{"instruction": f"Task {i}?", "input": "", "output": f"Done {i}."} for i in range(4)]


def release(recipe, out) -> dict:
    run_id = f"export-{uuid.uuid4().hex[:8]}"
    pipeline.start_run(run_id, recipe)
    for part in pipeline.plan(run_id):
        pipeline.ingest_partition(run_id, part)
    pipeline.deduplicate(run_id)
    pipeline.check_release(run_id)
    result = pipeline.export_release(run_id, out)
    return {**result, "manifest": json.loads((out / recipe.stem / f"v{result['version']:04d}" / "manifest.json").read_text())}


def test_versions_and_diffs(engine, tmp_path):
    source = write_jsonl(tmp_path / "a.jsonl", ROWS)
    recipe = write_recipe(tmp_path, f"rel-{uuid.uuid4().hex[:6]}", [{"name": "a", "path": "a.jsonl", "format": "alpaca"}])
    out = tmp_path / "out"

    first = release(recipe, out)
    assert first["version"] == 1 and first["manifest"]["diff"]["added"] == 4

    again = release(recipe, out)
    assert again["version"] == 1 and again["manifest"]["content_hash"] == first["manifest"]["content_hash"]

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
