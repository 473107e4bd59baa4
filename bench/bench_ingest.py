"""Benchmark: ingest speed of a JSONL pool into PostgreSQL, against a pandas baseline.

    python bench/bench_ingest.py [-n 100000] [--seed 0] [--repeat 3] [--profile]

One run, on one generated file (bench/out/, gitignored), measures:

a. infinstruct: `ingest.ingest_partition(..., force=True)` of the whole file as one partition,
   `--repeat` times (each a forced re-ingest: delete the partition's rows, COPY them again);
b. baseline: `pandas.read_json(lines=True)` + `DataFrame.to_sql` into a plain table of the same
   database, with method=None (executemany) and method="multi" (chunksize 1000). pandas cannot read
   invalid JSON lines, so it reads a copy of the file without them (prepared before timing);
c. where the time goes: the Python side of ingest alone, without a database (reading lines,
   json.loads, `ingest.parse_item`, and parse_item + the CSV rows ingest sends to COPY), and the
   server side alone (COPY of the prepared CSV into tables with the store's schema, from a plain
   table up to the real `records` table with its keys and indexes).

The database is INFINSTRUCT_DATABASE_URL when set, else an embedded PostgreSQL started in a temporary
folder and removed at the end. This is a benchmark, not a test: nothing is asserted about time.
Prints a Markdown report (machine, table, breakdown) and writes it with the raw numbers to bench/out/.
"""
from __future__ import annotations

import argparse
import cProfile
import csv
import datetime as dt
import io
import json
import logging
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
sys.path.insert(0, str(HERE))

from generate_pool import generate  # noqa: E402

DATASET = "bench_ingest"
SOURCE = "pool"
PANDAS_TABLE = "bench_pandas_alpaca"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def best_and_median(seconds: list[float]) -> tuple[float, float]:
    return min(seconds), statistics.median(seconds)


# --- database ---------------------------------------------------------------------------------

@contextmanager
def database() -> Iterator[tuple[str, str]]:
    """(SQLAlchemy URL, description); INFINSTRUCT_DATABASE_URL or a throwaway embedded server."""
    from infinstruct.runtime import DATABASE_ENV, embedded_database_url, normalise_url

    url = os.environ.get(DATABASE_ENV)
    if url:
        yield normalise_url(url), "INFINSTRUCT_DATABASE_URL"
        return
    import pgserver

    tmp = Path(tempfile.mkdtemp(prefix="infinstruct-bench-"))
    os.environ.setdefault("XDG_RUNTIME_DIR", str(tmp))  # quiets platformdirs warnings from pgserver
    # registered first with cleanup 'delete', so embedded_database_url attaches to this handle
    server = pgserver.get_server(tmp / "pgdata", cleanup_mode="delete")
    try:
        url = embedded_database_url("bench", pgdata=tmp / "pgdata")
        os.environ[DATABASE_ENV] = url  # pipeline functions call db.get_engine() without a URL
        yield url, "embedded (pgserver, Unix socket, temporary folder)"
    finally:
        os.environ.pop(DATABASE_ENV, None)
        server.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


def pg_facts(engine) -> dict[str, str]:
    import sqlalchemy as sa

    facts = {}
    with engine.connect() as conn:
        facts["version"] = conn.execute(sa.text("select version()")).scalar_one()
        for name in ("shared_buffers", "fsync", "synchronous_commit", "wal_level", "max_wal_size"):
            facts[name] = conn.execute(sa.text(f"show {name}")).scalar_one()
    return facts


# --- machine ----------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    import pandas
    import psycopg2
    import sqlalchemy

    return {
        "date": subprocess.run(["date"], capture_output=True, text=True).stdout.strip(),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "ram_gib": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "load_avg_at_start": tuple(round(x, 2) for x in os.getloadavg()),
        "pandas": pandas.__version__, "sqlalchemy": sqlalchemy.__version__, "psycopg2": psycopg2.__version__.split()[0],
    }


# --- data -------------------------------------------------------------------------------------

def prepare_pool(n: int, seed: int) -> tuple[Path, Path, dict[str, int], float]:
    """The pool file, a copy without invalid-JSON lines (for pandas), the planted counts, generation seconds."""
    OUT.mkdir(parents=True, exist_ok=True)
    pool = OUT / f"pool_alpaca_{n}_seed{seed}.jsonl"
    gen_s, counts = timed(lambda: generate(pool, n, seed, "alpaca"))
    valid = OUT / f"pool_alpaca_{n}_seed{seed}.valid-json.jsonl"
    with open(pool, "rb") as src, open(valid, "wb") as dst:
        for line in src:
            try:
                json.loads(line)
            except ValueError:
                continue
            dst.write(line)
    return pool, valid, counts, gen_s


