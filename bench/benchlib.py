"""What the benchmarks share: a throw-away embedded PostgreSQL and the facts about the machine."""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def temporary_database() -> Iterator[tuple[str, Path]]:
    """(URL, pgdata) of an embedded PostgreSQL in a temporary folder, stopped and removed afterwards.
    Also exported as INFINSTRUCT_DATABASE_URL: pipeline functions and worker processes use it."""
    tmp = Path(tempfile.mkdtemp(prefix="infinstruct-bench-"))
    os.environ.setdefault("XDG_RUNTIME_DIR", str(tmp))  # quiets platformdirs warnings (at import)
    from infinstruct.store.database_url import DATABASE_ENV, embedded_database_url
    from infinstruct.store.embedded_server import start_server

    server = start_server(tmp / "pgdata", cleanup_mode="delete")  # first handle: 'delete' wins
    try:
        url = embedded_database_url("bench", pgdata=tmp / "pgdata")
        os.environ[DATABASE_ENV] = url
        yield url, tmp / "pgdata"
    finally:
        server.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


def machine_facts(engine, **versions: str) -> dict[str, Any]:
    """Cores, CPU, memory, load, Python, library versions (plus `versions`) and the server's settings."""
    import psycopg2
    import sqlalchemy

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    mem_kb = next(int(ln.split()[1]) for ln in open("/proc/meminfo") if ln.startswith("MemTotal:"))
    out = {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "ram_gib": round(mem_kb / 2**20, 1),
        "load": " / ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        **versions,
        "sqlalchemy": sqlalchemy.__version__,
        "psycopg2": psycopg2.__version__.split()[0],
    }
    with engine.connect() as conn:
        pg = [
            conn.exec_driver_sql(q).scalar_one()
            for q in (
                "select version()",
                "show shared_buffers",
                "show work_mem",
                "show fsync",
                "show synchronous_commit",
            )
        ]
    return out | {
        "postgres": f"{pg[0].split(' on ')[0]}; shared_buffers {pg[1]}, work_mem {pg[2]}, fsync {pg[3]}, "
        f"synchronous_commit {pg[4]}"
    }


def table(header: list[str], rows: list[list]) -> None:
    """Print a Markdown table (integers with thousands separators) for bench/RESULTS.md."""
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(" ---: " if i else " --- " for i in range(len(header))) + "|")
    for row in rows:
        print("| " + " | ".join(f"{x:,}" if isinstance(x, int) else str(x) for x in row) + " |")
    print()
