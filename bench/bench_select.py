"""The select_records stage at scale: throughput, determinism, incremental change, DSIR shift, diversity.

    python bench/bench_select.py [--n 1000000] [--dim 384] [--added 0.01] [--size 0.1]   (PROFILE=1: cProfile the full pass)

A throw-away embedded PostgreSQL gets a scored pool of --n standing records as score_records would have left
it (records, record_scores, embedding_cache), so the stage is timed without embedding or scoring time:

* instructions: real ../shared/data/pool prompts by domain (math: gsm8k_train's second half, code:
  code_alpaca, knowledge and chat: AlpacaEval + self-instruct split in two), grown to --n by perturbed copies
  (random word drops and swaps); pool mix 40% knowledge, 30% math, 20% code, 10% chat;
* vectors: one random unit vector per real prompt, each copy that vector plus noise (cosine ~0.9 to it), so
  copies of one prompt are redundant for the diversity walk; quality/difficulty drawn from Beta(2, 2);
* recipe: the paper's mix (knowledge 0.44, math 0.19, code 0.19 of `size` --size; chat keep_all), DSIR targets
  math = gsm8k_train's first half, code = code_alpaca (both disjoint from nothing: what matters is speed),
  diversity threshold 0.9.

Runs: a full pass (timed, records/s over the pool), the same again from scratch (identical selection?),
then --added of new records in a new partition (incremental pass: timed; how many selected records changed
vs what the quotas required). The embedded server has pgvector, so the selected set's index is the HNSW
tables (`selection.index: auto`); the incremental pass is then repeated from the same state with
`index: exact` (kept vectors read and searched in memory): time and selection compared.

Agreement of HNSW with the exact search (`agreement`): --stored vectors selected before and --queries
candidates, clustered so that a candidate's nearest stored vector sits around the threshold (siblings of
one base vector at cosine ~0.89, threshold 0.9): the greedy walk against `StoredIndex` (pgvector) vs exact,
the share of identical decisions and of identical selected sets. Prints Markdown tables for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "include"))
sys.path.insert(0, str(ROOT / "bench"))
from benchlib import table  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "pool"
SHARES = {"knowledge": 0.4, "math": 0.3, "code": 0.2, "chat": 0.1}


def prompts() -> dict[str, list[str]]:
    gsm = [json.loads(line)["question"] for line in open(DATA / "gsm8k_train.custom.jsonl")]
    code = [
        (r["instruction"] + "\n\n" + r.get("input", "")).strip()
        for r in map(json.loads, open(DATA / "code_alpaca_2k.alpaca.jsonl"))
    ]
    general = [
        r["conversations"][0]["value"]
        for r in map(json.loads, open(DATA / "alpaca_eval_gpt4_1106_preview.sharegpt.jsonl"))
    ]
    general += [r["instruction"] for r in map(json.loads, open(DATA / "self_instruct_seed.custom.jsonl"))]
    return {
        "math": gsm[len(gsm) // 2 :],
        "code": code,
        "knowledge": general[::2],
        "chat": general[1::2],
        "_math_target": gsm[: len(gsm) // 2],
    }


def perturb(text: str, rng: random.Random) -> str:
    words = text.split()
    if len(words) > 4:
        for _ in range(rng.randint(1, 3)):
            words.pop(rng.randrange(len(words)))
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def build_pool(engine, n: int, dim: int, real: dict[str, list[str]], part_prefix: str, start: int, seed: int) -> int:
    """COPY n standing, scored records (in partitions of 50k) for run `bench`; returns rows written."""
    from infinstruct.curate.scoring.signals import SIGNALS_VERSION
    from infinstruct.curate.scoring.stage import keys
    from infinstruct.store.pgcopy import Copier, CopyTable, json_field

    rng, nprng = random.Random(seed), np.random.default_rng(seed)
    bases = {d: nprng.standard_normal((len(real[d]), dim)).astype(np.float32) for d in SHARES}
    for b in bases.values():
        b /= np.linalg.norm(b, axis=1, keepdims=True)
    domains = rng.choices(list(SHARES), weights=list(SHARES.values()), k=n)
    scores_key, domain_key = keys(SETTINGS)
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        copier = Copier(cur)
        rec = CopyTable(
            copier,
            "records",
            (
                "partition_id",
                "line_no",
                "record_id",
                "instruction_key",
                "source",
                "conversation",
                "role_pattern",
                "min_turn_chars",
                "total_chars",
            ),
            20_000,
        )
        sco = CopyTable(
            copier,
            "record_scores",
            (
                "record_id",
                "signals_version",
                "signals",
                "scores_key",
                "quality",
                "difficulty",
                "domain_key",
                "domain",
                "confidence",
            ),
            20_000,
        )
        vec = CopyTable(copier, "embedding_cache", ("model", "record_id", "vector"), 20_000)
        model = SETTINGS.embedding.fingerprint.encode()
        parts = set()
        for k, domain in enumerate(domains):
            i = start + k
            part = f"{part_prefix}{i // 50_000:03d}"
            parts.add(part)
            j = rng.randrange(len(real[domain]))
            text = perturb(real[domain][j], rng) if rng.random() < 0.9 else real[domain][j]
            rid = hashlib.md5(f"{i}:{text}".encode()).hexdigest()
            conv = json.dumps([{"role": "user", "content": text}, {"role": "assistant", "content": "An answer."}])
            rec.add(
                part.encode(),
                b"%d" % i,
                rid.encode(),
                rid.encode(),
                domain.encode(),
                json_field(conv.encode()),
                b"ua",
                b"3",
                b"%d" % len(text),
            )
            q, dq = nprng.beta(2, 2), nprng.beta(2, 2)
            sco.add(
                rid.encode(),
                b"%d" % SIGNALS_VERSION,
                b"{}",
                scores_key.encode(),
                repr(round(float(q), 6)).encode(),
                repr(round(float(dq), 6)).encode(),
                domain_key.encode(),
                domain.encode(),
                b"0.9",
            )
            v = bases[domain][j] + nprng.standard_normal(dim).astype(np.float32) * (0.48 / np.sqrt(dim))
            v /= np.linalg.norm(v)
            vec.add(model, rid.encode(), b"\\\\x" + v.astype("<f4").tobytes().hex().encode())
        for t in (rec, sco, vec):
            t.flush()
        copier.close()
        for part in sorted(parts):
            cur.execute(
                "insert into partitions (partition_id, dataset, source, path, shard, format, start_offset,"
                " end_offset, first_line, checksum, status) values (%s, 'bench', 'bench', %s, 0, 'alpaca', 0, 0,"
                " 1, 'x', 'ingested') on conflict do nothing",
                (part, part),
            )
        raw.commit()
    finally:
        raw.close()
    return n


def start_run(engine, run_id: str, partitions_like: str) -> None:
    import sqlalchemy as sa

    with engine.begin() as conn:
        conn.execute(
            sa.text("insert into runs (run_id, dataset, recipe, recipe_hash) values (:r, 'bench', '{}', 'x')"),
            {"r": run_id},
        )
        conn.execute(
            sa.text(
                "insert into run_partitions select :r, partition_id from partitions where dataset = 'bench'"
                " and partition_id like :p"
            ),
            {"r": run_id, "p": partitions_like},
        )


def selected(engine) -> set[str]:
    import sqlalchemy as sa

    with engine.connect() as conn:
        return set(conn.execute(sa.text("select record_id from selection where dataset = 'bench'")).scalars())


def agreement(engine, stored: int, queries: int, dim: int, threshold: float = 0.9, noise: float = 0.35) -> list[list]:
    """Greedy walk of `queries` candidates against `stored` selected vectors: HNSW (pgvector) vs exact."""
    from infinstruct.curate.selection.diversity import ExactIndex, LayeredIndex, greedy_select
    from infinstruct.store.vector_index import StoredIndex

    rng = np.random.default_rng(11)
    bases = rng.standard_normal((stored // 10, dim)).astype(np.float32)
    bases /= np.linalg.norm(bases, axis=1, keepdims=True)

    def siblings(n: int) -> np.ndarray:
        v = bases[rng.integers(0, len(bases), n)] + rng.standard_normal((n, dim)).astype(np.float32) * (
            noise / np.sqrt(dim)
        )
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    old, new = siblings(stored), siblings(queries)
    old_ids, new_ids = [f"s{i:07d}" for i in range(stored)], [f"q{i:07d}" for i in range(queries)]
    scores = rng.random(queries)
    rows = []
    with engine.begin() as conn:
        t = time.perf_counter()
        hnsw = StoredIndex(conn, "bench_agreement", "pgvector")
        hnsw.reset()
        hnsw.add(old_ids, old)
        t_load = time.perf_counter() - t
        t = time.perf_counter()
        approx = greedy_select(new_ids, scores, new, threshold, queries, existing=LayeredIndex(hnsw, dim))
        t_hnsw = time.perf_counter() - t
        hnsw.reset()
    t = time.perf_counter()
    exact = greedy_select(
        new_ids, scores, new, threshold, queries, existing=LayeredIndex(ExactIndex(dim, old_ids, old), dim)
    )
    t_exact = time.perf_counter() - t
    a, e = list(approx.decisions()), list(exact.decisions())
    same = sum(x.outcome == y.outcome for x, y in zip(a, e))
    stored_hit = sum(
        y.similar_to is not None and y.similar_to.startswith("s") and y.outcome.value == "too_similar" for y in e
    )
    sel_a, sel_e = set(approx.selected), set(exact.selected)
    rows.append(
        [
            f"{stored:,} stored, {queries:,} candidates, threshold {threshold}",
            f"{t_load:.1f}",
            f"{queries / t_hnsw:,.0f}",
            f"{queries / t_exact:,.0f}",
            f"{stored_hit:,}",
            f"{same / queries:.4f}",
            f"{len(sel_a & sel_e) / max(1, len(sel_e)):.4f}",
            f"{len(sel_a):,} vs {len(sel_e):,}",
        ]
    )
    return rows


SETTINGS = None


def main() -> None:
    global SETTINGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--added", type=float, default=0.01)
    ap.add_argument("--size", type=float, default=0.1, help="selection.size: share of the shares domains' pool")
    ap.add_argument("--stored", type=int, default=50_000, help="agreement: selected vectors in the HNSW table")
    ap.add_argument("--queries", type=int, default=10_000, help="agreement: candidates walked against them")
    ap.add_argument("--agreement-only", action="store_true")
    args = ap.parse_args()

    import sqlalchemy as sa

    from benchlib import machine_facts, temporary_database
    from infinstruct.config import Recipe
    from infinstruct.curate.selection.diversity import diversity_report
    from infinstruct.curate.selection.stage import select_records
    from infinstruct.store.db import get_engine
    from infinstruct.store.embedding_cache import read_vectors

    real = prompts()
    folder = Path(__import__("tempfile").mkdtemp(prefix="bench-select-"))
    (folder / "math_target.jsonl").write_text("".join(json.dumps({"q": q}) + "\n" for q in real["_math_target"]))
    (folder / "code_target.jsonl").write_text("".join(json.dumps({"q": q}) + "\n" for q in real["code"]))
    recipe = Recipe.model_validate(
        {
            "name": "bench",
            "sources": [{"name": "bench", "path": "x.jsonl", "format": "alpaca"}],
            "semantic_dedup": None,
            "selection": {
                "shares": {"knowledge": 0.44, "math": 0.19, "code": 0.19},
                "keep_all": ["chat"],
                "size": args.size,
                "targets": {
                    "math": {"path": str(folder / "math_target.jsonl"), "fields": ["q"]},
                    "code": {"path": str(folder / "code_target.jsonl"), "fields": ["q"]},
                },
                "diversity_threshold": 0.9,
                "seed": 0,
            },
        }
    )
    SETTINGS = recipe.selection
    with temporary_database() as (url, _):
        engine = get_engine(url)
        print(machine_facts(engine, numpy=np.__version__))
        if args.agreement_only:
            table(
                [
                    "set",
                    "HNSW bulk load + build s",
                    "walk/s HNSW",
                    "walk/s exact",
                    "too similar to stored (exact)",
                    "identical decisions",
                    "identical selected",
                    "selected HNSW vs exact",
                ],
                agreement(engine, args.stored, args.queries, args.dim),
            )
            engine.dispose()
            return
        t = time.perf_counter()
        build_pool(engine, args.n, args.dim, real, "p", 0, seed=1)
        with engine.begin() as conn:
            conn.execute(sa.text("analyze"))
        print(f"pool of {args.n:,} written in {time.perf_counter() - t:.1f} s")

        rows = []
        start_run(engine, "full", "p%")
        t = time.perf_counter()
        if os.environ.get("PROFILE"):
            import cProfile
            import pstats

            with cProfile.Profile() as prof:
                full = select_records(engine, recipe, "full")
            pstats.Stats(prof).sort_stats("cumulative").print_stats(30)
        else:
            full = select_records(engine, recipe, "full")
        t_full = time.perf_counter() - t
        rows.append(["full pass", f"{args.n:,}", f"{t_full:.1f}", f"{args.n / t_full:,.0f}", f"{full['selected']:,}"])
        first = selected(engine)

        with engine.begin() as conn:  # from scratch again: same seed, same pool
            conn.execute(sa.text("delete from selection_state"))
        start_run(engine, "again", "p%")
        t = time.perf_counter()
        select_records(engine, recipe, "again")
        t_again = time.perf_counter() - t
        same = selected(engine) == first
        rows.append(
            [
                "full pass again (from scratch)",
                f"{args.n:,}",
                f"{t_again:.1f}",
                f"{args.n / t_again:,.0f}",
                f"identical: {same}",
            ]
        )

        added = int(args.n * args.added)
        build_pool(engine, added, args.dim, real, "q", args.n, seed=2)
        with engine.begin() as conn:  # the state the nightly pass starts from, to run it again with index: exact
            conn.execute(sa.text("create table bench_selection as select * from selection"))
            conn.execute(sa.text("create table bench_state as select * from selection_state"))
        start_run(engine, "nightly", "%")
        t = time.perf_counter()
        nightly = select_records(engine, recipe, "nightly")
        t_nightly = time.perf_counter() - t
        after = selected(engine)
        grown = sum(
            max(0, e.get("quota", e["available"]) - full["domains"][d].get("quota", full["domains"][d]["available"]))
            for d, e in nightly["domains"].items()
        )
        rows.append(
            [
                f"+{args.added:.0%} records (incremental, index {nightly['index']})",
                f"{args.n + added:,}",
                f"{t_nightly:.1f}",
                f"{(args.n + added) / t_nightly:,.0f}",
                f"{len(first - after)} left, {len(after - first):,} joined (quotas grew by {grown:,})",
            ]
        )
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "delete from selection; insert into selection select * from bench_selection;"
                    " delete from selection_state; insert into selection_state select * from bench_state"
                )
            )
        exact_recipe = recipe.model_copy(update={"selection": SETTINGS.model_copy(update={"index": "exact"})})
        start_run(engine, "nightly_exact", "%")
        t = time.perf_counter()
        select_records(engine, exact_recipe, "nightly_exact")
        t_exact = time.perf_counter() - t
        same = selected(engine)
        rows.append(
            [
                f"+{args.added:.0%} records (incremental, index exact)",
                f"{args.n + added:,}",
                f"{t_exact:.1f}",
                f"{(args.n + added) / t_exact:,.0f}",
                f"identical to {nightly['index']}: {same == after} ({len(same & after):,} of {len(after):,})",
            ]
        )
        table(["pass", "pool", "seconds", "records/s", "selection"], rows)
        table(
            [
                "domain",
                "available",
                "quota",
                "selected",
                "share → planned",
                "DSIR KL before → after (random same size)",
            ],
            [
                [
                    d,
                    e["available"],
                    e.get("quota", "keep_all"),
                    e["selected"],
                    f"{e.get('share', '')} → {e.get('planned_share', '')}",
                    (
                        f"{e['dsir']['kl_before']:.4f} → {e['dsir']['kl_after']:.4f} ({e['dsir']['kl_random_same_size']:.4f})"
                        if "dsir" in e
                        else ""
                    ),
                ]
                for d, e in full["domains"].items()
            ],
        )

        rng = np.random.default_rng(0)
        with engine.connect() as conn:
            div = []
            for d in ("knowledge", "math", "code"):
                chosen = sorted(
                    conn.execute(
                        sa.text("select record_id from selection where dataset = 'bench' and domain = :d"), {"d": d}
                    ).scalars()
                )
                pool = sorted(
                    conn.execute(sa.text("select record_id from record_scores where domain = :d"), {"d": d}).scalars()
                )
                m = min(5000, len(chosen))
                picks = [chosen[i] for i in rng.choice(len(chosen), m, replace=False)]
                rand = [pool[i] for i in rng.choice(len(pool), m, replace=False)]
                sel_v = read_vectors(conn, SETTINGS.embedding.fingerprint, picks)
                rnd_v = read_vectors(conn, SETTINGS.embedding.fingerprint, rand)
                a = diversity_report(np.stack([sel_v[i] for i in picks]))
                b = diversity_report(np.stack([rnd_v[i] for i in rand]))
                div.append(
                    [
                        d,
                        m,
                        f"{a['mean_nn_cosine']} / {a['p95_nn_cosine']}",
                        f"{b['mean_nn_cosine']} / {b['p95_nn_cosine']}",
                    ]
                )
        table(["domain", "sample", "selection mean / p95 NN cosine", "random same size"], div)
        table(
            ["domain", "selected", "in the stage's summary: sample", "mean / p95 NN cosine"],
            [
                [d, r["n"], r.get("sampled", r["n"]), f"{r['mean_nn_cosine']} / {r['p95_nn_cosine']}"]
                for d, r in [
                    *((d, e["diversity"]) for d, e in nightly["domains"].items()),
                    ("overall", nightly["diversity"]),
                ]
            ],
        )
        table(
            [
                "set",
                "HNSW bulk load + build s",
                "walk/s HNSW",
                "walk/s exact",
                "too similar to stored (exact)",
                "identical decisions",
                "identical selected",
                "selected HNSW vs exact",
            ],
            agreement(engine, args.stored, args.queries, args.dim),
        )
        print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
        engine.dispose()


if __name__ == "__main__":
    main()
