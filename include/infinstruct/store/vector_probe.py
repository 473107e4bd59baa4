"""Does pgvector really work on this server? Proven once per server start, before anything relies on it.

A pgvector built for another CPU (AVX-512 code on an AVX2-only machine) passes `create extension` and
short vectors, then kills its backend with SIGILL on the first real distance or HNSW build, and
PostgreSQL answers a killed backend by resetting every connection, other tasks' too. So the real
work is done once first, in a throwaway database: a 384-dimension distance and a small HNSW index,
searched. The answer is kept per server start (`vector_support`, keyed by pg_postmaster_start_time),
so every task process of every run reads it instead of probing again; a restarted server probes again.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import platform
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)

PROBE_DATABASE = "infinstruct_vector_probe"
PROBE_LOCK = 72_114_2002  # advisory lock id: one process probes, the others wait for its answer
DIM = 384  # MiniLM's size: long enough to reach pgvector's vectorised loops

# (what it shows, SQL): every kind of vector work the pipeline does. The search must find the row it asks for.
PROBE_STEPS: tuple[tuple[str, str], ...] = (
    ("create extension vector", "create extension if not exists vector"),
    (
        "store 300 vectors of 384 dimensions",
        f"create table probe as select i as id, (select array_agg(random()) from generate_series(1, {DIM}) where i > 0)"
        f"::vector({DIM}) as v from generate_series(1, 300) i",
    ),  # `where i > 0`: a new random vector per row
    (
        "384-dimension cosine, L2 and inner-product distances",
        "select (a.v <=> b.v) + (a.v <-> b.v) + (a.v <#> b.v) from probe a, probe b where a.id = 1 and b.id = 2",
    ),
    ("build an HNSW index (vector_cosine_ops)", "create index on probe using hnsw (v vector_cosine_ops)"),
    ("search the HNSW index", "select id from probe order by v <=> (select v from probe where id = 7) limit 1"),
)


class VectorProbeError(RuntimeError):
    """The server could not be reached again after the probe."""


@dataclass(frozen=True)
class VectorSupport:
    """Whether pgvector works on the server started at `server_started_at`, and what showed it."""

    ok: bool
    detail: str
    server_started_at: datetime


def cpu_description() -> str:
    """This machine's CPU and its vector extensions, for messages (where the server is local, its CPU)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    if not flags:
        return model
    has = [f for f in ("avx2", "fma", "avx512f") if f in flags]
    lacks = [f for f in ("avx2", "avx512f") if f not in flags]
    return f"{model} ({', '.join(has) or 'no AVX2'}" + (f"; no {', '.join(lacks)}" if lacks else "") + ")"


def vector_support(engine: Engine) -> VectorSupport:
    """Whether the vector extension works on `engine`'s server: remembered for this server start, else
    probed now (one process at a time). Call it before opening the transaction that will use pgvector."""
    for attempt in range(3):
        try:
            return _remembered_or_probed(engine)
        except sa.exc.OperationalError:
            if attempt == 2:
                raise
            # a backend crashed (the probe, in another process) and the server is resetting: ask again
            _wait_for_server(engine)
    raise AssertionError("unreachable")


def _probe_version() -> str:
    return hashlib.sha256(repr(PROBE_STEPS).encode()).hexdigest()[:12]


def _remembered(conn: sa.Connection) -> VectorSupport | None:
    row = conn.execute(
        sa.text(
            "select ok, detail, server_started_at from vector_support"
            " where server_started_at = pg_postmaster_start_time() and probe = :p"
        ),
        {"p": _probe_version()},
    ).first()
    return VectorSupport(row.ok, row.detail, row.server_started_at) if row else None


def _remembered_or_probed(engine: Engine) -> VectorSupport:
    with engine.connect() as conn:
        found = _remembered(conn)
    if found is None:
        with engine.connect() as lock:
            lock.execute(sa.text("select pg_advisory_lock(:k)"), {"k": PROBE_LOCK})
            lock.commit()
            try:
                found = _remembered(lock)
                lock.commit()
                if found is None:
                    found = _probe_and_remember(engine)
            finally:
                try:
                    lock.execute(sa.text("select pg_advisory_unlock(:k)"), {"k": PROBE_LOCK})
                    lock.commit()
                except sa.exc.OperationalError:  # the session died with a crashed probe: so did its lock
                    lock.invalidate()
    _warn_once(found)
    return found


