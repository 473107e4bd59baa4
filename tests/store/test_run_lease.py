"""Runs of one dataset never overlap: the lease in `run_leases` (store/run_lease.py), as the DAG's tasks hold it.

Two runs started together: the second waits for the first (or, with no wait allowed, is refused with the
holder's name), never both inside; a holder killed mid-run is taken over once it stops heart-beating; other
datasets go on; releases exported by runs started together get distinct versions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest
import sqlalchemy as sa

from conftest import ROOT, publish, run_partitions, write_jsonl, write_recipe
from infinstruct import pipeline
from infinstruct.store import run_lease
from infinstruct.store.run_lease import DatasetBusy, LeaseSettings, task_lease

FAST = LeaseSettings(wait=30, poll=0.05, stale=60, beat=0.2)


def _name(prefix: str = "lease") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _release(engine, run_id: str, phase: str = "curation") -> None:
    with engine.begin() as conn:
        run_lease.release(conn, run_id, phase)


def _holder(engine, dataset: str) -> str | None:
    with engine.connect() as conn:
        return conn.execute(sa.text("select run_id from run_leases where dataset = :d"), {"d": dataset}).scalar()


def test_two_runs_of_one_dataset_started_together_never_overlap(engine):
    dataset, inside, spans, errors = _name(), [], {}, []
    start = threading.Barrier(3)

    def run(run_id: str) -> None:
        try:
            start.wait()
            with task_lease(engine, run_id, "curation", dataset, FAST):
                inside.append(run_id)
                assert len(inside) == 1, f"{inside} inside at once"
                began = time.monotonic()
                time.sleep(0.6)
                inside.remove(run_id)
                spans[run_id] = (began, time.monotonic())
                _release(engine, run_id)  # what the export (or mark_failed) does at the run's end
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(f"night-{i}",)) for i in (1, 2)]
    for thread in threads:
        thread.start()
    start.wait()
    for thread in threads:
        thread.join()
    assert errors == []
    (a_start, a_end), (b_start, b_end) = sorted(spans.values())
    assert a_end <= b_start, "the second run began before the first ended"
    assert _holder(engine, dataset) is None


def test_without_waiting_the_second_run_is_refused_naming_the_holder(engine):
    dataset = _name()
    with task_lease(engine, "first-run", "curation", dataset, FAST):
        with pytest.raises(DatasetBusy, match=r"'first-run' holds dataset"):
            run_lease.acquire(engine, dataset, "second-run", "curation", LeaseSettings(wait=0, poll=0.05))
        # the holder itself (a retried or later task of the same run) gets it at once
        run_lease.acquire(engine, dataset, "first-run", "curation", LeaseSettings(wait=0))
    _release(engine, "first-run")
    run_lease.acquire(engine, dataset, "second-run", "curation", LeaseSettings(wait=0))
    assert _holder(engine, dataset) == "second-run"


def test_a_bounded_wait_ends_with_the_holders_name(engine):
    dataset = _name()
    run_lease.acquire(engine, dataset, "long-run", "curation", FAST)
    began = time.monotonic()
    with pytest.raises(DatasetBusy, match="long-run"):
        run_lease.acquire(engine, dataset, "next-run", "curation", LeaseSettings(wait=0.5, poll=0.1))
    assert time.monotonic() - began >= 0.5


def test_different_datasets_do_not_block_each_other(engine):
    first, second = _name(), _name()
    with task_lease(engine, "run-a", "curation", first, FAST):
        run_lease.acquire(engine, second, "run-b", "curation", LeaseSettings(wait=0))
        # nor do Phase 1 and Phase 2 runs of one dataset: their releases are numbered apart
        run_lease.acquire(
            engine, run_lease.lease_name(first, "synthesis"), "synth-a", "synthesis", LeaseSettings(wait=0)
        )
    assert _holder(engine, second) == "run-b"
    assert _holder(engine, f"{first}/synthetic") == "synth-a"


def test_a_lease_whose_run_is_recorded_finished_is_taken_over(engine):
    dataset = _name()
    run_lease.acquire(engine, dataset, "crashed-run", "curation", FAST)
    with engine.begin() as conn:  # its run failed, but nothing released the lease (an older callback, a manual edit)
        conn.execute(
            sa.text(
                "insert into runs (run_id, dataset, recipe, recipe_hash, status) values"
                " ('crashed-run', :d, '{}'::jsonb, 'x', 'failed') on conflict (run_id) do update set status = 'failed'"
            ),
            {"d": dataset},
        )
    run_lease.acquire(engine, dataset, "next-run", "curation", LeaseSettings(wait=0))
    assert _holder(engine, dataset) == "next-run"


_HOLD_AND_HANG = """
import sys, time
from infinstruct.store.db import get_engine
from infinstruct.store.run_lease import LeaseSettings, task_lease
with task_lease(get_engine(), sys.argv[1], "curation", sys.argv[2], LeaseSettings(wait=5, poll=0.05, stale=60, beat=0.2)):
    print("holding", flush=True)
    time.sleep(600)
