"""Faults a nightly job meets, survived: `infinstruct run` killed with SIGKILL at a moment of the run, then
run again, gives the release a clean run gives (the same records, byte for byte, and the same ledger rows).

Each killed run holds its dataset's run lease when it dies; the next run takes it over once it is stale
(INFINSTRUCT_RUN_LOCK_STALE, a few seconds here).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from conftest import sample_recipe

LEDGER_SAME = [
    "source",
    "line",
    "record_id",
    "verdict",
    "stage",
    "reason",
    "score",
    "duplicate_of",
    "detail",
    "representative",
]  # the file path, partition and run ids name the run, not its outcome


def start(recipe: Path, out: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "INFINSTRUCT_RUN_LOCK_STALE": "3",
        "INFINSTRUCT_RUN_LOCK_POLL": "1",
        "INFINSTRUCT_RUN_LOCK_BEAT": "1",
    }
    code = f"import sys; from infinstruct.cli import main; sys.exit(main(['run', '--recipe', {str(recipe)!r}, '--out', {str(out)!r}]))"
    return subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def release(out: Path, dataset: str) -> tuple[dict[str, str], pd.DataFrame]:
    folder = out / dataset / (out / dataset / "LATEST").read_text().strip()
    import hashlib

    records = {
        p.name.split("-", 1)[0] + "/" + hashlib.sha256(p.read_bytes()).hexdigest()
        for p in (folder / "data").glob("*.parquet")
    }
    ledger = (
        pd.read_parquet(folder / "ledger.parquet")[LEDGER_SAME].sort_values(["source", "line"]).reset_index(drop=True)
    )
    return records, ledger


def write(tmp_path: Path, name: str) -> Path:
    import yaml

    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**sample_recipe(name), "synthesis": None}))
    return path


MOMENTS = {  # a query that turns true at the moment to kill the run
    "during ingest": "select count(*) > 0 from records r join partitions p using (partition_id) where p.dataset = :d",
    "while writing the release parts": "select count(*) > 0 from release_parts where dataset = :d",
}


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_a_run_killed_then_run_again_gives_the_release_of_a_clean_run(airflow_home, engine, tmp_path, moment):
    clean_name, killed_name = f"clean-{uuid.uuid4().hex[:6]}", f"killed-{uuid.uuid4().hex[:6]}"
    clean = start(write(tmp_path, clean_name), tmp_path / "clean")
    assert clean.wait(timeout=900) == 0

    recipe = write(tmp_path, killed_name)
    victim = start(recipe, tmp_path / "killed")
    deadline = time.monotonic() + 600
    with engine.connect() as conn:
        while not conn.execute(sa.text(MOMENTS[moment]), {"d": killed_name}).scalar():
            assert victim.poll() is None, "the run ended before the moment came"
            assert time.monotonic() < deadline
            time.sleep(0.2)
            conn.rollback()
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()

    assert start(recipe, tmp_path / "killed").wait(timeout=900) == 0
    clean_records, clean_ledger = release(tmp_path / "clean", clean_name)
    records, ledger = release(tmp_path / "killed", killed_name)
    assert records == clean_records
    pd.testing.assert_frame_equal(ledger, clean_ledger)