def _probe_and_remember(engine: Engine) -> VectorSupport:
    ok, detail = probe(engine)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "insert into vector_support (server_started_at, probe, ok, detail, cpu)"
                " values (pg_postmaster_start_time(), :p, :ok, :d, :c) on conflict do nothing"
            ),
            {"p": _probe_version(), "ok": ok, "d": detail, "c": cpu_description()},
        )
        return _remembered(conn)


def probe(engine: Engine) -> tuple[bool, str]:
    """Run PROBE_STEPS on the server now: (works, what it showed or what failed). Never raises for a
    failing step, a crashed backend included (it waits for the server to recover)."""
    with engine.connect() as conn:
        version = conn.execute(
            sa.text("select default_version from pg_available_extensions where name = 'vector'")
        ).scalar()
    if version is None:
        return False, "this PostgreSQL has no pgvector extension (Debian: postgresql-NN-pgvector)"
    target, throwaway = _probe_engine(engine)
    step = "connect"
    try:
        with target.connect() as conn:
            if not throwaway:  # no right to create a database: in the project's, rolled back
                conn.execute(sa.text("create temp table probe_marker ()"))
            for step, sql in PROBE_STEPS:
                if not throwaway and sql.startswith("create table probe "):
                    sql = sql.replace("create table", "create temp table", 1)
                result = conn.execute(sa.text(sql))
                result = result.first() if result.returns_rows else None
                if step == "search the HNSW index" and result != (7,):
                    return False, f"pgvector {version}: {step}: the nearest row of row 7 came back as {result}"
            conn.rollback()
    except sa.exc.DBAPIError as exc:
        crashed = exc.connection_invalidated
        message = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
        if crashed:
            _wait_for_server(engine)
            message = (
                f"the server process died ({message}); a pgvector built for another CPU "
                "(e.g. AVX-512 code on an AVX2-only machine) dies this way"
            )
        return False, f"pgvector {version}: {step}: {message}"
    finally:
        target.dispose()
        if throwaway:
            _drop_probe_database(engine)
    return True, f"pgvector {version}: 384-dimension distances and an HNSW index built and searched"


def _probe_engine(engine: Engine) -> tuple[Engine, bool]:
    """An engine on a fresh throwaway database, or on the project's own where creating one is not allowed."""
    try:
        _drop_probe_database(engine)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text(f"create database {PROBE_DATABASE}"))
        return sa.create_engine(engine.url.set(database=PROBE_DATABASE), poolclass=NullPool), True
    except sa.exc.ProgrammingError as exc:  # insufficient privilege
        log.info(
            "cannot create a throwaway database for the pgvector probe (%s): probing in a rolled-back "
            "transaction instead",
            str(exc.orig).strip(),
        )
        return sa.create_engine(engine.url, poolclass=NullPool), False


def _drop_probe_database(engine: Engine) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text(f"drop database if exists {PROBE_DATABASE} with (force)"))


def _wait_for_server(engine: Engine, timeout: float = 120.0) -> None:
    """After a backend crash PostgreSQL resets and replays its log: wait until it accepts connections."""
    engine.dispose()  # every pooled connection died with the reset
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("select 1"))
            return
        except sa.exc.OperationalError as exc:  # "the database system is in recovery mode", refused, ...
            last = exc
            time.sleep(0.5)
    raise VectorProbeError(
        f"the database server did not come back within {timeout:.0f} s of the pgvector probe: {last}"
    )


@functools.cache
def _warn_once_for(ok: bool, detail: str, started: datetime) -> None:
    if ok:
        log.info("pgvector works on this server: %s", detail)
    else:
        log.warning(
            "pgvector does not work on this server: %s. CPU: %s. Semantic dedup and selection search "
            "exactly, in memory (no approximation; slower past a few hundred thousand records); "
            "a recipe with index: pgvector fails until it works",
            detail,
            cpu_description(),
        )


def _warn_once(support: VectorSupport) -> None:
    _warn_once_for(support.ok, support.detail, support.server_started_at)
