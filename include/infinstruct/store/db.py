"""The metadata store: engine, versioned migrations.

Migrations are numbered SQL files in `migrations/` (NNNN_name.sql), applied in order inside one
transaction each, under an advisory lock so concurrent task processes never race, and recorded in
`schema_migrations`. Add a new file for every change; never edit an applied one.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from importlib import resources
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Engine

from infinstruct.store.database_url import database_url
from infinstruct.store.embedded_server import EmbeddedServerError

log = logging.getLogger(__name__)
MIGRATION_LOCK = 72_114_2001  # arbitrary constant: the advisory lock id for migrations


@functools.cache
def _migrated_engine(url: str) -> Engine:
    engine = sa.create_engine(url, pool_pre_ping=True)
    migrate(engine)
    return engine


def get_engine(url: str | None = None) -> Engine:
    """An engine on the configured (or embedded) database, migrated to the latest schema once per process."""
    return _migrated_engine(database_url(url))


Step = TypeVar("Step", bound=Callable[..., None])


def logged_if_store_unreachable(step: Step) -> Step:
    """For a step that records a failure (`mark_failed`): a metadata store that cannot be reached (the embedded
    server dead and not restartable, a configured server down) is logged, not raised. Raising there would only
    hide the failure being recorded (in the DAG's failure callback, in the CLI's exit); the run's row stays
    `running` until a retry of the run records its end."""

    @functools.wraps(step)
    def recorded(*args, **kwargs):
        try:
            return step(*args, **kwargs)
        except (sa.exc.OperationalError, sa.exc.InterfaceError, EmbeddedServerError) as exc:
            log.error(
                "%s%r: the metadata store could not be reached, so this was not recorded (a retry of the run "
                "records its end): %s",
                step.__name__,
                args,
                exc,
            )
            return None

    return recorded  # type: ignore[return-value]


# Core table handles for the queries that are built rather than written (columns used in queries only).
metadata = sa.MetaData()
records = sa.Table(
    "records",
    metadata,
    sa.Column("partition_id", sa.Text),
    sa.Column("line_no", sa.BigInteger),
    sa.Column("record_id", sa.Text),
    sa.Column("instruction_key", sa.Text),
    sa.Column("source", sa.Text),
    sa.Column("conversation", sa.JSON),
    sa.Column("role_pattern", sa.Text),
    sa.Column("min_turn_chars", sa.Integer),
    sa.Column("total_chars", sa.Integer),
)
decisions = sa.Table(
    "decisions",
    metadata,
    sa.Column("partition_id", sa.Text),
    sa.Column("line_no", sa.BigInteger),
    sa.Column("stage", sa.Text),
    sa.Column("verdict", sa.Text),
    sa.Column("reason", sa.Text),
    sa.Column("score", sa.Float),
    sa.Column("duplicate_of", sa.Text),
    sa.Column("detail", sa.Text),
    sa.Column("run_id", sa.Text),
    sa.Column("decided_at", sa.DateTime),
)
quarantine = sa.Table(
    "quarantine",
    metadata,
    sa.Column("partition_id", sa.Text),
    sa.Column("line_no", sa.BigInteger),
    sa.Column("source", sa.Text),
    sa.Column("reason", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("excerpt", sa.Text),
)
partitions = sa.Table(
    "partitions",
    metadata,
    sa.Column("partition_id", sa.Text),
    sa.Column("source", sa.Text),
    sa.Column("path", sa.Text),
    sa.Column("shard", sa.Integer),
    sa.Column("lines", sa.BigInteger),
    sa.Column("run_id", sa.Text),
)
run_partitions = sa.Table("run_partitions", metadata, sa.Column("run_id", sa.Text), sa.Column("partition_id", sa.Text))
record_stats = sa.Table("record_stats", metadata, sa.Column("record_id", sa.Text), sa.Column("stats", JSONB))
contamination = sa.Table(
    "contamination",
    metadata,
    sa.Column("partition_id", sa.Text),
    sa.Column("line_no", sa.BigInteger),
    sa.Column("benchmark", sa.Text),
    sa.Column("item_id", sa.Text),
)


def refresh_statistics(engine: Engine, *tables: str) -> None:
    """ANALYZE tables a stage just bulk-loaded: the planner's estimates of a table it has no statistics
    for (autovacuum lags behind bulk loads, or is off) turn index lookups into scans per row."""
    with engine.begin() as conn:
        for table in tables:
            if not re.fullmatch(r"[a-z_][a-z0-9_]*", table):  # a raise, not an assert: asserts vanish under -O
                raise ValueError(f"table name must be a plain lower-case identifier, got {table!r}")
            conn.execute(sa.text(f"analyze {table}"))


def literal_sql(query: sa.Select, engine: Engine) -> str:
    """A built query as one SQL string with safely quoted literals, for tools that take SQL text (GX)."""
    return str(query.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) for every migration shipped with the package, in order."""
    found = []
    for entry in resources.files("infinstruct.store.migrations").iterdir():
        match = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if match:
            found.append((int(match[1]), match[2], entry.read_text()))
    return sorted(found)


def migrate(engine: Engine) -> list[int]:
    """Apply pending migrations; returns the versions applied now (empty when up to date)."""
    applied_now = []
    with engine.begin() as conn:
        conn.execute(sa.text("select pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
        conn.execute(
            sa.text(
                "create table if not exists schema_migrations ("
                " version integer primary key, name text not null, applied_at timestamptz not null default now())"
            )
        )
        done = set(conn.execute(sa.text("select version from schema_migrations")).scalars())
        for version, name, sql in migrations():
            if version in done:
                continue
            conn.connection.dbapi_connection.cursor().execute(sql)  # no parameters: a literal % stays literal
            conn.execute(
                sa.text("insert into schema_migrations (version, name) values (:v, :n)"), {"v": version, "n": name}
            )
            applied_now.append(version)
    return applied_now


def schema_version(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text("select coalesce(max(version), 0) from schema_migrations")).scalar_one()
