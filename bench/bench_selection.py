"""Phase 1 selection building blocks: throughput and effect on ../shared/data (prints Markdown tables).

    python bench/bench_selection.py scoring                       signals + scores over the pool
    python bench/bench_selection.py dsir      [--n 200000] [--k 20000]
    python bench/bench_selection.py diversity [--n 2000] [--scale 100000]
    python bench/bench_selection.py domains   [--n 2000]
    python bench/bench_selection.py all

scoring: `measure_signals` and the two scores over every pool record (full conversations), per source.

dsir: target = the first half of gsm8k_train's questions; raw = every other pool instruction plus the
held-out half of gsm8k_train, grown to --n texts by perturbed copies (random word drops and swaps, so
copies are not identical); fit (both corpora), weights, Gumbel-top-k of --k, all timed; KL(target ‖
raw) before and KL(target ‖ selected) after (with KL(target ‖ the held-out half alone) as the floor a
perfect pick would reach), and the share of held-out gsm8k questions in the pool vs in the selection.
Also on the real pool alone (no copies).

diversity: --n unique pool instructions (exact duplicates removed first: AlpacaEval repeats its 805
prompts in 8 files), embedded with MiniLM (timed), scored by `quality_score`, then `greedy_select`
at thresholds 0.6 / 0.7 / 0.8 / 0.9 with quota n/2; mean and p95 nearest-neighbour cosine inside the
selection vs a random sample of the same size. Throughput at scale: --scale vectors made of the real
ones plus noise (cosine ~0.9 to their source), quota 10%.

domains: rules + centroid classification of --n pool instructions with vectors given (the pipeline
embeds once for diversity and domains): records/s excluding the embedding, and the domain mix per source.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "include"))
sys.path.insert(0, str(ROOT / "bench"))
from benchlib import table  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def conversations() -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    """(source, turns) of every pool record, in file order."""
    out = []
    for path in sorted((DATA / "pool").glob("*.jsonl")):
        source = path.name.split(".")[0]
        for line in path.open():
            r = json.loads(line)
            if "conversations" in r:
                turns = tuple(("user" if t["from"] == "human" else "assistant", t["value"]) for t in r["conversations"])
            elif "messages" in r:
                turns = tuple((m["role"], m["content"]) for m in r["messages"])
            elif "question" in r:
                turns = (("user", r["question"]), ("assistant", r["answer"]))
            elif "instances" in r:
                inst = r["instances"][0]
                turns = (("user", (r["instruction"] + "\n\n" + inst["input"]).strip()), ("assistant", inst["output"]))
            else:
                turns = (("user", (r["instruction"] + "\n\n" + r.get("input", "")).strip()), ("assistant", r["output"]))
            out.append((source, turns))
    return out


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{len(os.sched_getaffinity(0))} CPUs ({cpu}); load average at start {load}; "
        f"Python {platform.python_version()}, numpy {np.__version__}"
    )


# --- scoring -----------------------------------------------------------------------------------


def run_scoring(args) -> None:
    from infinstruct.curate.scoring.signals import difficulty_score, measure_signals, quality_score

    records = conversations()
    t = time.perf_counter()
    signals = [measure_signals(turns) for _, turns in records]
    measure_s = time.perf_counter() - t
    t = time.perf_counter()
    quality = np.array([quality_score(s) for s in signals])
    difficulty = np.array([difficulty_score(s) for s in signals])
    score_s = time.perf_counter() - t
    print(f"### Scoring: {len(records):,} pool records\n")
    table(
        ["step", "records", "seconds", "records/s"],
        [
            [
                "measure_signals (full conversations)",
                len(records),
                f"{measure_s:.2f}",
                f"{len(records) / measure_s:,.0f}",
            ],
            [
                "quality_score + difficulty_score from stored signals",
                len(records),
                f"{score_s:.2f}",
                f"{len(records) / score_s:,.0f}",
            ],
        ],
    )
    sources = np.array([s for s, _ in records])
    rows = []
    for source in sorted(set(sources)):
        m = sources == source
        rows.append(
            [
                source,
                int(m.sum()),
                f"{quality[m].mean():.3f}",
                f"{difficulty[m].mean():.3f}",
                f"{np.mean([signals[i]['has_code'] for i in np.flatnonzero(m)]):.2f}",
                f"{np.mean([signals[i]['has_math'] for i in np.flatnonzero(m)]):.2f}",
            ]
        )
    table(["source", "records", "mean quality", "mean difficulty", "has_code", "has_math"], rows)


# --- dsir --------------------------------------------------------------------------------------


def perturb(text: str, rng: random.Random) -> str:
    words = text.split()
    if len(words) > 4:
        for _ in range(2):
            del words[rng.randrange(len(words))]
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def run_dsir(args) -> None:
    from infinstruct.curate.selection.dsir import (
        DsirSettings,
        HashedNgrams,
        ImportanceModel,
        distribution,
        kl_divergence,
        resample,
    )

    records = conversations()
    gsm8k = [turns[0][1] for source, turns in records if source == "gsm8k_train"]
    target, held_out = gsm8k[: len(gsm8k) // 2], gsm8k[len(gsm8k) // 2 :]
    others = [next(c for r, c in turns if r == "user") for source, turns in records if source != "gsm8k_train"]
    real = others + held_out
    real_is_gsm8k = np.array([False] * len(others) + [True] * len(held_out))
    rng = random.Random(0)
    grown, grown_is_gsm8k = list(real), list(real_is_gsm8k)
    while len(grown) < args.n:
        i = rng.randrange(len(real))
        grown.append(perturb(real[i], rng))
        grown_is_gsm8k.append(real_is_gsm8k[i])
    grown_is_gsm8k = np.array(grown_is_gsm8k)
    settings = DsirSettings()
    print(f"### DSIR: target = {len(target):,} gsm8k_train questions; k = 10% of the pool\n")
    rows, timing = [], []
    for name, pool, is_gsm8k in (("real pool", real, real_is_gsm8k), (f"grown to {args.n:,}", grown, grown_is_gsm8k)):
        k = len(pool) // 10 if name == "real pool" else args.k
        t0 = time.perf_counter()
        model = ImportanceModel.fit(target, pool, settings)
        t1 = time.perf_counter()
        log_w = model.log_weights(pool)
        t2 = time.perf_counter()
        picked = resample(log_w, k, seed=0)
        t3 = time.perf_counter()
        ngrams = HashedNgrams(settings)
        shift = model.shift(ngrams.counts(pool), ngrams.counts(pool[i] for i in picked))
        floor = kl_divergence(model.target, distribution(ngrams.counts(held_out), settings.smoothing))
        same = np.array_equal(picked, resample(log_w, k, seed=0))
        overlap = len(set(picked.tolist()) & set(resample(log_w, k, seed=1).tolist())) / k
        rows.append(
            [
                name,
                len(pool),
                k,
                f"{is_gsm8k.mean():.1%}",
                f"{is_gsm8k[picked].mean():.1%}",
                f"{shift['kl_before']:.4f}",
                f"{shift['kl_after']:.4f}",
                f"{shift['kl_reduction']:.1%}",
                f"{floor:.4f}",
                "yes" if same else "NO",
                f"{overlap:.1%}",
            ]
        )
        timing.append(
            [
                name,
                len(pool),
                f"{t1 - t0:.2f}",
                f"{(len(target) + len(pool)) / (t1 - t0):,.0f}",
                f"{t2 - t1:.2f}",
                f"{len(pool) / (t2 - t1):,.0f}",
                f"{t3 - t2:.3f}",
                f"{len(pool) / (t3 - t0):,.0f}",
            ]
        )
    table(
        [
            "pool",
            "texts",
            "k",
            "gsm8k share in pool",
            "in selection",
            "KL before (nats)",
            "KL after",
            "KL reduction",
            "KL to held-out gsm8k alone",
            "same seed identical",
            "overlap with seed 1",
        ],
        rows,
    )
    table(
        [
            "pool",
            "texts",
            "fit s (target + pool)",
            "fit texts/s",
            "weights s",
            "weights texts/s",
            "resample s",
            "end to end pool texts/s",
        ],
        timing,
    )


# --- diversity ---------------------------------------------------------------------------------


def unique_instructions(n: int, seed: int = 0) -> list[tuple[str, str, float]]:
    """(source, instruction, quality) of n random unique pool instructions."""
    from infinstruct.curate.scoring.signals import measure_signals, quality_score

    seen, out = set(), []
    for source, turns in conversations():
        text = next(c for r, c in turns if r == "user")
        if text not in seen:  # AlpacaEval's 8 files share 805 prompts: named once, as alpaca_eval
            seen.add(text)
            out.append(
                (
                    "alpaca_eval" if source.startswith("alpaca_eval") else source,
                    text,
                    quality_score(measure_signals(turns)),
                )
            )
    return random.Random(seed).sample(out, min(n, len(out)))


def run_diversity(args) -> None:
    from infinstruct.curate.selection.diversity import diversity_report, greedy_select
    from infinstruct.ml.embeddings import encode

    sample = unique_instructions(args.n)
    texts = [t for _, t, _ in sample]
    scores = np.array([q for _, _, q in sample])
    ids = [f"r{i:06d}" for i in range(len(sample))]
    encode(texts[:8])
    t = time.perf_counter()
    vectors = encode(texts)
    enc_s = time.perf_counter() - t
    quota = len(texts) // 2
    print(
        f"### Diversity: {len(texts):,} unique pool instructions, MiniLM {len(texts) / enc_s:,.0f} texts/s "
        f"({enc_s:.0f} s); quota {quota:,}\n"
    )
    whole = diversity_report(vectors)
    rng = np.random.default_rng(0)
    random_pick = rng.choice(len(texts), quota, replace=False)
    rand = diversity_report(vectors[random_pick])
    rows = [
        ["all candidates", whole["n"], "", whole["mean_nn_cosine"], whole["p95_nn_cosine"], "", ""],
        [
            "random sample",
            rand["n"],
            "",
            rand["mean_nn_cosine"],
            rand["p95_nn_cosine"],
            f"{scores[random_pick].mean():.3f}",
            "",
        ],
    ]
    for threshold in (0.6, 0.7, 0.8, 0.9):
        t = time.perf_counter()
        result = greedy_select(ids, scores, vectors, threshold, quota)
        dt = time.perf_counter() - t
        chosen = np.array([int(i[1:]) for i in result.selected])
        rep = diversity_report(vectors[chosen])
        c = result.counts()
        rows.append(
            [
                f"greedy, threshold {threshold}",
                rep["n"],
                f"{c['too_similar']:,} too similar",
                rep["mean_nn_cosine"],
                rep["p95_nn_cosine"],
                f"{scores[chosen].mean():.3f}",
                f"{len(texts) / dt:,.0f}",
            ]
        )
    table(["set", "size", "rejected", "mean NN cosine", "p95 NN cosine", "mean quality", "candidates/s"], rows)

    # throughput at scale: noisy copies of the real vectors
    n = args.scale
    base = vectors[rng.integers(0, len(vectors), n)]
    noisy = base + rng.standard_normal(base.shape).astype(np.float32) * 0.024
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    cos_to_source = float(np.mean(np.einsum("ij,ij->i", noisy, base)))
    big_ids = [f"s{i:08d}" for i in range(n)]
    big_scores = rng.random(n)
    rows = []
    for threshold in (0.8, 0.9):
        t = time.perf_counter()
        result = greedy_select(big_ids, big_scores, noisy, threshold, n // 10)
        dt = time.perf_counter() - t
        c = result.counts()
        walked = c["selected"] + c["too_similar"]
        rows.append(
            [n, f"{threshold}", n // 10, c["selected"], walked, f"{dt:.1f}", f"{walked / dt:,.0f}", f"{n / dt:,.0f}"]
        )
    print(
        f"At scale: {n:,} vectors = real ones + noise (mean cosine {cos_to_source:.2f} to their source), "
        f"quota 10%, exact numpy index\n"
    )
    table(
        ["candidates", "threshold", "quota", "selected", "walked (compared)", "seconds", "walked/s", "candidates/s"],
        rows,
    )


# --- domains -----------------------------------------------------------------------------------


def run_domains(args) -> None:
    from infinstruct.curate.scoring.domains import DomainClassifier
    from infinstruct.ml.embeddings import encode

    sample = unique_instructions(args.n, seed=1)
    texts = [t for _, t, _ in sample]
    vectors = encode(texts)
    classifier = DomainClassifier()
    classifier.centroids  # built before timing
    t = time.perf_counter()
    labels = classifier.classify(texts, vectors)
    dt = time.perf_counter() - t
    print(
        f"### Domains: {len(texts):,} unique pool instructions, classified with vectors given: "
        f"{len(texts) / dt:,.0f} records/s (rules + centroids, excluding the embedding)\n"
    )
    by_source: dict[str, Counter] = {}
    for (source, _, _), label in zip(sample, labels):
        by_source.setdefault(source, Counter())[label.domain] += 1
    rows = []
    for source, counts in sorted(by_source.items()):
        total = sum(counts.values())
        rows.append([source, total] + [f"{counts[d] / total:.0%}" for d in classifier.names])
    table(["source", "records"] + classifier.names, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["scoring", "dsir", "diversity", "domains", "all"])
    parser.add_argument("--n", type=int)
    parser.add_argument("--k", type=int, default=20_000)
    parser.add_argument("--scale", type=int, default=100_000)
    args = parser.parse_args()
    if not (DATA / "pool").is_dir():
        sys.exit(f"{DATA / 'pool'} is not present")
    print(f"- Date: {time.strftime('%a %b %d %H:%M:%S UTC %Y', time.gmtime())}\n- Machine: {machine()}\n")
    steps = ["scoring", "dsir", "diversity", "domains"] if args.what == "all" else [args.what]
    for step in steps:
        step_args = argparse.Namespace(**vars(args))
        if step_args.n is None:
            step_args.n = 200_000 if step == "dsir" else 2_000
        {"scoring": run_scoring, "dsir": run_dsir, "diversity": run_diversity, "domains": run_domains}[step](step_args)


if __name__ == "__main__":
    main()
