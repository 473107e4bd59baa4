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

from conftest import release_outcome, write_sample_recipe


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


MOMENTS = {  # a query that turns true at the moment to kill the run
    "during ingest": "select count(*) > 0 from records r join partitions p using (partition_id) where p.dataset = :d",
    "while writing the release parts": "select count(*) > 0 from release_parts where dataset = :d",
}


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_a_run_killed_then_run_again_gives_the_release_of_a_clean_run(airflow_home, engine, tmp_path, moment):
    clean_name, killed_name = f"clean-{uuid.uuid4().hex[:6]}", f"killed-{uuid.uuid4().hex[:6]}"
    clean = start(write_sample_recipe(tmp_path, clean_name), tmp_path / "clean")
    assert clean.wait(timeout=900) == 0

    recipe = write_sample_recipe(tmp_path, killed_name)
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
    clean_records, clean_ledger = release_outcome(tmp_path / "clean", clean_name)
    records, ledger = release_outcome(tmp_path / "killed", killed_name)
    assert records == clean_records
    pd.testing.assert_frame_equal(ledger, clean_ledger)
