"""Start the embedded defaults when nothing is configured.

PostgreSQL: `INFINSTRUCT_DATABASE_URL` if set (or the Airflow connection `infinstruct_db` given as
`AIRFLOW_CONN_INFINSTRUCT_DB`), else the embedded PostgreSQL (`embedded_server`: PostgreSQL 18
with pgvector and pg_trgm) under `<INFINSTRUCT_HOME>/pgdata`, reached over a Unix socket.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from infinstruct.config import infinstruct_home

log = logging.getLogger(__name__)

DATABASE_ENV = "INFINSTRUCT_DATABASE_URL"
AIRFLOW_CONNECTION_ENV = "AIRFLOW_CONN_INFINSTRUCT_DB"  # an Airflow connection `infinstruct_db` given as a URI
EMBEDDED_DB_NAME = "infinstruct"


def database_url(explicit: str | None = None) -> str:
    """The SQLAlchemy URL of the project's metadata store, starting the embedded server if needed."""
    url = explicit or os.environ.get(DATABASE_ENV) or os.environ.get(AIRFLOW_CONNECTION_ENV)
    if url:
        return normalise_url(url)
    return embedded_database_url(EMBEDDED_DB_NAME)


def normalise_url(url: str) -> str:
    """Accept libpq/Airflow-style URLs (postgres://, postgresql://) and use the psycopg2 driver."""
    return re.sub(r"^(postgres|postgresql)(\+\w+)?://", "postgresql+psycopg2://", url)


def embedded_database_url(dbname: str, pgdata: Path | None = None) -> str:
    """Start (or attach to) the embedded PostgreSQL and make sure database `dbname` exists.

    The database is created under the data directory's setup lock: two first runs would otherwise both see
    it missing and one fail on `create database`."""
    from infinstruct.setup_lock import setup_lock
    from infinstruct.store.embedded_server import lock_file, start_server

    pgdata = pgdata or infinstruct_home() / "pgdata"
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", dbname):
        raise ValueError(f"embedded database name must be a plain identifier, got {dbname!r}")
    server = start_server(pgdata)
    exists = f"select 1 from pg_database where datname = '{dbname}';"
    if "1 row" not in server.psql(exists):
        with setup_lock(lock_file(pgdata), f"the embedded PostgreSQL at {pgdata}"):
            if "1 row" not in server.psql(exists):
                log.info("creating database %s in embedded PostgreSQL at %s", dbname, pgdata)
                server.psql(f"create database {dbname};")
    return normalise_url(server.get_uri(dbname))