def write_recipe(pool: Path):
    """A recipe with the pool as one alpaca source in one partition; returns (Recipe, YAML path)."""
    import yaml
    from infinstruct.config import parse_recipe

    raw = {"name": DATASET, "description": "ingest benchmark", "sources": [{"name": SOURCE, "path": str(pool), "format": "alpaca"}],
           "ingest": {"shard_lines": 1_000_000}}
    recipe = parse_recipe(raw, base_dir=OUT, origin="bench recipe")
    path = OUT / "bench_ingest_recipe.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return recipe, path


# --- measurements -----------------------------------------------------------------------------

class _NullCursor:
    """Stands in for the database cursor: COPY buffers are built, then thrown away."""

    def copy_expert(self, sql, buffer) -> None:
        pass


def python_breakdown(part: dict, recipe, repeat: int) -> dict[str, float]:
    """Best seconds of each cumulative Python step of ingest over the partition, without a database."""
    from infinstruct import ingest
    from infinstruct.conversation import ConversationError
    from infinstruct.formats import mapper_for
    from infinstruct.readers import read_jsonl

    settings = recipe.ingest
    mapper = mapper_for(recipe.source(SOURCE))
    max_chars = settings.max_record_chars

    def items():
        return read_jsonl(part["path"], part["start_offset"], part["end_offset"], part["first_line"])

    def read_only():
        for _ in items():
            pass

    def json_loads():
        for _, item in items():
            try:
                json.loads(item)
            except ValueError:
                pass

    def parse_only():
        for _, item in items():
            try:
                ingest.parse_item(item, mapper, max_chars)
            except ConversationError:
                pass

    def parse_and_csv():  # the loop of ingest.ingest_partition, COPY replaced by nothing
        cursor = _NullCursor()
        records = ingest._CopyBuffer(cursor, "records", ingest.RECORD_COLUMNS, settings.batch_size)
        quarantine = ingest._CopyBuffer(cursor, "quarantine", ingest.QUARANTINE_COLUMNS, settings.batch_size)
        pid = part["partition_id"]
        for line_no, item in items():
            try:
                rec = ingest.parse_item(item, mapper, max_chars)
            except ConversationError as err:
                quarantine.add((pid, line_no, SOURCE, err.reason.code, err.detail, ingest.excerpt(item)))
                continue
            records.add((pid, line_no, rec.record_id, rec.instruction_key, SOURCE, rec.conversation_json,
                         rec.role_pattern, rec.min_turn_chars, rec.total_chars))
        records.flush()
        quarantine.flush()

    steps = {"read lines": read_only, "read + json.loads": json_loads, "read + parse_item": parse_only,
             "read + parse_item + CSV rows": parse_and_csv}
    out = {}
    for name, fn in steps.items():
        out[name] = min(timed(fn)[0] for _ in range(repeat))
        log(f"python only: {name}: {out[name]:.2f}s")
    return out


def records_csv(part: dict, recipe) -> tuple[list[str], int]:
    """The CSV batches ingest would COPY into records (as strings), and the row count."""
    from infinstruct import ingest
    from infinstruct.conversation import ConversationError
    from infinstruct.formats import mapper_for
    from infinstruct.readers import read_jsonl

    mapper, batch, pid = mapper_for(recipe.source(SOURCE)), recipe.ingest.batch_size, part["partition_id"]
    batches, buf, writer, pending, rows = [], None, None, batch, 0
    for line_no, item in read_jsonl(part["path"], part["start_offset"], part["end_offset"], part["first_line"]):
        try:
            rec = ingest.parse_item(item, mapper, recipe.ingest.max_record_chars)
        except ConversationError:
            continue
        if pending >= batch:
            if buf is not None:
                batches.append(buf.getvalue())
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_NONNUMERIC)
            pending = 0
        writer.writerow((pid, line_no, rec.record_id, rec.instruction_key, SOURCE, rec.conversation_json,
                         rec.role_pattern, rec.min_turn_chars, rec.total_chars))
        pending += 1
        rows += 1
    if buf is not None and pending:
        batches.append(buf.getvalue())
    return batches, rows


