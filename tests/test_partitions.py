"""Date partitions: a nightly run, and a backfill of a past night, read the sources' `{partition}` folders up
to the night's key, so backfilling a night reproduces the release that night made.

The key comes from the run: a scheduled or backfilled run of the curation DAG carries its night's date
(`CronPartitionTimetable`, `partition_key`), a manual one the `partition` param (`infinstruct run
--partition`); a run without one reads every partition.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

import pytest

from conftest import write_jsonl, write_recipe
from infinstruct.cli import main

NIGHTS = {
    "2026-12-01": ["Explain how tides work in two sentences.", "List three uses of vinegar at home."],
    "2026-12-02": ["Give me a haiku about the first snow of winter.", "What is the boiling point of water on Everest?"],
}


def manifest(out, dataset: str, version: int) -> dict:
    return json.loads((out / dataset / f"v{version:04d}" / "manifest.json").read_text())


def test_a_backfill_of_a_night_reproduces_that_nights_release(airflow_home, tmp_path):
    for night, questions in NIGHTS.items():
        (tmp_path / "incoming" / night).mkdir(parents=True)
        write_jsonl(
            tmp_path / "incoming" / night / "chat.jsonl",
            [{"instruction": q, "input": "", "output": f"A careful answer to: {q}"} for q in questions],
        )
    name = f"nightly-{uuid.uuid4().hex[:6]}"
    recipe = write_recipe(
        tmp_path, name, [{"name": "chat", "path": "incoming/{partition}/*.jsonl", "format": "alpaca"}]
    )
    out = tmp_path / "out"

    for night in NIGHTS:  # the two nights, as the schedule runs them
        assert main(["run", "--recipe", str(recipe), "--out", str(out), "--partition", night]) == 0
    first, second = manifest(out, name, 1), manifest(out, name, 2)
    assert (first["totals"]["lines"], second["totals"]["lines"]) == (2, 4)  # night 2 holds both nights' files
    assert (first["partition"], second["partition"]) == tuple(NIGHTS)  # which night each version is

    assert main(["run", "--recipe", str(recipe), "--out", str(out), "--partition", "2026-12-01"]) == 0  # backfill
    again = manifest(out, name, 3)
    assert again["totals"] == first["totals"] and again["content_hash"] == first["content_hash"]
    assert sorted(again["files"]) == sorted(first["files"])
    assert [again["files"][f]["sha256"] for f in sorted(again["files"]) if f.startswith("data/")] == [
        first["files"][f]["sha256"] for f in sorted(first["files"]) if f.startswith("data/")
    ]


def test_a_bad_partition_key_fails_the_run_at_start(airflow_home, tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Hi?", "input": "", "output": "Hello."}])
    recipe = write_recipe(
        tmp_path, f"key-{uuid.uuid4().hex[:6]}", [{"name": "a", "path": "a.jsonl", "format": "alpaca"}]
    )
    assert main(["run", "--recipe", str(recipe), "--out", str(tmp_path / "out"), "--partition", "../2026"]) == 1


def test_the_nightly_schedule_gives_each_run_the_night_before_as_its_partition_key(airflow_home):
    """A run at 02:00 processes the night before; a backfill computes the key of each night the same way."""
    import infinstruct_tasks
    from airflow.dag_processing.dagbag import DagBag

    from conftest import ROOT

    dag = DagBag(dag_folder=str(ROOT / "dags")).dags["infinstruct_curation"]
    from airflow.serialization.decoders import decode_timetable
    from airflow.serialization.encoders import encode_timetable
    from airflow.timetables.base import TimeRestriction

    timetable = decode_timetable(encode_timetable(dag.timetable))  # as the scheduler holds it
    scheduled = timetable.next_dagrun_info_v2(
        last_dagrun_info=None,
        restriction=TimeRestriction(earliest=datetime(2026, 12, 2, 1, tzinfo=timezone.utc), latest=None, catchup=True),
    )
    assert (scheduled.run_after.isoformat(), scheduled.partition_key) == ("2026-12-02T02:00:00+00:00", "2026-12-01")
    backfill = timetable.iter_partition_dagrun_infos(
        earliest=datetime(2026, 12, 1, tzinfo=timezone.utc), latest=datetime(2026, 12, 2, 23, 59, tzinfo=timezone.utc)
    )
    assert [i.partition_key for i in backfill] == ["2026-12-01", "2026-12-02"]
    # the run's key: the schedule's or backfill's, else the manual run's param, else none
    assert (
        infinstruct_tasks._run_partition({"partition_key": "2026-12-01", "params": {"partition": "x"}}) == "2026-12-01"
    )
    assert (
        infinstruct_tasks._run_partition({"partition_key": None, "params": {"partition": "2026-11-30"}}) == "2026-11-30"
    )
    assert infinstruct_tasks._run_partition({"params": {}}) is None


@pytest.fixture(autouse=True)
def _dags_on_path(monkeypatch):
    from conftest import ROOT

    monkeypatch.syspath_prepend(str(ROOT / "dags"))
