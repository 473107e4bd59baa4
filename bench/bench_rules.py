"""Benchmark: the `apply_rules` step alone (rule statistics, language id, verdicts, stats stored), in one process.

    python bench/bench_rules.py [--n 100000] [--seed 0] [--shared DIR] [--corpus DIR]
                                [--database-url URL] [--profile FILE] [--dump FILE]

1. Data (cached under bench/out/rules_n<N>/, gitignored): an N-line Alpaca pool from
   `generate_pool.generate`; with `--shared`, also every file of ../shared/data/pool (the sources of
   include/recipes/shared_pool.yaml); with `--corpus`, the Alpaca files of a labelled corpus written by
   bench/eval_corpus.py (junk of every kind the rules target).
2. A fresh database: on the server `--database-url` names (a database created for the run and dropped
   after it), else an embedded PostgreSQL in a temporary folder. `start_run`, `plan` and
   `ingest_partition` of every partition, untimed.
3. Timed, partition after partition in this process (a mapped task's work, without the pool):
   `measure`: `apply_rules` with no stored statistics (every record measured, its stats written);
   `rejudge`: `apply_rules` again after forgetting its completion record (every record's stored stats
   read back and judged: the database part of the step). `--profile` writes cProfile stats of the
   `measure` pass.
4. `--dump FILE`: every stored statistic (`record_stats`) and every rule decision (by file name and line),
   one sorted JSON line each, so two versions of the library can be compared byte for byte: run the
   script with PYTHONPATH pointing at each library's `include` folder and `cmp` the dumps.

Prints the timings; nothing is asserted about time.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import generate_pool as gp  # noqa: E402
from benchlib import machine_facts, temporary_database  # noqa: E402

SHARED_SOURCES = (  # include/recipes/shared_pool.yaml's sources, by file name
    ("alpaca_eval_gpt4", "alpaca_eval_gpt4_1106_preview.sharegpt.jsonl", "sharegpt", None),
    ("alpaca_eval_models", "alpaca_eval_*.alpaca.jsonl", "alpaca", None),
    ("code_alpaca", "code_alpaca_2k.alpaca.jsonl", "alpaca", None),
    ("gsm8k_train", "gsm8k_train.custom.jsonl", "custom", {"user": "question", "assistant": "answer"}),
    (
        "self_instruct_seed",
        "self_instruct_seed.custom.jsonl",
        "custom",
        {"user": "instruction", "input": "instances.0.input", "assistant": "instances.0.output"},
    ),
    ("self_instruct_messages", "self_instruct_seed.messages.jsonl", "messages", None),
)
CORPUS_FILES = ("code_alpaca", "gsm8k_train", "self_instruct", "alpaca_eval")  # eval_corpus.py's Alpaca files


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def synthetic_pool(n: int, seed: int) -> Path:
    path = HERE / "out" / f"rules_n{n}" / f"pool_seed{seed}.jsonl"
    if not path.exists():
        gp.generate(path, n, seed, "alpaca")
    return path


def recipe_for(args) -> dict:
    sources = []
    if args.n:
        sources.append({"name": "synthetic", "path": str(synthetic_pool(args.n, args.seed)), "format": "alpaca"})
    if args.shared:
        for name, pattern, fmt, fields in SHARED_SOURCES:
            sources.append(
                {
                    "name": name,
                    "path": str(Path(args.shared) / pattern),
                    "format": fmt,
                    **({"fields": fields} if fields else {}),
                }
            )
    if args.corpus:
        for name in CORPUS_FILES:
            sources.append(
                {"name": f"corpus_{name}", "path": str(Path(args.corpus) / f"{name}.jsonl"), "format": "alpaca"}
            )
    return {
        "name": "bench_rules",
        "sources": sources,
        "semantic_dedup": None,
        "decontamination": {"benchmarks": [], "embedding": None},
    }


@contextmanager
def fresh_database(server: str | None):
    """A database for this run only: created on `server` and dropped afterwards, else embedded."""
    if not server:
        with temporary_database() as (url, _):
            yield url
        return
    import sqlalchemy as sa

    from infinstruct.store.database_url import DATABASE_ENV, normalise_url

    name = f"infinstruct_bench_rules_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(normalise_url(server), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'create database "{name}"'))
    url = sa.engine.make_url(normalise_url(server)).set(database=name).render_as_string(hide_password=False)
    os.environ[DATABASE_ENV] = url
    try:
        yield url
    finally:
        from infinstruct.store.db import get_engine

        get_engine(url).dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'drop database if exists "{name}" with (force)'))
        admin.dispose()


def server_cpu(engine) -> float:
    """CPU seconds used so far by the server processes serving this database (its backends, read in /proc)."""
    import sqlalchemy as sa

    with engine.connect() as conn:
        pids = (
            conn.execute(sa.text("select pid from pg_stat_activity where datname = current_database()")).scalars().all()
        )
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # a backend that has gone, or a server on another machine
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def dump(engine, path: Path) -> int:
    """Stored stats and rule decisions, one sorted JSON line each (files by name: paths differ between copies)."""
    import sqlalchemy as sa

    lines = []
    with engine.connect() as conn:
        for record_id, version, stats in conn.execute(sa.text("select record_id, version, stats from record_stats")):
            lines.append(json.dumps(["stats", record_id, version, stats], sort_keys=True, ensure_ascii=False))
        for row in conn.execute(
            sa.text(
                "select p.path, d.line_no, d.verdict, d.reason, d.score, d.detail, d.duplicate_of from decisions d"
                " join partitions p using (partition_id) where d.stage = 'rules'"
            )
        ):
            lines.append(json.dumps(["decision", Path(row[0]).name, *row[1:]], ensure_ascii=False))
    lines.sort()
    path.write_text("".join(line + "\n" for line in lines))
    return len(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="synthetic Alpaca lines (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shared", help="also every file of this folder (../shared/data/pool)")
    parser.add_argument("--corpus", help="also the Alpaca files of this eval_corpus.py output folder")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("INFINSTRUCT_TEST_DATABASE_URL"),
        help="server to create the run's database on (default: INFINSTRUCT_TEST_DATABASE_URL, else embedded)",
    )
    parser.add_argument("--profile", help="write cProfile stats of the measure pass here")
    parser.add_argument("--dump", help="write the stored stats and rule decisions here")
    args = parser.parse_args()

    import yaml

    out = HERE / "out" / "rules"
    out.mkdir(parents=True, exist_ok=True)
    recipe_path = out / f"recipe_{os.getpid()}.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe_for(args), sort_keys=False))
    import infinstruct
    from infinstruct import pipeline

    log(f"library {Path(infinstruct.__file__).parent}")

    with fresh_database(args.database_url) as url:
        import sqlalchemy as sa

        from infinstruct.store.db import get_engine

        engine = get_engine(url)
        facts = machine_facts(engine)
        run_id = f"bench-rules-{time.strftime('%Y%m%d-%H%M%S')}"
        pipeline.start_run(run_id, recipe_path)
        partitions = pipeline.plan(run_id)
        t0 = time.monotonic()
        for p in partitions:
            pipeline.ingest_partition(run_id, p)
        with engine.connect() as conn:
            records = conn.execute(sa.text("select count(*) from records")).scalar_one()
        log(f"{len(partitions)} partitions, {records:,} records ingested in {time.monotonic() - t0:.1f}s")

        timings = {}
        profiler = cProfile.Profile() if args.profile else None
        for label in ("measure", "rejudge"):
            if label == "rejudge":
                with engine.begin() as conn:
                    conn.execute(sa.text("delete from stage_completions where stage = 'rules'"))
            cpu, server, t0 = time.process_time(), server_cpu(engine), time.monotonic()
            if profiler and label == "measure":
                profiler.enable()
            results = [pipeline.apply_rules(run_id, p) for p in partitions]
            if profiler and label == "measure":
                profiler.disable()
            timings[label] = {
                "wall": time.monotonic() - t0,
                "cpu": time.process_time() - cpu,
                "server_cpu": server_cpu(engine) - server,
                "measured": sum(r["measured"] for r in results),
                "dropped": sum(r["dropped"] for r in results),
            }
            t = timings[label]
            log(
                f"{label}: {t['wall']:.2f}s wall ({records / t['wall']:,.0f} records/s), {t['cpu']:.2f}s CPU of this "
                f"process, {t['server_cpu']:.2f}s CPU of the server's backends; {t['measured']:,} measured, {t['dropped']:,} dropped"
            )
        if profiler:
            profiler.dump_stats(args.profile)
        if args.dump:
            log(f"dump: {dump(engine, Path(args.dump)):,} lines in {args.dump}")
    recipe_path.unlink()
    print(
        json.dumps(
            {
                "library": str(Path(infinstruct.__file__).parent),
                "records": records,
                "partitions": len(partitions),
                "load_at_start": facts["load"],
                "postgres": facts["postgres"],
                "timings": timings,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