def server_breakdown(engine, part: dict, recipe, repeat: int) -> tuple[dict[str, float], int]:
    """Best seconds to COPY the prepared records CSV into tables with more and more of the store's schema."""
    import sqlalchemy as sa
    from infinstruct.ingest import RECORD_COLUMNS

    batches, rows = records_csv(part, recipe)
    copy_sql = "COPY {table} (" + ", ".join(RECORD_COLUMNS) + ") FROM STDIN WITH (FORMAT csv)"
    plain_cols = ("partition_id text not null, line_no bigint not null, record_id text not null, instruction_key text not null,"
                  " source text not null, conversation {conv} not null, role_pattern text not null,"
                  " min_turn_chars integer not null, total_chars integer not null, created_at timestamptz not null default now()")
    variants = {
        "plain table, conversation as text": ("text", []),
        "plain table, conversation as jsonb": ("jsonb", []),
        "+ primary key": ("jsonb", ["alter table {t} add primary key (partition_id, line_no)"]),
        "+ record_id, instruction_key indexes": ("jsonb", ["alter table {t} add primary key (partition_id, line_no)",
                                                           "create index on {t} (record_id)",
                                                           "create index on {t} (instruction_key)"]),
        "+ foreign key to partitions (= the records schema, empty table)": (
            "jsonb", ["alter table {t} add primary key (partition_id, line_no)", "create index on {t} (record_id)",
                      "create index on {t} (instruction_key)",
                      "alter table {t} add foreign key (partition_id) references partitions on delete cascade"]),
    }

    def copy_into(raw, table: str) -> None:
        cur = raw.cursor()
        for text in batches:
            cur.copy_expert(copy_sql.format(table=table), io.StringIO(text))

    out: dict[str, float] = {}
    for name, (conv, ddl) in variants.items():
        times = []
        for _ in range(repeat):
            with engine.begin() as conn:
                conn.execute(sa.text("drop table if exists bench_copy"))
                conn.execute(sa.text(f"create table bench_copy ({plain_cols.format(conv=conv)})"))
                for stmt in ddl:
                    conn.execute(sa.text(stmt.format(t="bench_copy")))
            with engine.begin() as conn:
                raw = conn.connection.dbapi_connection
                times.append(timed(lambda: copy_into(raw, "bench_copy"))[0])
        out[name] = min(times)
        log(f"server only: COPY {rows} rows, {name}: {out[name]:.2f}s")
    with engine.begin() as conn:
        conn.execute(sa.text("drop table if exists bench_copy"))

    # The real table (+ foreign key to partitions), as a forced re-ingest does it: delete the partition's rows, COPY.
    deletes, copies = [], []
    for _ in range(repeat):
        conn = engine.connect()
        trans = conn.begin()
        try:
            deletes.append(timed(lambda: conn.execute(sa.text("delete from records where partition_id = :p"),
                                                      {"p": part["partition_id"]}))[0])
            copies.append(timed(lambda: copy_into(conn.connection.dbapi_connection, "records"))[0])
        finally:
            trans.rollback()  # leave the ingested rows as they were
            conn.close()
    out["the real records table, after deleting the partition's previous rows in the same transaction"] = min(copies)
    out["(the delete of the partition's previous rows itself)"] = min(deletes)
    log(f"server only: real records table: COPY {min(copies):.2f}s, delete {min(deletes):.2f}s")
    return out, rows


def run_ingest(engine, recipe, run_id: str, partition_id: str, repeat: int) -> tuple[list[float], Any]:
    from infinstruct import ingest

    times, result = [], None
    for i in range(repeat):
        seconds, result = timed(lambda: ingest.ingest_partition(engine, recipe, run_id, partition_id, force=True))
        times.append(seconds)
        log(f"ingest_partition run {i + 1}: {seconds:.2f}s {result.as_dict()}")
    return times, result


def profile_ingest(engine, recipe, run_id: str, partition_id: str, top: int = 25) -> str:
    from infinstruct import ingest

    prof = cProfile.Profile()
    prof.enable()
    ingest.ingest_partition(engine, recipe, run_id, partition_id, force=True)
    prof.disable()
    text = io.StringIO()
    stats = pstats.Stats(prof, stream=text)
    stats.sort_stats("tottime").print_stats(top)
    return text.getvalue()