"""


def test_a_killed_holder_keeps_the_lease_while_it_beats_and_loses_it_once_silent(engine, database_url):
    """A task process killed mid-step (no callback, no release): its heartbeat stops and the next run takes
    over after `stale` seconds, not before, while a live holder's heartbeat keeps the lease however long its
    step runs."""
    dataset = _name()
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_AND_HANG, "killed-run", dataset],
        stdout=subprocess.PIPE,
        text=True,
        env={
            **os.environ,
            "INFINSTRUCT_DATABASE_URL": database_url,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "include"), os.environ.get("PYTHONPATH", "")]),
        },
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        time.sleep(1.5)  # longer than `stale` below: only the heartbeat keeps the lease
        with pytest.raises(DatasetBusy, match="killed-run"):
            run_lease.acquire(engine, dataset, "next-run", "curation", LeaseSettings(wait=0.3, poll=0.05, stale=1.0))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    began = time.monotonic()
    run_lease.acquire(engine, dataset, "next-run", "curation", LeaseSettings(wait=10, poll=0.05, stale=1.0))
    assert _holder(engine, dataset) == "next-run"
    assert time.monotonic() - began <= 5


def test_mark_failed_gives_the_dataset_to_the_next_run(engine, tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Task?", "input": "", "output": "Done."}])
    recipe = write_recipe(tmp_path, _name("fail"), [{"name": "a", "path": "a.jsonl", "format": "alpaca"}])
    run_id = _name("failing-run")
    with task_lease(engine, run_id, "curation", recipe.stem, FAST):
        pipeline.start_run(run_id, recipe)
    pipeline.mark_failed(run_id)
    assert _holder(engine, recipe.stem) is None
    # a task of that run cleared and re-run later takes the lease again, and its run counts as running again
    with task_lease(engine, run_id, "curation", None, FAST) as held:
        assert held == recipe.stem and _holder(engine, recipe.stem) == run_id
        with engine.connect() as conn:
            assert (
                conn.execute(sa.text("select status from runs where run_id = :r"), {"r": run_id}).scalar() == "running"
            )
    pipeline.mark_failed(run_id)


def test_a_release_is_numbered_only_by_the_lease_holder(engine):
    dataset = _name()
    run_lease.acquire(engine, dataset, "holder-run", "curation", FAST)
    with engine.begin() as conn, pytest.raises(DatasetBusy, match="'holder-run' holds the dataset"):
        run_lease.claim_for_release(conn, dataset, "other-run", "curation")
    with engine.begin() as conn:
        run_lease.claim_for_release(conn, dataset, "holder-run", "curation")


def _whole_run(engine, run_id: str, recipe, out, log: list) -> int:
    """Every step of a curation run, each under the run's lease as the DAG's tasks hold it."""

    def task(step, *args, first=False):
        with task_lease(engine, run_id, "curation", recipe.stem if first else None, FAST):
            log.append(("in", run_id))
            try:
                return step(*args)
            finally:
                log.append(("out", run_id))

    task(pipeline.start_run, run_id, recipe, first=True)
    for part in task(pipeline.plan, run_id):
        task(pipeline.ingest_partition, run_id, part)
    task(pipeline.deduplicate, run_id)
    return task(publish, run_id, out)["version"]


def test_runs_started_together_export_distinct_versions(engine, tmp_path):
    """Two nights of one dataset started at once (a backfill): one runs after the other, and their releases
    (different content: the second night's source grew) are versions 1 and 2, never the same number."""
    name, out = _name("nights"), tmp_path / "out"
    rows = [{"instruction": f"Task {i}?", "input": "", "output": f"Done {i}."} for i in range(3)]
    recipes = []
    for night, count in (("n1", 2), ("n2", 3)):
        folder = tmp_path / night
        folder.mkdir()
        write_jsonl(folder / "a.jsonl", rows[:count])
        recipes.append(write_recipe(folder, name, [{"name": "a", "path": "a.jsonl", "format": "alpaca"}]))
    log, versions, errors = [], {}, []

    def night(run_id, recipe):
        try:
            versions[run_id] = _whole_run(engine, run_id, recipe, out, log)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=night, args=(f"{name}-{r.parent.name}", r)) for r in recipes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(versions.values()) == [1, 2]
    first = log[0][1]  # the run that got the dataset first did all its tasks before the other's first
    switch = next(i for i, (_, run_id) in enumerate(log) if run_id != first)
    assert all(run_id == first for _, run_id in log[:switch]) and all(run_id != first for _, run_id in log[switch:])
    assert _holder(engine, name) is None
    manifests = [json.loads((out / name / f"v{v:04d}" / "manifest.json").read_text()) for v in (1, 2)]
    assert {m["run_id"] for m in manifests} == set(versions)
    assert run_partitions(first)


def test_the_cli_shows_and_frees_leases(engine, capsys):
    from infinstruct.cli import main

    dataset = _name()
    run_lease.acquire(engine, dataset, "cli-run", "curation", FAST)
    assert main(["leases"]) == 0
    shown = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {"dataset": dataset, "run_id": "cli-run", "phase": "curation"}.items() <= next(
        lease for lease in shown if lease["dataset"] == dataset
    ).items()
    assert main(["leases", "--release", dataset]) == 0
    assert "held by run cli-run" in capsys.readouterr().out
    assert _holder(engine, dataset) is None
