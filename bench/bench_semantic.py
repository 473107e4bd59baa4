"""Semantic dedup and embedding decontamination: speed and quality measurements (prints tables).

    python bench/bench_semantic.py index     [--n 100000] [--queries 1000]
    python bench/bench_semantic.py encode    [--n 400]
    python bench/bench_semantic.py decontam  [--per-kind 150] [--clean 600]
    python bench/bench_semantic.py static    [--n 400]     (needs model2vec[distill])

index: vector indexes at n vectors of dim 384 (pgvector HNSW in the embedded PostgreSQL, usearch and
faiss HNSW when installed, exact numpy as the reference): load + build time, incremental inserts into
the built index, query throughput at k = 5 and recall@5 against brute force. The vectors are
synthetic but clustered like sentence embeddings (2,000 topics, intra-topic cosine ~0.5), and half
of the queries are near-copies of stored vectors, as in dedup.

encode: MiniLM texts/s on real prompts. decontam: recall per planted variant kind and the clean
pool's false-positive rate against ../shared/data/benchmarks, by cosine threshold. static: a model2vec
model distilled from the same MiniLM: distill time, texts/s, and whether near-copies stay >= 0.9.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "include"))
DATA = ROOT.parent / "shared" / "data"
DIM = 384


# --- index -------------------------------------------------------------------------------------


def clustered_vectors(n: int, rng: np.random.Generator, topics: int = 2000) -> np.ndarray:
    centres = rng.standard_normal((topics, DIM)).astype(np.float32)
    v = centres[rng.integers(0, topics, n)] + rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def exact_top(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    out = []
    for s in range(0, len(queries), 256):
        sims = queries[s : s + 256] @ base.T
        part = np.argpartition(-sims, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, part, 1), axis=1)
        out.append(np.take_along_axis(part, order, 1))
    return np.concatenate(out)


def recall(found: list[set[int]], truth: np.ndarray) -> str:
    """recall@k over all queries, and over the near-copy half / the fresh half separately."""
    per = np.array([len(f & set(t.tolist())) / len(t) for f, t in zip(found, truth)])
    half = len(per) // 2
    return f"{per.mean():.4f} {per[:half].mean():.4f} {per[half:].mean():.4f}"


def bench_pgvector(base, extra, queries, truth, k):
    import sqlalchemy as sa

    from infinstruct import semantic
    from infinstruct.store.embedded_server import start_server

    folder = Path(tempfile.mkdtemp(prefix="bench-pgvector-"))
    server = start_server(folder, cleanup_mode="delete")
    engine = sa.create_engine(server.get_uri().replace("postgresql://", "postgresql+psycopg2://"))
    rows = []
    with engine.begin() as conn:
        conn.execute(sa.text("create extension if not exists vector"))
        conn.execute(sa.text("set maintenance_work_mem = '1GB'"))
        conn.execute(sa.text(semantic.schema_sql(DIM, table="bench_vectors", with_index=False)))
    index = semantic.VectorIndex(engine, DIM, table="bench_vectors")
    keys = [f"r{i}" for i in range(len(base))]
    t = time.perf_counter()
    index.add(keys, base)
    load = time.perf_counter() - t
    t = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(sa.text("set maintenance_work_mem = '1GB'"))
        conn.execute(sa.text(semantic.index_sql(table="bench_vectors")))
    build = time.perf_counter() - t
    t = time.perf_counter()
    index.add([f"x{i}" for i in range(len(extra))], extra)
    incr = time.perf_counter() - t
    with engine.begin() as conn:  # the extra rows would change the truth: out again
        conn.execute(sa.text("delete from bench_vectors where record_key like 'x%'"))
    for ef in (40, 100):
        index.ef_search = ef
        t = time.perf_counter()
        hits = index.neighbours(queries, k, min_cosine=-1.0)
        q = time.perf_counter() - t
        found = [set() for _ in queries]
        for row, key, _ in hits:
            found[row].add(int(key[1:]))
        rows.append(
            (
                f"pgvector hnsw m16 efc64 ef{ef}",
                len(base) / load,
                build,
                len(extra) / incr,
                len(queries) / q,
                recall(found, truth),
            )
        )
    engine.dispose()
    server.cleanup()
    return rows


def bench_usearch(base, extra, queries, truth, k):
    from usearch.index import Index

    index = Index(ndim=DIM, metric="cos", dtype="f32", connectivity=16, expansion_add=64, expansion_search=40)
    t = time.perf_counter()
    index.add(np.arange(len(base)), base)
    build = time.perf_counter() - t
    t = time.perf_counter()
    index.add(np.arange(len(base), len(base) + len(extra)), extra)
    incr = time.perf_counter() - t
    index.remove(np.arange(len(base), len(base) + len(extra)))
    t = time.perf_counter()
    res = index.search(queries, k)
    q = time.perf_counter() - t
    found = [set(r.tolist()) for r in res.keys]
    return [
        ("usearch hnsw m16 efc64 ef40", float("nan"), build, len(extra) / incr, len(queries) / q, recall(found, truth))
    ]


def bench_faiss(base, extra, queries, truth, k):
    import faiss

    index = faiss.IndexHNSWFlat(DIM, 16, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 64
    t = time.perf_counter()
    index.add(base)
    build = time.perf_counter() - t
    index.hnsw.efSearch = 40
    t = time.perf_counter()
    _, ids = index.search(queries, k)
    q = time.perf_counter() - t
    found = [set(r.tolist()) for r in ids]
    t = time.perf_counter()
    index.add(extra)
    incr = time.perf_counter() - t
    return [
        ("faiss hnsw m16 efc64 ef40", float("nan"), build, len(extra) / incr, len(queries) / q, recall(found, truth))
    ]


def run_index(args) -> None:
    rng = np.random.default_rng(7)
    base = clustered_vectors(args.n, rng)
    extra = clustered_vectors(args.n // 100, rng)
    half = args.queries // 2
    near = base[rng.integers(0, args.n, half)] + 0.02 * rng.standard_normal((half, DIM)).astype(np.float32)
    queries = np.concatenate([near, clustered_vectors(args.queries - half, rng)])
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    k = 5
    t = time.perf_counter()
    truth = exact_top(base, queries, k)
    exact_qps = len(queries) / (time.perf_counter() - t)
    rows = [("exact numpy (reference)", float("nan"), 0.0, float("nan"), exact_qps, "1 1 1")]
    for name, fn in (("pgvector", bench_pgvector), ("usearch", bench_usearch), ("faiss", bench_faiss)):
        try:
            rows += fn(base, extra, queries, truth, k)
        except ImportError as exc:
            print(f"{name}: skipped ({exc})")
    print(
        f"\n{args.n:,} vectors x {DIM}, {args.queries} queries (k = 5), incremental = {len(extra):,} rows into the built index"
    )
    print(
        f"{'index':34} {'load rows/s':>12} {'build s':>8} {'incr rows/s':>12} {'queries/s':>10}  recall@5: all / near-copy / fresh"
    )
    for name, load, build, incr, qps, rec in rows:
        print(f"{name:34} {load:12,.0f} {build:8.1f} {incr:12,.0f} {qps:10,.0f}  {rec}")


# --- encode / decontam / static ----------------------------------------------------------------


def pool_prompts(limit: int | None = None, with_source: bool = False) -> list:
    texts = []
    for path in sorted((DATA / "pool").glob("*.jsonl")):
        start = len(texts)
        for line in path.open():
            rec = json.loads(line)
            if "instruction" in rec:
                texts.append((rec["instruction"] + "\n" + rec.get("input", "")).strip())
            elif "question" in rec:
                texts.append(rec["question"])
            elif "conversations" in rec:
                texts.append(next(t["value"] for t in rec["conversations"] if t["from"] == "human"))
            elif "messages" in rec:
                texts.append(next(t["content"] for t in rec["messages"] if t["role"] == "user"))
        if with_source:
            texts[start:] = [(path.name.split(".")[0], t) for t in texts[start:]]
    return texts[:limit] if limit else texts


def run_encode(args) -> None:
    from infinstruct.ml.embeddings import EmbeddingSettings, encode

    texts = random.Random(1).sample(pool_prompts(), args.n)
    settings = EmbeddingSettings()
    encode(texts[:4], settings)
    t = time.perf_counter()
    encode(texts, settings)
    dt = time.perf_counter() - t
    print(
        f"MiniLM encode: {args.n} pool prompts ({np.mean([len(x) for x in texts]):.0f} chars avg) "
        f"in {dt:.1f} s = {args.n / dt:.0f} texts/s (batch {settings.batch_size}, max_chars {settings.max_chars})"
    )


def benchmark_items():
    from infinstruct.curate.decontam.ngrams import BenchmarkSpec, load_items

    specs = [
        BenchmarkSpec(name="gsm8k_test", path=str(DATA / "benchmarks/gsm8k_test.jsonl"), fields=["question"]),
        BenchmarkSpec(
            name="mt_bench",
            path=str(DATA / "benchmarks/mt_bench_questions.jsonl"),
            fields=["turns"],
            id_field="question_id",
        ),
        BenchmarkSpec(
            name="humaneval", path=str(DATA / "benchmarks/humaneval.jsonl"), fields=["prompt"], id_field="task_id"
        ),
    ]
    return [item for spec in specs for item in load_items(spec)]


_FILLER = ["really", "please", "quickly", "certain", "some", "the", "a", "kindly", "exactly", "roughly"]
_SYNONYMS = {
    "how": "in what way",
    "many": "much",
    "each": "every",
    "buys": "purchases",
    "has": "owns",
    "total": "overall",
    "find": "determine",
    "write": "compose",
    "function": "routine",
    "return": "give back",
    "list": "array",
    "number": "count",
    "what": "which",
    "makes": "earns",
}


def paraphrase(text: str, rng: random.Random, rate: float = 0.15) -> str:
    """Words substituted (synonyms where known, else a filler word) at `rate`, every number changed."""
    out = []
    for w in text.split(" "):
        if re.fullmatch(r"\$?\d+([.,]\d+)?", w):
            out.append(str(rng.randint(2, 99)))
        elif rng.random() < rate:
            out.append(_SYNONYMS.get(w.lower(), rng.choice(_FILLER)))
        else:
            out.append(w)
    return " ".join(out)


def wrap(text: str, rng: random.Random) -> str:
    pre = rng.choice(
        [
            "I'm studying for an exam and got stuck on this one. ",
            "My teacher gave us the following task, can you help?\n\n",
            "Please solve the problem below and explain each step carefully.\n",
        ]
    )
    post = rng.choice(["\nThanks a lot in advance!", "\nShow your reasoning before the final answer.", ""])
    return pre + text + post


def planted(items, per_kind: int, rng: random.Random) -> dict[str, list[tuple[str, str]]]:
    """kind -> [(text, 'benchmark/item_id')]"""
    sample = rng.sample(items, min(per_kind, len(items)))
    return {
        "verbatim": [(i.text, f"{i.benchmark}/{i.item_id}") for i in sample],
        "wrapped": [(wrap(i.text, rng), f"{i.benchmark}/{i.item_id}") for i in sample],
        "paraphrased 15%": [(paraphrase(i.text, rng, 0.15), f"{i.benchmark}/{i.item_id}") for i in sample],
        "paraphrased 30%": [(paraphrase(i.text, rng, 0.30), f"{i.benchmark}/{i.item_id}") for i in sample],
        "wrapped + paraphrased": [
            (wrap(paraphrase(i.text, rng, 0.15), rng), f"{i.benchmark}/{i.item_id}") for i in sample
        ],
    }


UNION_AT = 0.80  # the embedding threshold of the "ngram or embedding" column


def run_decontam(args) -> None:
    from infinstruct.curate.decontam.embedding import EmbeddingMatcher, EmbeddingMatchSettings
    from infinstruct.curate.decontam.ngrams import NgramIndex
    from infinstruct.ml.embeddings import EmbeddingSettings

    rng = random.Random(3)
    items = benchmark_items()
    t = time.perf_counter()
    matcher = EmbeddingMatcher.build(items, EmbeddingMatchSettings(embedding=EmbeddingSettings(), threshold=0.0))
    print(f"embedding matcher: {len(items)} benchmark items indexed in {time.perf_counter() - t:.1f} s")
    thresholds = [0.70, 0.75, 0.80, 0.85, 0.90]
    print(
        f"{'variant':24} {'n':>5} "
        + " ".join(f"{'>=' + format(x, '.2f'):>7}" for x in thresholds)
        + f" {'ngram|' + format(UNION_AT, '.2f'):>7}  (recall: best match is the planted item)"
    )
    ngram = NgramIndex.build(items)  # the n-gram matcher at its defaults, for the union column
    for kind, pairs in planted(items, args.per_kind, rng).items():
        texts = [text for text, _ in pairs]
        best = [m[0] if m else None for m in matcher.match(texts)]
        cells = [
            np.mean(
                [
                    b is not None and f"{b.benchmark}/{b.item_id}" == want and b.score >= x
                    for b, (_, want) in zip(best, pairs)
                ]
            )
            for x in thresholds
        ]
        union = np.mean(
            [bool(ngram.contaminating(t)) or (b is not None and b.score >= UNION_AT) for t, b in zip(texts, best)]
        )
        print(f"{kind:24} {len(pairs):5} " + " ".join(f"{c:7.3f}" for c in cells) + f" {union:7.3f}")
    sample = rng.sample(pool_prompts(with_source=True), args.clean)
    best = [m[0].score if m else -1.0 for m in matcher.match([t for _, t in sample])]
    for name, keep in (
        ("clean pool flagged", lambda src: True),
        ("  without alpaca_eval", lambda src: not src.startswith("alpaca_eval")),
    ):
        rows = [(b, t) for b, (src, t) in zip(best, sample) if keep(src)]
        union = np.mean([bool(ngram.contaminating(t)) or b >= UNION_AT for b, t in rows])
        print(
            f"{name:24} {len(rows):5} "
            + " ".join(f"{np.mean([b >= x for b, _ in rows]):7.3f}" for x in thresholds)
            + f" {union:7.3f}"
        )
    for score, (src, text) in sorted(zip(best, sample), reverse=True)[:6]:
        print(f"   clean {score:.3f} {src}: {text[:80]!r}")


def run_static(args) -> None:
    from infinstruct.ml.embeddings import EmbeddingSettings, distill_static_model, encode

    folder = Path(tempfile.mkdtemp(prefix="m2v-"))
    t = time.perf_counter()
    distill_static_model(folder)
    distill_s = time.perf_counter() - t
    rng = random.Random(5)
    texts = rng.sample(pool_prompts(), args.n)
    static = EmbeddingSettings(backend="model2vec", model=str(folder))
    encode(texts[:4], static)
    t = time.perf_counter()
    for _ in range(10):
        encode(texts, static)
    sps = 10 * len(texts) / (time.perf_counter() - t)
    edits = {
        "appended sentence": lambda s: s + " Please answer briefly.",
        "2 words swapped": lambda s: _swap(s, rng),
        "paraphrased 15%": lambda s: paraphrase(s, rng, 0.15),
    }
    shuffled = texts[1:] + texts[:1]
    print(f"static model: distilled in {distill_s:.0f} s, {sps:,.0f} texts/s ({len(texts)} pool prompts x 10)")
    print(f"{'pairs':22} {'MiniLM >=0.9':>12} {'static >=0.9':>12} {'MiniLM med':>10} {'static med':>10}")
    for name, pair_b in [*((k, [f(s) for s in texts]) for k, f in edits.items()), ("unrelated", shuffled)]:
        row = []
        for settings in (EmbeddingSettings(), static):
            a, b = encode(texts, settings), encode(pair_b, settings)
            cos = (a * b).sum(axis=1)
            row.append(cos)
        print(
            f"{name:22} {np.mean(row[0] >= 0.9):12.3f} {np.mean(row[1] >= 0.9):12.3f} "
            f"{np.median(row[0]):10.3f} {np.median(row[1]):10.3f}"
        )


def _swap(text: str, rng: random.Random) -> str:
    words = text.split()
    if len(words) > 3:
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
        j = rng.randrange(len(words) - 1)
        words[j], words[j + 1] = words[j + 1], words[j]
    return " ".join(words)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["index", "encode", "decontam", "static"])
    parser.add_argument("--n", type=int)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--per-kind", type=int, default=150)
    parser.add_argument("--clean", type=int, default=600)
    args = parser.parse_args()
    if args.n is None:
        args.n = 100_000 if args.what == "index" else 400
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    {"index": run_index, "encode": run_encode, "decontam": run_decontam, "static": run_static}[args.what](args)


if __name__ == "__main__":
    main()