def run_pandas(engine, valid: Path, repeat: int) -> dict[str, dict[str, Any]]:
    import pandas as pd
    import sqlalchemy as sa

    out = {}
    for label, kwargs in (("to_sql method=None", {"method": None}), ("to_sql method=\"multi\", chunksize=1000",
                                                                    {"method": "multi", "chunksize": 1000})):
        reads, writes, rows = [], [], 0
        for _ in range(repeat):
            read_s, df = timed(lambda: pd.read_json(valid, lines=True))
            write_s, _ = timed(lambda: df.to_sql(PANDAS_TABLE, engine, if_exists="replace", index=False, **kwargs))
            rows = len(df)
            reads.append(read_s)
            writes.append(write_s)
            log(f"pandas {label}: read_json {read_s:.2f}s, to_sql {write_s:.2f}s, {rows} rows")
        totals = [r + w for r, w in zip(reads, writes)]
        out[label] = {"rows": rows, "read_json": min(reads), "to_sql": min(writes), "total": totals,
                      "columns": list(df.columns)}
    with engine.begin() as conn:
        conn.execute(sa.text(f"drop table if exists {PANDAS_TABLE}"))
    return out


# --- report -----------------------------------------------------------------------------------

def fmt_rate(rows: int, seconds: float) -> str:
    return f"{rows / seconds:,.0f}"


