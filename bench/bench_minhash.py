"""Speed and quality of the MinHash-LSH near-duplicate core (include/infinstruct/curate/near_dedup/minhash.py).

    pip install -r bench/requirements.txt        # datasketch, the baseline
    python bench/bench_minhash.py [--n 200000] [--baseline-limit N] [--sweep] [--seed 0]

Speed: N synthetic prompts (10-60 words from a Zipf-weighted English word list, random.Random(seed));
signatures + band keys with rensa vs a straightforward per-record datasketch loop (one MinHash per
record, `update` per shingle; same shingles, same num_perm) and its `update_batch` variant, in one run.
`--baseline-limit` times the (slow, linear) baselines on a prefix only, for quick iterations.

Quality: real instructions from ../shared/data/pool (synthetic prompts if absent), deduplicated, with
planted near-copies per edit kind, plus templated prompts that differ in one essential word (never
duplicates). Prints recall and precision per edit kind and the share of templated sibling pairs that
get confirmed, at the default settings; `--sweep` prints the grid the defaults were chosen from.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate_pool import WORDS  # noqa: E402  (the same word list as the pool generator)
from infinstruct.curate.near_dedup.minhash import (  # noqa: E402
    NearDupSettings,
    band_keys,
    candidate_pairs,
    clusters,
    confirm_pairs,
    essential_words,
    shingle_text,
    signatures,
    text_words,
)

POOL = Path(__file__).resolve().parents[2] / "shared" / "data" / "pool"
OPENERS = (
    "Explain",
    "Describe",
    "Write",
    "Summarize",
    "List",
    "Give",
    "Compare",
    "Identify",
    "Suggest",
    "Rewrite",
    "Classify",
    "Generate",
    "Outline",
    "Create",
    "What is",
    "How does",
    "Why do",
    "How can",
)


# --- data ---------------------------------------------------------------------------------------------


def synthetic_prompts(n: int, seed: int) -> list[str]:
    """Prompts of 10-60 words: an opener, Zipf-weighted words, a comma now and then, one or two sentences."""
    rng = random.Random(seed)
    vocab = list(dict.fromkeys(WORDS))
    cum = list(itertools.accumulate(1.0 / (rank + 3) for rank in range(len(vocab))))
    out = []
    for _ in range(n):
        words = rng.choices(vocab, cum_weights=cum, k=rng.randint(10, 60))
        words[0] = rng.choice(OPENERS) + " " + words[0]
        if len(words) > 12 and rng.random() < 0.5:
            words[rng.randrange(4, len(words) - 4)] += rng.choice((",", ".", ";"))
        out.append(" ".join(words) + rng.choice(("?", ".", ".", ":")))
    return out


def real_instructions() -> list[str]:
    """Unique instructions (plus input) from the shared pool: AlpacaEval, Code Alpaca, GSM8K, Self-Instruct."""
    texts = []
    for path in sorted(POOL.glob("*.jsonl")):
        for line in path.open():
            rec = json.loads(line)
            if "question" in rec:
                texts.append(rec["question"])
            elif "instruction" in rec:
                inp = rec.get("input") or ""
                texts.append(rec["instruction"] + ("\n" + inp if inp else ""))
            elif "conversations" in rec:
                texts.append(rec["conversations"][0]["value"])
    seen, unique = set(), []
    for t in texts:
        key = " ".join(text_words(t))
        if key and key not in seen:
            seen.add(key)
            unique.append(t)
    return unique


APPENDED = [
    "Please explain your reasoning step by step.",
    "Keep the answer under one hundred words.",
    "Use simple language that a beginner can follow.",
    "Format your answer as a bulleted list.",
    "Answer in a friendly and professional tone.",
    "Give at least two examples in your answer.",
    "Make sure to double check your final answer.",
    "Write the response in formal academic English.",
    "Include a short summary at the end.",
    "Do not use any technical jargon in the answer.",
    "Think carefully before you respond to this.",
    "Respond in no more than three sentences.",
]
SYNONYMS = {
    "write": "compose",
    "explain": "describe",
    "short": "brief",
    "give": "provide",
    "list": "enumerate",
    "make": "create",
    "find": "determine",
    "show": "demonstrate",
    "use": "utilize",
    "help": "assist",
    "big": "large",
    "small": "little",
    "answer": "response",
    "example": "instance",
    "many": "numerous",
    "calculate": "compute",
    "total": "overall",
    "buy": "purchase",
    "each": "every",
    "begin": "start",
    "important": "significant",
    "create": "generate",
    "describe": "explain",
    "good": "great",
    "how": "in what way",
    "simple": "basic",
    "quickly": "rapidly",
    "story": "tale",
    "about": "regarding",
}


def _words(rng: random.Random, vocab: list[str], k: int) -> list[str]:
    return [rng.choice(vocab) for _ in range(k)]


def edit(text: str, kind: str, rng: random.Random, vocab: list[str]) -> str:
    """A near-copy of `text` made by one graded edit kind."""
    words = text.split()
    essential = essential_words(text)
    ordinary = [i for i, w in enumerate(words) if not set(text_words(w)) & essential] or list(range(len(words)))
    if kind == "whitespace_case":
        styled = [
            w.upper() if r < 0.15 else w.lower() if r < 0.5 else w.capitalize() if r < 0.6 else w
            for w, r in ((w, rng.random()) for w in words)
        ]
        seps = [rng.choice(("  ", "\n", "\t", " \n ")) if rng.random() < 0.2 else " " for _ in styled]
        return "  " + "".join(w + s for w, s in zip(styled, seps)).rstrip(".?!") + rng.choice(("", "!", "?"))
    if kind in ("substituted_words", "appended_and_swapped"):
        for _ in range(rng.randint(2, 3)):
            i = rng.choice(ordinary)  # a number, name or quoted word changed makes another prompt
            if rng.random() < 0.5 and i + 1 < len(words):
                words[i], words[i + 1] = words[i + 1], words[i]
            else:
                words[i] = rng.choice(vocab)
    if kind == "light_rewording":
        changes = 0
        for i, w in enumerate(words):
            syn = SYNONYMS.get(w.lower().strip(".,?!:"))
            if syn and changes < 3 and rng.random() < 0.7:
                words[i] = syn
                changes += 1
        drop = [i for i, w in enumerate(words) if w.lower() in ("the", "a", "please", "some", "of")]
        if drop:
            del words[rng.choice(drop)]
            changes += 1
        if changes < 2:
            words.insert(0, rng.choice(("Please", "Kindly", "Now,")))
        if changes < 1:
            words[rng.randrange(len(words))] = rng.choice(vocab)
    text = " ".join(words)
    if kind in ("appended_sentence", "appended_and_swapped"):  # after a sentence end, or on a new line
        text += (" " if text.endswith((".", "?", "!")) else "\n") + rng.choice(APPENDED)
    return text


EDIT_KINDS = ("whitespace_case", "appended_sentence", "substituted_words", "light_rewording", "appended_and_swapped")

TEMPLATES = [  # (template, fillers): one essential word differs between siblings
    ("Translate '{}' into French.", ("cat", "dog", "house", "river", "apple", "window", "friend", "book")),
    ("What is the capital of {}?", ("France", "Spain", "Kenya", "Peru", "Japan", "Canada", "Egypt", "Chile")),
    ('Give me three synonyms for the word "{}".', ("happy", "fast", "angry", "small", "bright", "calm")),
    ("Write a haiku about {}.", ("autumn", "the sea", "coffee", "snow", "friendship", "mountains")),
    ("What is {} multiplied by 7?", ("12", "15", "23", "48", "91", "105")),
    ("Name five famous paintings by {}.", ("Picasso", "Monet", "Rembrandt", "Vermeer", "Klimt", "Goya")),
    (
        "Write a Python function that returns the {} of a list of numbers.",
        ("sum", "average", "median", "maximum", "minimum", "product", "variance"),
    ),
    (
        "Explain the main causes of the {} and describe how it changed the political map of Europe in the "
        "decades that followed.",
        ("First World War", "French Revolution", "Thirty Years War", "Cold War"),
    ),
    (
        "Write a 300-word blog post about the benefits of {} for busy office workers, with three practical "
        "tips they can start using this week and a short encouraging conclusion.",
        ("yoga", "meditation", "running", "cycling", "swimming", "journaling", "gardening"),
    ),
    (
        "You are a helpful travel assistant. Plan a relaxed five-day itinerary for a couple visiting {} in "
        "spring, including one day trip, two local restaurants per day and a rainy-day backup plan.",
        ("Lisbon", "Kyoto", "Vienna", "Istanbul", "Montreal", "Edinburgh", "Seville"),
    ),
    (
        "Summarize the following paragraph in one sentence for a {} audience: Renewable energy sources such "
        "as wind and solar power have become cheaper than coal in most countries over the last decade.",
        ("young", "technical", "general", "business", "political"),
    ),
    (
        "Write a SQL query that returns the ten customers with the highest total {} in 2023 from the orders "
        "table, joined with the customers table on customer_id.",
        ("revenue", "discount", "refunds", "quantity"),
    ),
]


def build_corpus(bases: list[str], per_kind: int, seed: int):
    """Texts, a ground-truth group per text, the kind of each text, and which texts are templated."""
    rng = random.Random(seed)
    vocab = sorted({w for t in bases[:5000] for w in t.split() if w.isalpha() and w.islower()})
    order = list(range(len(bases)))
    rng.shuffle(order)
    texts, group, kind = list(bases), list(range(len(bases))), ["base"] * len(bases)
    for k, name in enumerate(EDIT_KINDS):  # a disjoint set of bases per kind
        for b in order[k * per_kind : (k + 1) * per_kind]:
            texts.append(edit(bases[b], name, rng, vocab))
            group.append(b)
            kind.append(name)
    next_group = len(bases)
    for template, fillers in TEMPLATES:
        for f in fillers:
            texts.append(template.format(f))
            group.append(next_group)
            next_group += 1
            kind.append("templated_long" if len(template.split()) >= 15 else "templated_short")
    return texts, np.array(group), np.array(kind)


# --- quality ------------------------------------------------------------------------------------------


def evaluate(texts, sigs, keys, s: NearDupSettings, group, kind):
    conf, _ = confirm_pairs(candidate_pairs(keys).within, sigs, texts, s)
    true = group[conf[:, 0]] == group[conf[:, 1]]
    rows = {}
    for name in EDIT_KINDS:
        planted = int((kind == name).sum())
        involved = (kind[conf[:, 0]] == name) | (kind[conf[:, 1]] == name)
        tp = int((involved & true).sum())
        rows[name] = (tp / planted if planted else float("nan"), tp / max(int(involved.sum()), 1), planted)
    both_base = (kind[conf[:, 0]] == "base") & (kind[conf[:, 1]] == "base")
    templ = {}
    for name in ("templated_short", "templated_long"):
        members = np.flatnonzero(kind == name)
        siblings = sum(
            len(f) * (len(f) - 1) // 2 for t, f in TEMPLATES if (len(t.split()) >= 15) == (name == "templated_long")
        )
        wrong = int(((kind[conf[:, 0]] == name) & (kind[conf[:, 1]] == name)).sum())
        templ[name] = (wrong, siblings, len(members))
    edits = ~(np.char.startswith(kind[conf[:, 0]], "templated") & np.char.startswith(kind[conf[:, 1]], "templated"))
    precision = float(true[edits].sum() / max(int(edits.sum()), 1))
    recall = float(np.mean([rows[k][0] for k in EDIT_KINDS]))
    return rows, templ, precision, recall, int(both_base.sum()), conf[both_base & ~true]


def quality(texts, group, kind, s: NearDupSettings, show_examples: bool = True):
    sigs = signatures(texts, s)
    rows, templ, precision, recall, base_pairs, base_conf = evaluate(texts, sigs, band_keys(sigs, s), s, group, kind)
    print(f"\nQuality at {s.model_dump()}  ({len(texts)} texts)")
    print(f"{'edit kind':<22}{'planted':>8}{'recall':>8}{'precision':>10}")
    for name, (rec, prec, planted) in rows.items():
        print(f"{name:<22}{planted:>8}{rec:>8.3f}{prec:>10.3f}")
    print(f"{'all edits (macro)':<22}{'':>8}{recall:>8.3f}{precision:>10.3f}   (all pairs but templated-templated)")
    print(f"base-base pairs confirmed (natural near-duplicates or false positives in real data): {base_pairs}")
    for name, (wrong, siblings, members) in templ.items():
        print(
            f"{name:<22} {members} prompts, {siblings} sibling pairs (one essential word apart), "
            f"wrongly confirmed: {wrong} ({wrong / siblings:.1%})"
        )
    if show_examples and len(base_conf):
        print("examples of confirmed base-base pairs:")
        for i, j in base_conf[:3]:
            print(f"  {texts[i][:90]!r}\n  {texts[j][:90]!r}")


LAYOUTS = ((64, 32, 2), (96, 32, 3), (128, 32, 4), (128, 64, 2), (160, 32, 5), (256, 64, 4))  # perms, bands, rows


def sweep(texts, group, kind, out=sys.stdout):
    """Recall per kind and precision over a grid; prints the best recall at precision >= 0.95 with at
    most 32 bands (each band is a row per record in the Postgres key table)."""
    print(
        f"\nSweep ({len(texts)} texts): g = essential-word guard; recall = macro over edit kinds; "
        "bb = base-base pairs confirmed; tS/tL = templated sibling pairs confirmed (of 137 / 64)",
        file=out,
    )
    print(
        f"{'w':>2}{'perm':>5}{'b x r':>7}{'thr':>6}{'g':>2}{'recall':>7}{'prec':>6}{'bb':>4}{'tS':>4}{'tL':>4} "
        + " ".join(f"{k[:10]:>10}" for k in EDIT_KINDS),
        file=out,
    )
    best = []
    for w, (p, b, r) in itertools.product((2, 3, 4), LAYOUTS):
        s0 = NearDupSettings(shingle=w, num_perm=p, bands=b, rows=r)
        sigs = signatures(texts, s0)
        keys = band_keys(sigs, s0)
        for thr, guard in itertools.product((0.3, 0.35, 0.4, 0.45, 0.5, 0.6), (True, False)):
            if not guard and thr < 0.5:
                continue
            s = s0.model_copy(update={"threshold": thr, "essential_word_guard": guard})
            rows, templ, precision, recall, bb, _ = evaluate(texts, sigs, keys, s, group, kind)
            best.append((recall, precision, s))
            print(
                f"{w:>2}{p:>5}{f'{b}x{r}':>7}{thr:>6}{'G' if guard else '-':>2}{recall:>7.3f}{precision:>6.3f}{bb:>4}"
                f"{templ['templated_short'][0]:>4}{templ['templated_long'][0]:>4} "
                + " ".join(f"{rows[k][0]:>10.3f}" for k in EDIT_KINDS),
                file=out,
                flush=True,
            )
    for floor in (0.95, 0.975):
        ok = [x for x in best if x[1] >= floor and x[2].bands <= 32]
        r, p, s = max(ok, key=lambda x: (round(x[0], 2), x[1]))
        print(
            f"best recall at precision >= {floor} and <= 32 bands: {r:.3f} (precision {p:.3f}) with {s.model_dump()}",
            file=out,
        )
    print(
        "defaults: the second line. The corpus is ~1/3 planted copies; a real pool has fewer duplicates, so "
        "the same false pairs weigh more there: keep a precision margin (and leave room for the semantic "
        "stage's own false pairs).",
        file=out,
    )


# --- speed --------------------------------------------------------------------------------------------


def datasketch_loop(texts, s: NearDupSettings, batch: bool) -> float:
    from datasketch import MinHash

    t0 = time.perf_counter()
    for text in texts:
        m = MinHash(num_perm=s.num_perm, seed=s.seed)
        if batch:
            m.update_batch([sh.encode("utf8") for sh in shingle_text(text, s.shingle)])
        else:
            for sh in shingle_text(text, s.shingle):
                m.update(sh.encode("utf8"))
        m.hashvalues  # noqa: B018  (the signature a store would read)
    return len(texts) / (time.perf_counter() - t0)


def speed(n: int, seed: int, baseline_limit: int | None, s: NearDupSettings) -> None:
    texts = synthetic_prompts(n, seed)
    rng = random.Random(seed)
    vocab = list(dict.fromkeys(WORDS))
    for i in rng.sample(range(n // 2, n), n // 20):  # 5% near-copies of earlier prompts
        texts[i] = edit(texts[rng.randrange(i)], rng.choice(EDIT_KINDS), rng, vocab)
    words = np.array([len(t.split()) for t in texts])
    print(
        f"Speed: {n} synthetic prompts (5% near-copies), {words.min()}-{words.max()} words "
        f"(mean {words.mean():.0f}); "
        f"shingle={s.shingle}, num_perm={s.num_perm}, bands={s.bands}x{s.rows}; "
        f"{platform.processor() or platform.machine()}, python {platform.python_version()}"
    )
    t0 = time.perf_counter()
    sigs = signatures(texts, s)
    t1 = time.perf_counter()
    keys = band_keys(sigs, s)
    t2 = time.perf_counter()
    cand = candidate_pairs(keys).within
    t3 = time.perf_counter()
    conf, _ = confirm_pairs(cand, sigs, texts, s)
    t4 = time.perf_counter()
    clusters(n, conf)
    t5 = time.perf_counter()
    ours = n / (t2 - t0)
    base_texts = texts[:baseline_limit] if baseline_limit else texts
    note = f" (first {len(base_texts)})" if baseline_limit else ""
    naive = datasketch_loop(base_texts, s, batch=False)
    batched = datasketch_loop(base_texts, s, batch=True)
    print(f"{'step':<56}{'seconds':>9}{'records/s':>14}")
    for name, dt in (
        ("signatures (rensa bulk R-MinHash)", t1 - t0),
        ("band keys (numpy)", t2 - t1),
        (f"candidate pairs ({len(cand)} pairs)", t3 - t2),
        (f"confirm by Jaccard estimate ({len(conf)} pairs)", t4 - t3),
        ("clusters", t5 - t4),
    ):
        print(f"{name:<56}{dt:>9.2f}{n / max(dt, 1e-6):>14,.0f}")
    print(f"{'signatures + band keys':<56}{t2 - t0:>9.2f}{ours:>14,.0f}")
    print(f"{'all of the above':<56}{t5 - t0:>9.2f}{n / (t5 - t0):>14,.0f}")
    print(f"{'datasketch loop, MinHash.update' + note:<56}{len(base_texts) / naive:>9.2f}{naive:>14,.0f}")
    print(f"{'datasketch loop, MinHash.update_batch' + note:<56}{len(base_texts) / batched:>9.2f}{batched:>14,.0f}")
    print(
        f"speed-up of signatures + band keys: {ours / naive:.1f}x the update loop, "
        f"{ours / batched:.1f}x the update_batch loop"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--baseline-limit", type=int, default=None)
    ap.add_argument("--per-kind", type=int, default=1000)
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    args = ap.parse_args()
    s = NearDupSettings()
    if not args.skip_speed:
        speed(args.n, args.seed, args.baseline_limit, s)
    bases = real_instructions() if POOL.is_dir() else synthetic_prompts(10_000, args.seed + 1)
    texts, group, kind = build_corpus(bases, args.per_kind, args.seed)
    print(
        f"\nQuality corpus: {len(bases)} unique {'real instructions' if POOL.is_dir() else 'synthetic prompts'}"
        f" + {args.per_kind} planted copies per edit kind + {sum(len(f) for _, f in TEMPLATES)} templated prompts"
    )
    if args.sweep:
        sweep(texts, group, kind)
    quality(texts, group, kind, s)


if __name__ == "__main__":
    main()