def report(ctx: dict[str, Any]) -> str:
    m, pg = ctx["machine"], ctx["postgres"]
    lines_n = ctx["lines"]
    ing_best, ing_med = best_and_median(ctx["ingest_seconds"])
    pandas = ctx["pandas"]
    ref_label = "to_sql method=None"
    ref_rate = pandas[ref_label]["rows"] / min(pandas[ref_label]["total"])

    rows = []  # (method, rows, seconds)
    rows.append((f"infinstruct `ingest_partition` (best of {len(ctx['ingest_seconds'])})", lines_n, ing_best))
    rows.append((f"infinstruct `ingest_partition` (median of {len(ctx['ingest_seconds'])})", lines_n, ing_med))
    for label, p in pandas.items():
        best_total = min(p["total"])
        rows.append((f"pandas `read_json` + `{label}` (best of {len(p['total'])})", p["rows"], best_total))
    for label, p in pandas.items():
        rows.append((f"  of which pandas `{label}` alone", p["rows"], p["to_sql"]))
    rows.append(("  of which pandas `read_json(lines=True)` alone", pandas[ref_label]["rows"], pandas[ref_label]["read_json"]))
    rows.append(("infinstruct Python parsing alone: `parse_item` over all lines, no database", lines_n,
                 ctx["python"]["read + parse_item"]))

    out = []
    out.append(f"- Date: {m['date']}")
    out.append(f"- Machine: {m['nproc']} CPUs (nproc), {m['cpu']}, {m['ram_gib']} GiB RAM; load average at start "
               f"{' / '.join(str(x) for x in m['load_avg_at_start'])} (a shared machine: other work may run alongside)")
    out.append(f"- Python {m['python']}, pandas {m['pandas']}, SQLAlchemy {m['sqlalchemy']}, psycopg2 {m['psycopg2']}")
    out.append(f"- PostgreSQL: {pg['version']}; {ctx['database']}; shared_buffers {pg['shared_buffers']}, fsync {pg['fsync']}, "
               f"synchronous_commit {pg['synchronous_commit']}, wal_level {pg['wal_level']}, max_wal_size {pg['max_wal_size']}")
    c = ctx["pool"]
    out.append(f"- Data: `{ctx['pool_path']}`: {c['lines']:,} alpaca lines, {c['bytes'] / 2**20:.1f} MiB "
               f"(seed {ctx['seed']}; {c['exact_duplicate']:,} exact duplicate lines, {c['same_instruction']:,} same instruction "
               f"with another answer, {c['invalid_json']} invalid JSON, {c['missing_output']} without output); generated in "
               f"{ctx['generate_seconds']:.1f}s. Ingest result: {ctx['ingest_result']['records']:,} records, "
               f"{ctx['ingest_result']['quarantined']} quarantined. pandas reads the {pandas[ref_label]['rows']:,} lines that are "
               f"valid JSON (it cannot skip bad lines) into a plain table of {len(pandas[ref_label]['columns'])} text columns.")
    out.append(f"- Command: `{ctx['command']}`")
    out.append("")
    out.append("| method | rows | seconds | rows/s | ratio vs pandas to_sql |")
    out.append("| --- | ---: | ---: | ---: | ---: |")
    for method, n, s in rows:
        out.append(f"| {method} | {n:,} | {s:.2f} | {fmt_rate(n, s)} | {(n / s) / ref_rate:.2f} |")
    out.append("")
    out.append(f"Ratio: rows/s divided by the rows/s of pandas `read_json` + `{ref_label}` (best). "
               f"All ingest runs (seconds): {', '.join(f'{s:.2f}' for s in ctx['ingest_seconds'])}; each is a forced "
               f"re-ingest of the whole file, so every run after the first also deletes the previous {lines_n:,} rows.")
    out.append("")
    out.append("Where the ingest time goes (best of each; Python steps are cumulative, each includes the ones above it):")
    out.append("")
    out.append("| step | seconds | rows/s | share of best ingest |")
    out.append("| --- | ---: | ---: | ---: |")
    for name, s in ctx["python"].items():
        out.append(f"| Python, no database: {name} | {s:.2f} | {fmt_rate(lines_n, s)} | {100 * s / ing_best:.0f}% |")
    srv_rows = ctx["server_rows"]
    for name, s in ctx["server"].items():
        out.append(f"| Server, COPY {srv_rows:,} prepared record rows: {name} | {s:.2f} | {fmt_rate(srv_rows, s)} | "
                   f"{100 * s / ing_best:.0f}% |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=100_000, help="lines in the generated pool (default 100000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement (default 3)")
    parser.add_argument("--profile", action="store_true", help="also profile one ingest with cProfile (bench/out/ingest_profile.txt)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    given = sys.argv[1:] if argv is None else argv
    ctx: dict[str, Any] = {"seed": args.seed, "machine": machine(),
                           "command": " ".join(["python bench/bench_ingest.py", *given])}
    log(f"generating {args.n} lines")
    pool, valid, ctx["pool"], ctx["generate_seconds"] = prepare_pool(args.n, args.seed)
    ctx["pool_path"] = str(pool.relative_to(ROOT))
    ctx["lines"] = ctx["pool"]["lines"]

    with database() as (url, description):
        import sqlalchemy as sa
        from infinstruct import pipeline
        from infinstruct.db import get_engine

        ctx["database"] = description
        engine = get_engine(url)
        ctx["postgres"] = pg_facts(engine)
        recipe, recipe_path = write_recipe(pool)
        run_id = f"bench-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
        pipeline.start_run(run_id, recipe_path)
        partition_ids = pipeline.plan(run_id)
        if len(partition_ids) != 1:
            raise SystemExit(f"expected one partition, planned {len(partition_ids)}")
        pid = partition_ids[0]
        with engine.connect() as conn:
            part = dict(conn.execute(sa.text("select * from partitions where partition_id = :p"), {"p": pid}).mappings().one())
        try:
            log("Python-only breakdown")
            ctx["python"] = python_breakdown(part, recipe, args.repeat)
            log("ingest_partition")
            ctx["ingest_seconds"], result = run_ingest(engine, recipe, run_id, pid, args.repeat)
            ctx["ingest_result"] = result.as_dict()
            if args.profile:
                log("profiling one more ingest")
                prof = profile_ingest(engine, recipe, run_id, pid)
                (OUT / "ingest_profile.txt").write_text(prof)
            log("server-only breakdown")
            ctx["server"], ctx["server_rows"] = server_breakdown(engine, part, recipe, args.repeat)
            log("pandas baseline")
            ctx["pandas"] = run_pandas(engine, valid, args.repeat)
        finally:
            if description == "INFINSTRUCT_DATABASE_URL":  # leave a shared database as we found it
                with engine.begin() as conn:
                    conn.execute(sa.text("delete from runs where run_id = :r"), {"r": run_id})
                    conn.execute(sa.text("delete from partitions where partition_id = :p"), {"p": pid})
                    conn.execute(sa.text(f"drop table if exists {PANDAS_TABLE}"))
                    conn.execute(sa.text("drop table if exists bench_copy"))
            engine.dispose()

    text = report(ctx)
    (OUT / "ingest_report.md").write_text(text + "\n")
    (OUT / "ingest_results.json").write_text(json.dumps(ctx, indent=2, default=str))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
