"""A labelled evaluation corpus for the Phase 1 quality stages (issue 3), built from real text.

    .venv/bin/python bench/eval_corpus.py bench/out/quality/corpus [--seed 0] [--data ../shared/data]

Deterministic for a seed (`random.Random(seed)`, sorted inputs). Reads ../shared/data at run time and
writes only into the output folder (never into the repository):

* four Alpaca JSONL files, one per origin of their clean base: `code_alpaca.jsonl`, `gsm8k_train.jsonl`,
  `self_instruct.jsonl`, `alpaca_eval.jsonl` (each shuffled; planted records are mixed into them);
* `labels.jsonl`, one row per line of those files: `file`, `line` (1-based), `category`, `variant`,
  `label` (= "category:variant", or "clean"/"negative_sibling"), where it comes from (`pool`: pool
  file and line; `origin_file`/`origin_line`: the original a near-copy was made from, and on the
  original the line of its copy; `benchmark`/`item_id`: the benchmark item a contaminated record
  carries, with the ids the pipeline uses: GSM8K line number, MT-Bench `81#1`, `HumanEval/0`), and
  variant details (`detail`);
* `summary.json`: counts per label and the pool records left out (and why).

Categories
    clean               real pool records (Code Alpaca, GSM8K train, Self-Instruct seeds, AlpacaEval
                        with Claude 2's answers); repeated instructions and empty answers left out. Variants:
                        `plain`; `original` (a near-copy was made from it); `real_twin` (another clean
                        record shares >= 50% of its word 2-shingles: a real near-duplicate or a real
                        template sibling, which the labels cannot tell apart).
    near_copy:<edit>    a copy of a clean record's instruction (its input and answer kept; AlpacaEval
                        copies take another model's answer) with one graded edit: `whitespace`
                        (spacing, line breaks, lower case), `appended_phrase` (a request or greeting added),
                        `swapped_words` (1-3 adjacent words swapped), `light_rewording` (2-4 synonyms,
                        "Please", contractions), `combined` (all of them). Numbers, names and quoted
                        words are never edited. Its original is in the same file.
    negative_sibling    templated prompts that differ in one essential word (a name, number, quoted
                        title or a plain word): different tasks, never duplicates. Variant = the kind
                        of word that differs.
    lookalike:<task>/<language>  short programming prompts, one task in several languages, each phrased
                        4 ways (`detail`: task, language, phrasing): the phrasings of one language are
                        near-duplicates of each other, and of the other languages' only in shingles
                        (C / C++ / C#, Java / JavaScript). Every task/language must keep a prompt; a drop
                        must name a prompt of its own task and language.
    contam:<variant>    an item of GSM8K test, MT-Bench or HumanEval: `verbatim`; `wrapped` in a longer
                        prompt; `short_in_preamble` (MT-Bench turns under 13 words and GSM8K questions
                        of <= 22 words, inside a preamble); `paraphrased` (synonyms for common words,
                        some function words dropped, every number changed; GSM8K and MT-Bench);
                        `code_renamed` (HumanEval with the function and its arguments renamed in prompt
                        and answer, half with a one-line request in front). One item per record, every
                        item used at most once. `in_pool`: pool records found (by an independent 10-gram
                        check, not the library's) to hold a benchmark item, kept and labelled: AlpacaEval's
                        MT-Bench 81 and 130, GSM8K train questions written on a test question's template.
    junk:<kind>         one kind per rule of include/infinstruct/curate/rules/filters.py, made without the library:
                        empty_or_short, too_long, garbage, language, refusal, echo, repetition,
                        repeated_lines, truncated (sub-variants in `detail`).

Planted records that are not junk (near-copies and their originals, siblings, contaminated records)
are checked with `infinstruct.curate.rules.filters.check` at the default settings and re-drawn if a rule would drop
them, so a miss in their stage is not hidden by an earlier stage. Junk is never checked with the
library. Fillers for planted records (answers, junk instructions) come from pool records kept apart
from the clean set, so no planted record repeats a clean one.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FILES = ("code_alpaca", "gsm8k_train", "self_instruct", "alpaca_eval")
BASE_SIZE = {"code_alpaca": 900, "gsm8k_train": 900, "self_instruct": 175, "alpaca_eval": 600}
ALPACA_EVAL_BASE = "alpaca_eval_claude-2.alpaca.jsonl"
ALPACA_EVAL_DONORS = (
    "alpaca_eval_Meta-Llama-3-8B-Instruct.alpaca.jsonl",
    "alpaca_eval_Infinity-Instruct-7M-Gen-Llama3_1-8B.alpaca.jsonl",
    "alpaca_eval_vicuna-7b.alpaca.jsonl",
)
NEAR_EDITS = ("whitespace", "appended_phrase", "swapped_words", "light_rewording", "combined")
NEAR_PER_EDIT = 120
JUNK_PER_KIND = 40
JUNK_KINDS = (
    "empty_or_short",
    "too_long",
    "garbage",
    "language",
    "refusal",
    "echo",
    "repetition",
    "repeated_lines",
    "truncated",
)  # = infinstruct.curate.rules.filters.Rule, in its order
# contaminated records per (benchmark, variant); each benchmark item is used once
CONTAM_PLAN = {
    ("gsm8k_test", "verbatim"): 60,
    ("gsm8k_test", "wrapped"): 60,
    ("gsm8k_test", "paraphrased"): 90,
    ("gsm8k_test", "short_in_preamble"): 20,
    ("mt_bench", "verbatim"): 40,
    ("mt_bench", "wrapped"): 40,
    ("mt_bench", "paraphrased"): 40,
    ("mt_bench", "short_in_preamble"): 40,
    ("humaneval", "verbatim"): 40,
    ("humaneval", "wrapped"): 40,
    ("humaneval", "code_renamed"): 84,
}
SHORT_GSM8K_WORDS = 22  # GSM8K questions this short (words, numbers included) count as short items
CONTAM_FILE = {"gsm8k_test": "gsm8k_train", "mt_bench": "alpaca_eval", "humaneval": "code_alpaca"}


@dataclass
class Rec:
    """One Alpaca record and its label."""

    instruction: str
    input: str
    output: str
    category: str
    variant: str
    pool: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    benchmark: str | None = None
    item_id: str | None = None
    origin: "Rec | None" = None  # near-copy -> its original; original -> its copy
    file: str = ""
    line: int = 0

    @property
    def user(self) -> str:
        return self.instruction + ("\n\n" + self.input if self.input else "")

    @property
    def label(self) -> str:
        return self.category if self.category in ("clean", "negative_sibling") else f"{self.category}:{self.variant}"


# --- text helpers ------------------------------------------------------------------------------

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def shingles(text: str, k: int = 2) -> set[str]:
    w = words(text)
    return {" ".join(w[i : i + k]) for i in range(max(len(w) - k + 1, 1))}


def essential(token: str, first: bool) -> bool:
    """A number, a name (capitalised, not sentence-initial), a quoted or code-like token: never edited."""
    core = token.strip(".,;:!?()[]")
    return (
        any(c.isdigit() for c in token)
        or (not first and core[:1].isupper())
        or any(c in token for c in "\"'`“”‘’_=()[]{}<>/\\")
        or not core.isalpha()
    )


def ordinary_positions(tokens: list[str]) -> list[int]:
    return [i for i, t in enumerate(tokens) if not essential(t, i == 0 or tokens[i - 1].endswith((".", "?", "!", ":")))]


# --- pool --------------------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_pool(data: Path) -> dict[str, list[Rec]]:
    """Real records per origin (file order), as Alpaca records labelled clean."""
    pool = data / "pool"
    out: dict[str, list[Rec]] = {}
    out["code_alpaca"] = [
        Rec(r["instruction"], r.get("input") or "", r["output"], "clean", "plain", f"code_alpaca_2k.alpaca.jsonl:{i}")
        for i, r in enumerate(read_jsonl(pool / "code_alpaca_2k.alpaca.jsonl"), 1)
    ]
    out["gsm8k_train"] = [
        Rec(r["question"], "", r["answer"], "clean", "plain", f"gsm8k_train.custom.jsonl:{i}")
        for i, r in enumerate(read_jsonl(pool / "gsm8k_train.custom.jsonl"), 1)
    ]
    out["self_instruct"] = [
        Rec(
            r["instruction"],
            r["instances"][0]["input"] or "",
            r["instances"][0]["output"],
            "clean",
            "plain",
            f"self_instruct_seed.custom.jsonl:{i}",
        )
        for i, r in enumerate(read_jsonl(pool / "self_instruct_seed.custom.jsonl"), 1)
    ]
    out["alpaca_eval"] = [
        Rec(r["instruction"], r.get("input") or "", r["output"], "clean", "plain", f"{ALPACA_EVAL_BASE}:{i}")
        for i, r in enumerate(read_jsonl(pool / ALPACA_EVAL_BASE), 1)
    ]
    return out


def alpaca_eval_answers(data: Path) -> dict[str, list[tuple[str, str]]]:
    """instruction -> [(donor file:line, answer)] from other AlpacaEval models."""
    out: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for name in ALPACA_EVAL_DONORS:
        for i, r in enumerate(read_jsonl(data / "pool" / name), 1):
            out[r["instruction"]].append((f"{name}:{i}", r["output"]))
    return out


# --- benchmarks --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    benchmark: str
    item_id: str
    text: str
    answer: str = ""  # GSM8K answer / HumanEval canonical solution
    entry_point: str = ""


def load_benchmarks(data: Path) -> list[Item]:
    """Items with the ids the pipeline's decontamination uses (see README: benchmarks)."""
    bench = data / "benchmarks"
    items = [
        Item("gsm8k_test", str(i), r["question"], r["answer"])
        for i, r in enumerate(read_jsonl(bench / "gsm8k_test.jsonl"), 1)
    ]
    for r in read_jsonl(bench / "mt_bench_questions.jsonl"):
        turns = [t for t in r["turns"] if t.strip()]
        for k, t in enumerate(turns, 1):
            items.append(Item("mt_bench", f"{r['question_id']}#{k}" if len(turns) > 1 else str(r["question_id"]), t))
    items += [
        Item("humaneval", r["task_id"], r["prompt"], r["canonical_solution"], r["entry_point"])
        for r in read_jsonl(bench / "humaneval.jsonl")
    ]
    return items


def benchmark_hits(texts: list[str], items: list[Item], n: int = 10, share: float = 0.3) -> dict[int, str]:
    """Texts that hold a benchmark item (an independent check, not the library's): >= `share` of an
    item's word n-grams, or a shorter item whole. Returns text index -> 'benchmark:item'."""
    index: dict[tuple[str, ...], set[int]] = defaultdict(set)
    totals, short = [], []
    for j, item in enumerate(items):
        w = words(item.text)
        grams = {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}
        totals.append(len(grams))
        for g in grams:
            index[g].add(j)
        if not grams and len(w) >= 4:
            short.append((j, " ".join(w)))
    hits = {}
    for t, text in enumerate(texts):
        w = words(text)
        count: Counter = Counter()
        for g in {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}:
            count.update(index.get(g, ()))
        found = [j for j, c in count.items() if c >= share * totals[j]]
        joined = " " + " ".join(w) + " "
        found += [j for j, s in short if f" {s} " in joined]
        if found:
            hits[t] = ", ".join(f"{items[j].benchmark}:{items[j].item_id}" for j in found)
    return hits


# --- the rules' verdict on planted non-junk records --------------------------------------------

_RULE_SETTINGS = None


def passes_rules(user: str, answer: str) -> bool:
    """True when the default rule filters keep (user, answer): used only for non-junk planted records."""
    global _RULE_SETTINGS
    from infinstruct.curate.rules.filters import RuleSettings, check

    _RULE_SETTINGS = _RULE_SETTINGS or RuleSettings()
    return check((("user", user), ("assistant", answer)), _RULE_SETTINGS).keep


# --- near-copies -------------------------------------------------------------------------------

APPENDED = (
    "Please answer briefly.",
    "Thanks in advance!",
    "Explain your answer.",
    "Keep it short and simple, please.",
    "Can you help me with this?",
    "I need this for a school assignment.",
    "Please be as detailed as possible.",
    "Answer in plain English.",
    "Thank you so much for your help!",
    "Use an example if you can.",
    "This is urgent, so a quick reply would be great.",
    "Please respond in a friendly tone.",
    "Give a step-by-step answer.",
    "I'd appreciate a clear explanation.",
    "Make the answer easy to follow.",
)
PREPENDED = ("Hi there! ", "Quick question: ", "Hello, ", "Hey, I have a question. ", "Hi! ")
SYNONYMS = {
    "write": "compose",
    "explain": "describe",
    "describe": "explain",
    "give": "provide",
    "list": "enumerate",
    "make": "create",
    "create": "make",
    "find": "identify",
    "show": "demonstrate",
    "use": "employ",
    "help": "assist",
    "big": "large",
    "large": "big",
    "small": "little",
    "answer": "reply",
    "example": "instance",
    "many": "numerous",
    "calculate": "compute",
    "compute": "calculate",
    "total": "overall",
    "buy": "purchase",
    "bought": "purchased",
    "each": "every",
    "begin": "start",
    "start": "begin",
    "important": "significant",
    "good": "great",
    "simple": "basic",
    "quickly": "rapidly",
    "story": "tale",
    "about": "regarding",
    "generate": "produce",
    "short": "brief",
    "tell": "inform",
    "need": "require",
    "want": "wish",
    "get": "obtain",
    "choose": "select",
    "select": "choose",
    "suggest": "recommend",
    "recommend": "suggest",
    "program": "program",
    "function": "method",
    "method": "function",
    "following": "next",
    "given": "provided",
    "provided": "given",
    "sentence": "phrase",
    "text": "passage",
    "article": "piece",
    "people": "persons",
    "money": "cash",
    "house": "home",
    "car": "vehicle",
    "job": "work",
    "week": "seven days",
    "also": "as well",
    "then": "afterwards",
    "after": "following",
    "before": "prior to",
    "into": "in to",
    "famous": "well-known",
    "different": "distinct",
    "difference": "distinction",
    "way": "manner",
    "ways": "manners",
    "idea": "notion",
    "ideas": "notions",
    "happy": "glad",
    "hard": "difficult",
    "easy": "simple",
    "fast": "quick",
    "better": "superior",
    "best": "finest",
    "buys": "purchases",
    "makes": "creates",
    "gets": "receives",
    "needs": "requires",
    "uses": "employs",
    "wants": "wishes",
    "shows": "demonstrates",
    "wrote": "composed",
    "summary": "synopsis",
    "summarize": "sum up",
    "check": "verify",
    "determine": "establish",
    "build": "construct",
}
CONTRACTIONS = (
    ("do not", "don't"),
    ("does not", "doesn't"),
    ("can not", "can't"),
    ("cannot", "can't"),
    ("I am", "I'm"),
    ("it is", "it's"),
    ("what is", "what's"),
    ("is not", "isn't"),
    ("you are", "you're"),
)


def _case_like(new: str, old: str) -> str:
    return new[:1].upper() + new[1:] if old[:1].isupper() else new


def _substitute(tokens: list[str], rng: random.Random, k: int) -> int:
    """Replace up to k ordinary words by a synonym (punctuation kept); returns how many changed."""
    spots = [i for i in ordinary_positions(tokens) if tokens[i].strip(".,;:!?").lower() in SYNONYMS]
    rng.shuffle(spots)
    for i in spots[:k]:
        core = tokens[i].strip(".,;:!?")
        tokens[i] = tokens[i].replace(core, _case_like(SYNONYMS[core.lower()], core))
    return min(k, len(spots))


def _swap(tokens: list[str], rng: random.Random, k: int) -> int:
    """Swap up to k pairs of adjacent ordinary words (punctuation stays in place)."""
    ordinary = set(ordinary_positions(tokens))
    spots = [
        i
        for i in range(len(tokens) - 1)
        if i in ordinary and i + 1 in ordinary and not tokens[i].endswith((",", ".", ";", ":", "?", "!"))
    ]
    rng.shuffle(spots)
    done, used = 0, set()
    for i in spots:
        if done == k or i in used or i + 1 in used:
            continue
        a, b = tokens[i], tokens[i + 1]
        tail = b[len(b.rstrip(".,;:!?")) :]
        a_first = a[:1].isupper() and i == 0
        a2, b2 = b.rstrip(".,;:!?"), a
        if a_first:
            a2, b2 = a2[:1].upper() + a2[1:], b2[:1].lower() + b2[1:]
        tokens[i], tokens[i + 1] = a2, b2 + tail
        used |= {i, i + 1}
        done += 1
    return done


def _whitespace(text: str, rng: random.Random) -> str:
    mode = rng.choice(("lower", "spaces", "lines", "first_lower", "mixed"))
    if mode in ("lower", "mixed"):
        text = text.lower()
    if mode == "first_lower":
        text = text[:1].lower() + text[1:].rstrip(".?!")
    if mode in ("spaces", "mixed"):
        text = re.sub(r" ", lambda m: rng.choice(("  ", " ", " ", "\t", "   ")), text)
    if mode in ("lines", "mixed"):
        text = re.sub(r"([.?!:]) ", lambda m: m.group(1) + rng.choice(("\n", "\n\n", " \n")), text)
    return rng.choice(("  ", "\n", "", " ")) + text + rng.choice(("  ", "\n", " \n", "", "\t"))


def near_copy(text: str, edit: str, rng: random.Random) -> tuple[str, dict]:
    """The instruction with one graded edit; details of what changed."""
    detail: dict[str, Any] = {}
    if edit == "whitespace":
        return _whitespace(text, rng), detail
    tokens = text.split(" ")
    if edit in ("swapped_words", "combined"):
        detail["swaps"] = _swap(tokens, rng, rng.randint(1, 3) if edit == "swapped_words" else 1)
    if edit in ("light_rewording", "combined"):
        changed = _substitute(tokens, rng, rng.randint(2, 4) if edit == "light_rewording" else rng.randint(1, 2))
        joined = " ".join(tokens)
        for full, short in CONTRACTIONS:
            if changed < 2 and re.search(rf"\b{full}\b", joined):
                joined = re.sub(rf"\b{full}\b", short, joined, count=1)
                changed += 1
        if changed < 2 and not joined.lower().startswith("please"):
            joined = (
                "Please " + joined[:1].lower() + joined[1:] if not essential(tokens[0], False) else "Please: " + joined
            )
            changed += 1
        tokens = joined.split(" ")
        detail["rewordings"] = changed
    text = " ".join(tokens)
    if edit in ("appended_phrase", "combined"):
        if edit == "appended_phrase" and rng.random() < 0.25:
            text = rng.choice(PREPENDED) + text
        else:
            text = text + ("" if text.endswith((".", "?", "!", ":")) else ".") + " " + rng.choice(APPENDED)
    if edit == "combined":
        text = _whitespace(text, rng) if rng.random() < 0.5 else text
    return text, detail


# --- negative siblings ---------------------------------------------------------------------------

SIBLINGS: list[tuple[str, str, list[str], Callable[[str], str]]] = [
    # (kind of the differing word, template, fillers, answer)
    (
        "name",
        "Write a short biography of {} in about 150 words, focusing on the most important achievements and the lasting influence of the work.",
        [
            "Marie Curie",
            "Isaac Newton",
            "Ada Lovelace",
            "Nelson Mandela",
            "Frida Kahlo",
            "Alan Turing",
            "Rosalind Franklin",
        ],
        lambda f: (
            f"{f} is remembered as one of the most influential figures of their field. Their early years shaped a lifelong curiosity, and their major achievements changed how later generations worked and thought. Today {f} is studied, quoted and celebrated around the world."
        ),
    ),
    (
        "number",
        "How many minutes are there in {} hours? Show the calculation.",
        ["3", "7", "12", "18", "25", "40"],
        lambda f: f"Each hour has 60 minutes, so {f} hours have {f} × 60 = {int(f) * 60} minutes.",
    ),
    (
        "quoted",
        'Translate the word "{}" into Spanish and use it in a simple example sentence.',
        ["bread", "window", "river", "teacher", "morning", "garden", "friendship"],
        lambda f: (
            f'The Spanish translation of "{f}" is {dict(bread="pan", window="ventana", river="río", teacher="profesor", morning="mañana", garden="jardín", friendship="amistad")[f]}. You can use it in a short sentence about everyday life, and the meaning stays the same as in English.'
        ),
    ),
    (
        "word",
        "Write a Python function that checks whether a given string is a {} and returns True or False.",
        ["palindrome", "pangram", "isogram", "hexadecimal number", "binary number", "valid identifier"],
        lambda f: (
            f'Here is a simple function for that check:\n\n```python\ndef check(text):\n    """Return True if text is a {f}."""\n    text = text.strip()\n    return bool(text) and is_{f.replace(" ", "_")}(text)\n```\n\nIt strips surrounding whitespace first, so the check is not fooled by spaces.'
        ),
    ),
    (
        "name",
        "What were the main causes and consequences of the {}? Answer in three short paragraphs.",
        [
            "French Revolution",
            "American Civil War",
            "Industrial Revolution",
            "Great Depression",
            "Meiji Restoration",
            "Russian Revolution",
        ],
        lambda f: (
            f"The {f} grew out of long-standing economic pressure, social tension and political conflict.\n\nIts immediate consequences were felt in government, the economy and daily life.\n\nIn the long run, the {f} reshaped institutions and ideas far beyond its own time."
        ),
    ),
    (
        "word",
        "Give me a recipe for a vegetarian {} that can be prepared in under 30 minutes on a weeknight.",
        ["lasagna", "curry", "chili", "risotto", "stir-fry", "soup", "burrito"],
        lambda f: (
            f"Here is a quick vegetarian {f}: prepare your vegetables first, cook the aromatics in a little oil, add the main ingredients with spices, and simmer until everything is tender. Season to taste and serve hot."
        ),
    ),
    (
        "number",
        "Write a SQL query that lists all employees whose salary is greater than {} and sorts them by last name.",
        ["40000", "55000", "60000", "75000", "90000", "120000"],
        lambda f: (
            f"```sql\nSELECT first_name, last_name, salary\nFROM employees\nWHERE salary > {f}\nORDER BY last_name;\n```"
        ),
    ),
    (
        "number",
        "Convert {} degrees Celsius to Fahrenheit and explain the formula you used.",
        ["-10", "0", "15", "37", "60", "100"],
        lambda f: f"Fahrenheit = Celsius × 9/5 + 32, so {f} °C is {int(f) * 9 / 5 + 32:g} °F.",
    ),
    (
        "word",
        "Write a haiku about {}.",
        ["the ocean", "falling leaves", "a city at night", "first snow", "an old cat", "morning coffee"],
        lambda f: (
            f"A short haiku on {f}:\n\nQuiet hours drift by,\nsmall moments of {f.split()[-1]} and light,\nthe world holds its breath."
        ),
    ),
    (
        "word",
        "Explain the difference between a {} and a virus in simple terms for a ten-year-old.",
        ["bacterium", "fungus", "parasite", "protozoan", "prion"],
        lambda f: (
            f"A {f} and a virus are both tiny things that can make you sick, but they are built differently. A virus needs to get inside your cells to copy itself, while a {f} works in its own way. Doctors treat them with different medicines."
        ),
    ),
    (
        "name",
        "Plan a three-day trip to {} for a family with two young children, including museums, parks and budget-friendly restaurants.",
        ["Barcelona", "Copenhagen", "Prague", "Singapore", "Toronto", "Melbourne", "Dublin"],
        lambda f: (
            f"Day 1: explore the old town of {f} and visit a children's museum.\nDay 2: spend the morning in a large park and the afternoon at a science centre.\nDay 3: take a short boat or tram tour and finish at a family-friendly market."
        ),
    ),
    (
        "word",
        "What is the time complexity of {} sort, and when would you choose it over the alternatives?",
        ["bubble", "merge", "quick", "heap", "insertion", "radix", "selection"],
        lambda f: (
            f"The complexity of {f} sort depends on the input and on the implementation. Choose it when its trade-offs, such as memory use, stability or simplicity, fit your data better than the alternatives."
        ),
    ),
    (
        "quoted",
        "Summarize the plot of '{}' in five sentences without revealing the ending.",
        ["Hamlet", "Moby-Dick", "Pride and Prejudice", "The Great Gatsby", "Don Quixote", "Frankenstein", "Jane Eyre"],
        lambda f: (
            f"'{f}' follows a memorable protagonist through a series of conflicts. The opening sets up the world and its tensions. The middle raises the stakes. Secondary characters complicate every choice. Everything builds towards a decisive turning point."
        ),
    ),
    (
        "number",
        "Sarah buys {} notebooks at $3 each and pays with a $50 bill. How much change does she get?",
        ["4", "6", "7", "9", "11", "13"],
        lambda f: (
            f"The notebooks cost {f} × $3 = ${int(f) * 3}, so her change is $50 - ${int(f) * 3} = ${50 - int(f) * 3}."
        ),
    ),
    (
        "word",
        "Write a cover letter for a junior {} position at a mid-sized company, highlighting teamwork and eagerness to learn.",
        [
            "accountant",
            "data analyst",
            "graphic designer",
            "nurse",
            "software developer",
            "marketing assistant",
            "electrician",
        ],
        lambda f: (
            f"Dear Hiring Manager,\n\nI am excited to apply for the junior {f} position. I enjoy working in teams, I learn quickly, and I am eager to grow with your company.\n\nKind regards,\nAlex Morgan"
        ),
    ),
    (
        "word",
        "List five common symptoms of {} and explain when someone should see a doctor.",
        ["influenza", "dehydration", "anemia", "migraine", "asthma", "diabetes"],
        lambda f: (
            f"Common signs of {f} include tiredness, discomfort and changes in how the body feels day to day. Anyone whose symptoms are severe, sudden or lasting should see a doctor promptly."
        ),
    ),
    (
        "word",
        "Rewrite the following sentence in the {} tense: 'The committee approves the new budget.'",
        ["past", "future", "present perfect", "past perfect", "future perfect", "present continuous"],
        lambda f: f"In the {f} tense, the verb changes form while the subject and object stay the same.",
    ),
    (
        "word",
        "Write a JavaScript function that returns the {} element of an array of numbers.",
        ["largest", "smallest", "second largest", "median", "most frequent", "last even"],
        lambda f: (
            f"```javascript\nfunction pick(values) {{\n  // returns the {f} element\n  return select(values, '{f}');\n}}\n```"
        ),
    ),
    (
        "word",
        "Compose a friendly reminder email to the team that the {} meeting has been moved to Thursday at 3 pm.",
        ["budget", "quarterly review", "design", "onboarding", "safety", "planning"],
        lambda f: (
            f"Hi team,\n\nA quick reminder: the {f} meeting has moved to Thursday at 3 pm. Please update your calendars.\n\nThanks!"
        ),
    ),
    (
        "number",
        "Is {} a prime number? Explain how you checked.",
        ["91", "97", "119", "127", "221", "229"],
        lambda f: (
            f"To check {f}, divide it by every prime up to its square root. "
            + (
                "None of them divides it, so it is prime."
                if all(int(f) % d for d in range(2, int(int(f) ** 0.5) + 1))
                else "One of them divides it evenly, so it is not prime."
            )
        ),
    ),
]


# --- contamination variants -------------------------------------------------------------------

WRAP_BEFORE = (
    "I'm studying for an exam and came across the following problem. I'd like to understand how to approach it properly.",
    "My teacher gave us this as homework and I want to check my own work against a careful solution.",
    "Here is a task from a practice set that our study group could not agree on.",
    "Please help me with the question below. I have tried a few times but I keep getting stuck halfway.",
    "You are an expert tutor. A student sends you the following message and asks for guidance.",
    "I am preparing material for a workshop and need a model answer for this exercise.",
)
WRAP_AFTER = (
    "Please explain each step and point out common mistakes.",
    "Give the final answer at the end, clearly marked.",
    "Keep the explanation concise but complete.",
    "Thanks a lot, this really helps me prepare.",
    "After answering, suggest one similar exercise I could try on my own.",
    "",
)
PREAMBLES = (
    "I'm practising for an interview and my mentor suggested questions like the one below, so here it is:",
    "A friend of mine sent me this message in our group chat this morning and nobody could answer it:",
    "We are collecting example prompts for a workshop on writing clear answers, and this is the next one:",
    "Our reading club ended yesterday's session with the following question, which we never finished discussing:",
    "Before my shift starts I like to think about one small question, and today I picked this:",
)
POSTAMBLES = (
    "Any help is appreciated.",
    "Thank you for your time.",
    "Please answer in a few paragraphs.",
    "I look forward to your answer.",
)
CODE_LEADS = (
    "Complete the following Python function.",
    "Implement this function:",
    "Finish the code below so that all the examples pass.",
)
PARAPHRASE = {
    **SYNONYMS,
    "how much": "what amount",
    "how many": "what number of",
    "each": "every",
    "per": "a",
    "every": "each",
    "sells": "sells off",
    "makes": "earns",
    "earns": "makes",
    "spends": "pays out",
    "pays": "spends",
    "more": "additional",
    "less": "fewer",
    "half": "one half",
    "twice": "two times",
    "times": "times over",
    "day": "daily period",
    "days": "days",
    "year": "twelve months",
    "total": "in all",
    "altogether": "in total",
    "store": "shop",
    "shop": "store",
    "buy": "get",
    "gets": "receives",
    "has": "owns",
    "have": "own",
    "want": "would like",
    "wants": "would like",
    "decides": "chooses",
    "decided": "chose",
    "starts": "begins",
    "started": "began",
    "friends": "pals",
    "friend": "pal",
    "kids": "children",
    "children": "kids",
    "dollars": "bucks",
    "writing": "composing",
    "discuss": "talk about",
    "describe": "outline",
    "imagine": "picture",
    "craft": "create",
    "compose": "write",
    "draft": "prepare",
    "develop": "create",
    "provide": "give",
    "explain": "clarify",
}
DROPPABLE = ("the", "a", "an", "that", "just", "very", "really", "then", "also")
_NUMBER = re.compile(r"(?<![\w.])(\d+(?:,\d{3})*(?:\.\d+)?)(?![\w])")


def change_numbers(text: str, rng: random.Random) -> tuple[str, dict[str, str]]:
    """Every number changed to another of about the same size (the same number maps the same way)."""
    mapping: dict[str, str] = {}

    def repl(m: re.Match) -> str:
        old = m.group(1)
        if old not in mapping:
            value = float(old.replace(",", ""))
            while True:
                new = max(1, round(value * rng.uniform(0.5, 1.8))) if value >= 2 else rng.randint(2, 9)
                new_s = f"{new:,}" if "," in old else (f"{new:.2f}" if "." in old else str(new))
                if new_s != old:
                    break
            mapping[old] = new_s
        return mapping[old]

    return _NUMBER.sub(repl, text), mapping


def paraphrase(text: str, rng: random.Random) -> tuple[str, dict]:
    """Common words swapped for synonyms (60% of those found), ~1/3 of droppable function words
    dropped, every number changed. Detail: share of the words changed."""
    text, mapping = change_numbers(text, rng)
    out, changed = [], 0
    tokens = text.split(" ")
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        core = tok.strip(".,;:!?\"'()").lower()
        pair = (core + " " + tokens[i + 1].strip(".,;:!?").lower()) if i + 1 < len(tokens) else ""
        if pair in PARAPHRASE and rng.random() < 0.6:
            out.append(_case_like(PARAPHRASE[pair], tok) + tokens[i + 1][len(tokens[i + 1].rstrip(".,;:!?")) :])
            changed += 2
            i += 2
            continue
        if core in PARAPHRASE and core == tok.lower().rstrip(".,;:!?") and rng.random() < 0.6:
            out.append(tok.replace(tok.rstrip(".,;:!?"), _case_like(PARAPHRASE[core], tok)))
            changed += 1
        elif core in DROPPABLE and tok.lower() == core and rng.random() < 0.35:
            changed += 1
        else:
            out.append(tok)
        i += 1
    n = max(len(text.split()), 1)
    return " ".join(out), {
        "numbers_changed": len(mapping),
        "words_changed_share": round((changed + len(mapping)) / n, 3),
    }


CODE_NAMES = (
    "values",
    "items",
    "data",
    "seq",
    "arr",
    "xs",
    "nums",
    "elements",
    "collection",
    "inputs",
    "limit",
    "target",
    "text_in",
    "word_list",
    "count",
    "size",
    "k_value",
    "base",
    "first",
    "second",
    "left",
    "right",
    "lst",
    "obj",
)


def rename_code(item: Item, rng: random.Random) -> tuple[str, str, dict]:
    """HumanEval prompt and solution with the entry point and its parameters renamed everywhere."""
    prompt, solution = item.text, item.answer
    m = re.search(rf"def {re.escape(item.entry_point)}\((.*?)\)\s*(->[^:]*)?:", prompt, re.DOTALL)
    params = [p.split(":")[0].split("=")[0].strip().lstrip("*") for p in m.group(1).split(",")] if m else []
    params = [p for p in params if p.isidentifier()]
    names = rng.sample([n for n in CODE_NAMES if n not in prompt], len(params))
    mapping = {
        item.entry_point: rng.choice(("solve", "compute_result", "process", "my_func", "helper", "run_task"))
        + f"_{rng.randint(1, 99)}"
    }
    mapping.update(zip(params, names))
    for old, new in mapping.items():
        prompt = re.sub(rf"\b{re.escape(old)}\b", new, prompt)
        solution = re.sub(rf"\b{re.escape(old)}\b", new, solution)
    return prompt, solution, {"renamed": len(mapping)}


# --- junk ---------------------------------------------------------------------------------------

LANGUAGE_PAIRS = [  # (language, instruction, answer), written for this corpus
    (
        "fr",
        "Quels sont les avantages du télétravail pour les employés ?",
        "Le télétravail permet de gagner du temps sur les trajets, d'organiser sa journée plus librement et souvent de mieux se concentrer. En revanche, il demande de la discipline et peut isoler certaines personnes.",
    ),
    (
        "fr",
        "Explique simplement comment fonctionne une carte bancaire.",
        "Quand vous payez, le terminal envoie une demande à votre banque, qui vérifie votre solde et autorise ou refuse le paiement en quelques secondes. Le montant est ensuite débité de votre compte.",
    ),
    (
        "de",
        "Wie kann ich meine Zeit beim Lernen besser einteilen?",
        "Erstelle einen festen Wochenplan, teile große Aufgaben in kleine Schritte und plane regelmäßige Pausen ein. Es hilft auch, das Handy während der Lernzeit in einen anderen Raum zu legen.",
    ),
    (
        "de",
        "Erkläre kurz, wie eine Wärmepumpe funktioniert.",
        "Eine Wärmepumpe entzieht der Umgebung, zum Beispiel der Luft oder dem Erdreich, Wärme und hebt sie mit Hilfe eines Kompressors auf ein höheres Temperaturniveau. Diese Wärme wird dann zum Heizen des Hauses genutzt.",
    ),
    (
        "es",
        "¿Cuál es la diferencia entre el clima y el tiempo?",
        "El tiempo describe las condiciones de la atmósfera en un momento y lugar concretos, mientras que el clima es el promedio de esas condiciones durante muchos años en una región.",
    ),
    (
        "es",
        "Escribe una receta sencilla de tortilla de patatas.",
        "Pela y corta cuatro patatas en láminas finas, fríelas a fuego medio con una cebolla picada, bate seis huevos con sal, mezcla todo y cuaja la tortilla en la sartén por ambos lados.",
    ),
    (
        "it",
        "Come posso migliorare la mia pronuncia in inglese?",
        "Ascolta ogni giorno podcast e film in lingua originale, ripeti ad alta voce le frasi che senti e registra la tua voce per confrontarla con quella dei madrelingua.",
    ),
    (
        "it",
        "Descrivi in breve la storia del Colosseo.",
        "Il Colosseo fu costruito a Roma tra il 70 e l'80 dopo Cristo sotto gli imperatori Vespasiano e Tito. Ospitava combattimenti di gladiatori e spettacoli pubblici e poteva accogliere decine di migliaia di spettatori.",
    ),
    (
        "pt",
        "Quais são os benefícios de beber água regularmente?",
        "Beber água ajuda a regular a temperatura do corpo, melhora a digestão, mantém a pele hidratada e contribui para a concentração ao longo do dia.",
    ),
    (
        "pt",
        "Explique o que é inflação de forma simples.",
        "Inflação é o aumento geral e contínuo dos preços de bens e serviços. Quando ela sobe, o mesmo dinheiro compra menos coisas do que antes.",
    ),
    (
        "nl",
        "Wat zijn de voordelen van fietsen naar je werk?",
        "Fietsen is goed voor je gezondheid, het kost weinig geld en je staat niet in de file. Bovendien is het beter voor het milieu dan de auto.",
    ),
    (
        "nl",
        "Geef drie tips om beter te slapen.",
        "Ga elke dag op hetzelfde tijdstip naar bed, vermijd schermen in het laatste uur voor het slapen en zorg voor een koele, donkere slaapkamer.",
    ),
    (
        "ru",
        "Как научиться быстро читать?",
        "Начните с тренировки внимания: читайте без проговаривания слов про себя, охватывайте взглядом несколько слов сразу и постепенно увеличивайте темп. Регулярная практика важнее любых специальных техник.",
    ),
    (
        "ru",
        "Объясни, почему небо голубое.",
        "Солнечный свет рассеивается молекулами воздуха, причём короткие синие волны рассеиваются сильнее, чем красные. Поэтому мы видим небо голубым со всех сторон.",
    ),
    (
        "ja",
        "日本でおすすめの観光地を教えてください。",
        "京都の古いお寺や神社、北海道の雄大な自然、沖縄の美しい海などがおすすめです。季節によって楽しみ方が変わるので、旅行の時期に合わせて選ぶとよいでしょう。",
    ),
    (
        "ja",
        "朝ごはんを食べることの利点は何ですか？",
        "朝ごはんを食べると、体温が上がって頭がすっきりし、午前中の集中力が高まります。また、昼食の食べ過ぎを防ぐ効果もあります。",
    ),
    (
        "ko",
        "건강한 식습관을 유지하는 방법을 알려주세요.",
        "채소와 과일을 충분히 먹고, 가공식품과 설탕이 많은 음료는 줄이는 것이 좋습니다. 또한 규칙적인 시간에 식사하고 물을 자주 마시는 습관을 들이세요.",
    ),
    (
        "ko",
        "서울에서 가볼 만한 곳을 추천해 주세요.",
        "경복궁과 북촌 한옥마을에서 전통 문화를 느낄 수 있고, 남산타워에서는 도시 전경을 볼 수 있습니다. 저녁에는 한강 공원에서 산책하는 것도 좋습니다.",
    ),
    (
        "ar",
        "ما هي فوائد القراءة اليومية؟",
        "القراءة اليومية توسع المعرفة وتحسن المفردات وتقوي التركيز، كما أنها تساعد على تقليل التوتر وتنمية الخيال.",
    ),
    (
        "ar",
        "اشرح باختصار كيف تعمل الألواح الشمسية.",
        "تتكون الألواح الشمسية من خلايا تحول ضوء الشمس مباشرة إلى كهرباء، ثم يحول جهاز خاص هذا التيار إلى كهرباء صالحة للاستخدام في المنزل.",
    ),
    (
        "tr",
        "Sağlıklı bir kahvaltı için ne önerirsin?",
        "Yumurta, peynir, zeytin, domates ve salatalıktan oluşan bir kahvaltı hem doyurucu hem de besleyicidir. Yanında tam buğday ekmeği ve bir bardak çay iyi gider.",
    ),
    (
        "tr",
        "İstanbul'un tarihini kısaca anlat.",
        "İstanbul, Bizans İmparatorluğu döneminde Konstantinopolis adıyla başkent olmuş, 1453'te Osmanlılar tarafından fethedilmiştir. Yüzyıllar boyunca ticaret ve kültürün merkezi olmuştur.",
    ),
    (
        "pl",
        "Jak mogę oszczędzać więcej pieniędzy każdego miesiąca?",
        "Zapisuj wszystkie wydatki, ustal miesięczny budżet i odkładaj stałą kwotę zaraz po otrzymaniu wypłaty. Warto też zrezygnować z subskrypcji, z których rzadko korzystasz.",
    ),
    (
        "pl",
        "Opisz krótko, czym jest fotosynteza.",
        "Fotosynteza to proces, w którym rośliny wykorzystują światło słoneczne, wodę i dwutlenek węgla do wytwarzania glukozy i tlenu.",
    ),
    (
        "sv",
        "Vad är fördelarna med att promenera varje dag?",
        "Dagliga promenader stärker hjärtat, förbättrar humöret och hjälper dig att sova bättre. Det är dessutom gratis och kan göras nästan var som helst.",
    ),
    (
        "vi",
        "Làm thế nào để học tiếng Anh hiệu quả?",
        "Bạn nên luyện nghe mỗi ngày, học từ vựng theo chủ đề và thực hành nói với người khác. Kiên trì là yếu tố quan trọng nhất.",
    ),
    (
        "hi",
        "योग करने के क्या फायदे हैं?",
        "योग करने से शरीर लचीला बनता है, तनाव कम होता है और मन शांत रहता है। नियमित अभ्यास से नींद भी बेहतर होती है।",
    ),
    (
        "id",
        "Apa manfaat berolahraga secara teratur?",
        "Olahraga teratur membantu menjaga berat badan, memperkuat jantung, dan membuat suasana hati lebih baik. Cukup tiga puluh menit setiap hari sudah memberi hasil.",
    ),
    (
        "el",
        "Ποια είναι τα οφέλη της μεσογειακής διατροφής;",
        "Η μεσογειακή διατροφή είναι πλούσια σε λαχανικά, όσπρια και ελαιόλαδο, και συνδέεται με μικρότερο κίνδυνο καρδιακών παθήσεων και μεγαλύτερη διάρκεια ζωής.",
    ),
    (
        "uk",
        "Як швидко вивчити нові слова?",
        "Використовуйте картки з інтервальним повторенням, вчіть слова в контексті речень і щодня повторюйте вивчене хоча б кілька хвилин.",
    ),
    (
        "cs",
        "Jak se správně starat o pokojové rostliny?",
        "Zalévejte je podle potřeby, ne podle kalendáře, dopřejte jim dostatek světla a jednou za čas je přesaďte do větší nádoby s čerstvým substrátem.",
    ),
    (
        "fi",
        "Mitkä ovat saunomisen hyödyt?",
        "Saunominen rentouttaa lihaksia, parantaa verenkiertoa ja auttaa monia nukkumaan paremmin. Muista juoda riittävästi vettä saunan jälkeen.",
    ),
    (
        "da",
        "Hvordan laver man en god kop kaffe derhjemme?",
        "Brug friskmalede bønner, vand lige under kogepunktet og det rigtige forhold mellem kaffe og vand. Rengør kaffemaskinen jævnligt, så smagen forbliver frisk.",
    ),
    (
        "no",
        "Hva er den beste måten å lære å svømme på?",
        "Start på grunt vann med en erfaren instruktør, øv på pusten og flyteteknikken først, og bygg gradvis opp selvtilliten før du svømmer på dypt vann.",
    ),
    (
        "hu",
        "Milyen előnyei vannak a rendszeres sportolásnak?",
        "A rendszeres mozgás erősíti a szívet és az izmokat, javítja a hangulatot, és segít megőrizni az egészséges testsúlyt.",
    ),
    (
        "ro",
        "Care sunt cele mai frumoase orașe din România?",
        "Brașov, Sibiu și Cluj-Napoca sunt foarte apreciate pentru centrele lor istorice, arhitectura deosebită și atmosfera plăcută.",
    ),
    (
        "fr",
        "Donne-moi trois idées de cadeaux pour un ami qui aime cuisiner.",
        "Un bon couteau de chef, un livre de recettes du monde entier ou un cours de cuisine avec un chef local feront sûrement plaisir.",
    ),
    (
        "de",
        "Was sollte man bei einem Vorstellungsgespräch beachten?",
        "Bereite dich gut auf das Unternehmen vor, komme pünktlich, beantworte Fragen ehrlich und stelle am Ende selbst ein paar durchdachte Fragen.",
    ),
    (
        "es",
        "¿Qué consejos me das para aprender a programar?",
        "Empieza con un lenguaje sencillo como Python, practica todos los días con pequeños proyectos y no tengas miedo de leer el código de otras personas.",
    ),
    (
        "it",
        "Quali sono i piatti tipici della cucina napoletana?",
        "Tra i piatti più famosi ci sono la pizza margherita, gli spaghetti alle vongole, la pastiera e il babà al rum.",
    ),
]
REFUSALS = [  # (sub-variant, opening), followed or not by real content
    (
        "ai_disclaimer",
        "As an AI language model, I don't have personal opinions or experiences, but I can share some general information.",
    ),
    ("ai_disclaimer", "As an AI language model, I cannot browse the internet or access real-time data."),
    ("ai_disclaimer", "As a large language model, I do not have feelings, but here is what I can tell you."),
    ("flat_refusal", "I'm sorry, but I can't assist with that request."),
    ("flat_refusal", "I'm sorry, but I cannot help with that."),
    ("flat_refusal", "I apologize, but I cannot provide information on that topic."),
    ("flat_refusal", "I cannot fulfill this request because it goes against my guidelines."),
    ("zh_refusal", "作为一个人工智能语言模型，我无法提供这方面的个人意见。"),
    ("zh_refusal", "很抱歉，我无法回答这个问题。"),
    ("other_wording", "Unfortunately, I am not able to help with this kind of request."),
    ("other_wording", "I'm afraid I can't do that. It is outside of what I am allowed to do."),
    ("other_wording", "Sorry, as an AI I do not have access to that information."),
    ("other_wording", "As an artificial intelligence, I don't have the ability to form opinions."),
]
GARBAGE_CHARS = "#*~%@!&+|^$?.,-_/\\'\"`:"
DANGLING = ("the", "and", "of", "with", "because", "to", "a", "or", "their", "is")


def symbol_soup(rng: random.Random, n: int) -> str:
    out = []
    while sum(map(len, out)) < n:
        out.append("".join(rng.choice(GARBAGE_CHARS) for _ in range(rng.randint(2, 9))))
        if rng.random() < 0.1:
            out.append(rng.choice(("x", "ok", "a1", "zz", "lol", "q")))
    return " ".join(out)


def ascii_art(rng: random.Random) -> str:
    width = rng.randint(12, 30)
    rows = (
        ["+" + "-" * width + "+"]
        + ["|" + "".join(rng.choice(" .:*#%@") for _ in range(width)) + "|" for _ in range(rng.randint(4, 9))]
        + ["+" + "-" * width + "+"]
    )
    return "\n".join(rows)


def sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


# --- building --------------------------------------------------------------------------------------


class Builder:
    def __init__(self, data: Path, seed: int):
        self.rng = random.Random(seed)
        self.data = data
        self.files: dict[str, list[Rec]] = {f: [] for f in FILES}
        self.left_out: Counter = Counter()

    # pool: base (clean) and reserve (fillers), benchmark copies and repeated instructions left out
    def split_pool(self) -> None:
        pool = load_pool(self.data)
        self.items = load_benchmarks(self.data)
        seen: set[str] = set()
        self.base: dict[str, list[Rec]] = {}
        self.in_pool: list[tuple[str, Rec]] = []
        self.reserve: dict[str, list[Rec]] = {}
        for origin in FILES:
            recs = pool[origin]
            hits = benchmark_hits([r.user + "\n" + r.output for r in recs], self.items)
            unique = []
            for i, r in enumerate(recs):
                key = " ".join(words(r.user))
                if i in hits:  # kept, labelled contam:in_pool with the item found
                    bench, item_id = hits[i].split(", ")[0].split(":", 1)
                    r.category, r.variant, r.benchmark, r.item_id = "contam", "in_pool", bench, item_id
                    r.detail = {"found": hits[i]}
                    self.in_pool.append((origin, r))
                elif not key or key in seen:
                    self.left_out[f"{origin}: repeated or empty instruction"] += 1
                elif not r.output.strip():  # ingest quarantines it (empty_turn): not a record
                    self.left_out[f"{origin}: empty answer"] += 1
                else:
                    seen.add(key)
                    unique.append(r)
            self.rng.shuffle(unique)
            k = min(BASE_SIZE[origin], len(unique))
            self.base[origin], self.reserve[origin] = unique[:k], unique[k:]
        self.donors = alpaca_eval_answers(self.data)

    def take(self, origin: str | tuple[str, ...] | None = None, ok: Callable[[Rec], bool] = lambda r: True) -> Rec:
        """A reserve record (never clean, never used twice) from one of `origins` (default: all but Self-Instruct)."""
        origins = [origin] if isinstance(origin, str) else list(origin or [o for o in FILES if o != "self_instruct"])
        for _ in range(10_000):
            o = self.rng.choice(origins)
            if not self.reserve[o]:
                continue
            r = self.reserve[o].pop()
            if ok(r):
                return r
        raise RuntimeError(f"reserve exhausted ({origin})")

    def add(self, file: str, rec: Rec) -> Rec:
        self.files[file].append(rec)
        return rec

    def clean(self) -> None:
        for origin in FILES:
            for r in self.base[origin]:
                self.add(origin, r)
        # real twins: clean records sharing >= 50% of their word 2-shingles with another clean record
        recs = [r for o in FILES for r in self.files[o]]
        sh = [shingles(r.user) for r in recs]
        index: dict[str, list[int]] = defaultdict(list)
        for i, s in enumerate(sh):
            for g in s:
                index[g].append(i)
        for i, s in enumerate(sh):
            common: Counter = Counter()
            for g in s:
                if len(index[g]) < 200:
                    common.update(j for j in index[g] if j != i)
            for j, c in common.most_common(3):
                jac = c / len(s | sh[j])
                if jac >= 0.5:
                    recs[i].variant = "real_twin"
                    recs[i].detail = {"twin": recs[j].pool, "jaccard_2shingles": round(jac, 3)}
                    break

    def near_copies(self) -> None:
        candidates = [(o, r) for o in FILES for r in self.files[o] if r.variant == "plain"]
        self.rng.shuffle(candidates)
        for edit in NEAR_EDITS:
            made = 0
            while made < NEAR_PER_EDIT:
                origin, orig = candidates.pop()
                if not passes_rules(orig.user, orig.output):
                    continue
                text, detail = near_copy(orig.instruction, edit, self.rng)
                if " ".join(text.split()) == " ".join(orig.instruction.split()) and edit != "whitespace":
                    continue  # the edit found nothing to change
                answer, source = orig.output, orig.pool
                if origin == "alpaca_eval":
                    donors = [d for d in self.donors.get(orig.instruction, []) if passes_rules(text, d[1])]
                    if donors:
                        source, answer = self.rng.choice(donors)
                copy = Rec(
                    text,
                    orig.input,
                    answer,
                    "near_copy",
                    edit,
                    source,
                    {
                        **detail,
                        "instruction_words": len(words(orig.instruction)),
                        "answer": "other model" if answer != orig.output else "same",
                    },
                )
                if not passes_rules(copy.user, copy.output):
                    continue
                orig.variant, orig.origin, copy.origin = "original", copy, orig
                self.add(origin, copy)
                made += 1

    def siblings(self) -> None:
        for g, (kind, template, fillers, answer) in enumerate(SIBLINGS):
            file = FILES[g % len(FILES)]
            for f in fillers:
                rec = Rec(
                    template.format(f),
                    "",
                    answer(f),
                    "negative_sibling",
                    kind,
                    "template",
                    {"group": g, "filler": f, "template": template},
                )
                if not passes_rules(rec.user, rec.output):
                    raise ValueError(f"sibling answer fails the default rules: {rec.user!r} / {rec.output!r}")
                self.add(file, rec)

    def lookalikes(self) -> None:
        for t, (task, (phrase, how)) in enumerate(LOOKALIKE_TASKS.items()):
            for lang in LOOKALIKE_LANGUAGES:
                for n, template in enumerate(LOOKALIKE_PHRASINGS):
                    answer = (
                        f"In {lang}, the function {how}. It handles the smallest inputs first, then loops once over "
                        f"the rest, so it runs in linear time and needs no extra memory. Test it with a few small "
                        f"inputs before you rely on it{'.' if n % 2 else ' in a larger program.'}"
                    )
                    rec = Rec(
                        template.format(lang=lang, task=phrase),
                        "",
                        answer,
                        "lookalike",
                        f"{task}/{lang}",
                        "template",
                        {"task": task, "language": lang, "phrasing": n},
                    )
                    if not passes_rules(rec.user, rec.output):
                        raise ValueError(f"look-alike answer fails the default rules: {rec.user!r} / {rec.output!r}")
                    self.add(FILES[(t + n) % len(FILES)], rec)

    def contamination(self) -> None:
        by_bench: dict[str, list[Item]] = defaultdict(list)
        for item in self.items:
            by_bench[item.benchmark].append(item)
        for b in by_bench:
            self.rng.shuffle(by_bench[b])
        nwords = lambda it: len(words(it.text))  # noqa: E731

        def short(it) -> bool:
            return (
                nwords(it) < 13
                if it.benchmark == "mt_bench"
                else (it.benchmark == "gsm8k_test" and nwords(it) <= SHORT_GSM8K_WORDS)
            )

        pools = {
            b: {"short": [i for i in its if short(i)], "long": [i for i in its if not short(i)]}
            for b, its in by_bench.items()
        }
        # MT-Bench has no answers: take another AlpacaEval model's answer to a reserve instruction (off-topic)
        donor_answers = [
            (src, ans) for r in self.reserve["alpaca_eval"] for src, ans in self.donors.get(r.instruction, [])
        ]
        self.rng.shuffle(donor_answers)
        for origin, rec in self.in_pool:
            self.add(origin, rec)
        for (bench, variant), count in CONTAM_PLAN.items():
            items = pools[bench]["short" if variant == "short_in_preamble" else "long"]
            if len(items) < count:
                raise ValueError(f"{bench}: {len(items)} items left for {count} {variant} records")
            made = 0
            while made < count:
                item = items.pop()
                rec = self._contaminated(item, variant, donor_answers)
                if rec is None:
                    continue
                self.add(CONTAM_FILE[bench], rec)
                made += 1

    def _contaminated(self, item: Item, variant: str, donor_answers: list) -> Rec | None:
        rng, text, detail = self.rng, item.text.strip(), {}
        answer, source = item.answer, item.benchmark
        if item.benchmark == "humaneval":
            answer = f"```python\n{item.text}{item.answer}```"
        if variant == "code_renamed":
            prompt, solution, detail = rename_code(item, rng)
            answer = f"```python\n{prompt}{solution}```"
            text = prompt.strip()
            if rng.random() < 0.5:
                text = rng.choice(CODE_LEADS) + "\n\n" + text
                detail["lead_in"] = True
        elif variant == "paraphrased":  # the best of 5 draws when a draw changes under 5% of the words
            tries = [paraphrase(text, rng) for _ in range(5)]
            text, detail = next(
                (t for t in tries if t[1]["words_changed_share"] >= 0.05),
                max(tries, key=lambda t: t[1]["words_changed_share"]),
            )
            if item.benchmark == "gsm8k_test":
                answer, _ = change_numbers(item.answer, rng)
        elif variant == "wrapped":
            before, after = rng.choice(WRAP_BEFORE), rng.choice(WRAP_AFTER)
            sep = "\n\n" if item.benchmark == "humaneval" or rng.random() < 0.5 else " "
            text = f"{before}{sep}{text}{sep}{after}".strip()
        elif variant == "short_in_preamble":
            text = f"{rng.choice(PREAMBLES)} {text} {rng.choice(POSTAMBLES)}"
        if item.benchmark == "mt_bench":
            for _ in range(50):
                source, answer = donor_answers.pop()
                if passes_rules(text, answer):
                    break
        rec = Rec(text, "", answer, "contam", variant, source, detail, item.benchmark, item.item_id)
        if not passes_rules(rec.user, rec.output):
            self.left_out[f"{item.benchmark} item whose {variant} record fails the rules (re-drawn)"] += 1
            return None
        return rec

    def junk(self) -> None:
        for kind in JUNK_KINDS:
            for i in range(JUNK_PER_KIND):
                rec = getattr(self, f"_junk_{kind}")(i)
                rec.category, rec.variant = "junk", kind
                self.add(FILES[i % len(FILES)], rec)

    def _junk_empty_or_short(self, i: int) -> Rec:
        r = self.take()
        sym = self.rng.choice(("...", "-", "…", "?", ".", "—", "**", "!!", "--", "…?"))
        if i % 4 == 3:
            return Rec(sym, "", r.output, "", "", r.pool, {"sub": "symbol_prompt", "text": sym})
        return Rec(r.instruction, r.input, sym, "", "", r.pool, {"sub": "symbol_answer", "text": sym})

    def _junk_too_long(self, i: int) -> Rec:
        target = self.rng.randint(16_600, 22_000)
        answers = [a for donors in self.donors.values() for _, a in donors]  # drawn with replacement
        parts, total = [], 0
        while total < target:
            parts.append(self.rng.choice(answers))
            total += len(parts[-1].split())
        body = "\n\n".join(parts)
        r = self.take()
        if i % 2:
            return Rec(
                "Summarize the following collection of notes in five bullet points.",
                body,
                r.output,
                "",
                "",
                "AlpacaEval answers",
                {"sub": "long_prompt", "words": total},
            )
        return Rec(
            r.instruction,
            r.input,
            body,
            "",
            "",
            f"{r.pool} + AlpacaEval answers",
            {"sub": "long_answer", "words": total},
        )

    def _junk_garbage(self, i: int) -> Rec:
        r = self.take()
        sub = ("symbol_answer", "ascii_art_answer", "punctuation_runs", "symbol_prompt")[i % 4]
        if sub == "symbol_answer":
            return Rec(
                r.instruction, r.input, symbol_soup(self.rng, self.rng.randint(40, 300)), "", "", r.pool, {"sub": sub}
            )
        if sub == "ascii_art_answer":
            return Rec(r.instruction, r.input, ascii_art(self.rng), "", "", r.pool, {"sub": sub})
        if sub == "punctuation_runs":
            runs = " ".join(
                self.rng.choice(("!!!!!", "?????", ".....", "-----", "*****", "~~~~~", "#####", "$$$$$"))
                for _ in range(self.rng.randint(6, 30))
            )
            return Rec(r.instruction, r.input, runs, "", "", r.pool, {"sub": sub})
        return Rec(symbol_soup(self.rng, self.rng.randint(30, 120)), "", r.output, "", "", r.pool, {"sub": sub})

    def _junk_language(self, i: int) -> Rec:
        lang, q, a = LANGUAGE_PAIRS[i % len(LANGUAGE_PAIRS)]
        return Rec(q, "", a, "", "", "written for this corpus", {"language": lang})

    def _junk_refusal(self, i: int) -> Rec:
        sub, opening = REFUSALS[i % len(REFUSALS)]
        r = self.take()
        with_content = i % 3 == 0 and sub == "ai_disclaimer"
        answer = opening + ("\n\n" + r.output if with_content else "")
        return Rec(
            r.instruction,
            r.input,
            answer,
            "",
            "",
            r.pool,
            {"sub": sub, "opening": opening, "with_content": with_content},
        )

    def _junk_echo(self, i: int) -> Rec:
        sub = ("exact_copy", "quoted_copy", "copy_of_input", "prefix_copy")[i % 4]
        if sub == "copy_of_input":
            r = self.take("code_alpaca", lambda r: len(r.input) > 20)
            return Rec(r.instruction, r.input, r.input, "", "", r.pool, {"sub": sub})
        r = self.take(None, lambda r: len(r.user.split()) >= 8)
        if sub == "exact_copy":
            answer = r.user
        elif sub == "quoted_copy":
            answer = f'"{r.user}"'
        else:
            w = r.user.split()
            answer = " ".join(w[: max(4, int(len(w) * self.rng.uniform(0.75, 0.95)))])
        return Rec(r.instruction, r.input, answer, "", "", r.pool, {"sub": sub})

    def _junk_repetition(self, i: int) -> Rec:
        r = self.take(None, lambda r: len(sentences(r.output)) >= 2 and len(r.output.split()) >= 30)
        sub = ("loop_sentence", "loop_phrase", "loop_paragraph")[i % 3]
        sent = sentences(r.output)
        if sub == "loop_sentence":
            k = self.rng.randint(1, len(sent) - 1)
            answer = " ".join(sent[:k] + [sent[k]] * self.rng.randint(8, 25))
        elif sub == "loop_phrase":
            words_ = r.output.split()
            start = self.rng.randrange(0, max(1, len(words_) - 6))
            phrase = " ".join(words_[start : start + self.rng.randint(3, 6)])
            answer = " ".join(words_[:start]) + " " + " ".join([phrase] * self.rng.randint(15, 40))
        else:
            para = " ".join(sent[:3])
            answer = "\n\n".join([para] * self.rng.randint(3, 6))
        return Rec(r.instruction, r.input, answer.strip(), "", "", r.pool, {"sub": sub})

    def _junk_repeated_lines(self, i: int) -> Rec:
        r = self.take(None, lambda r: len(sentences(r.output)) >= 2)
        sub = ("short_lines", "list_items", "block")[i % 3]
        sent = [s for s in sentences(r.output) if "\n" not in s]
        if sub == "short_lines":
            line = self.rng.choice(
                ("Yes.", "I understand.", "Thank you!", "OK, got it.", "Sure, here you go.", "Done.")
            )
            answer = "\n".join([line] * self.rng.randint(5, 12))
        elif sub == "list_items":
            items = [" ".join(s.split()[: self.rng.randint(3, 7)]).rstrip(",;:") for s in (sent or [r.output])[:2]]
            lines = [f"- {items[k % len(items)]}" for k in range(self.rng.randint(6, 14))]
            answer = "\n".join(lines)
        else:
            block = (sent or [r.output])[0]
            answer = "\n".join([block] * self.rng.randint(3, 6))
        return Rec(r.instruction, r.input, answer, "", "", r.pool, {"sub": sub})

    def _junk_truncated(self, i: int) -> Rec:
        sub = ("cut_mid_sentence", "dangling_word", "dangling_comma", "open_code_fence")[i % 4]
        if sub == "open_code_fence":
            r = self.take("code_alpaca", lambda r: "\n" in r.output and len(r.output.splitlines()) >= 3)
            lines = r.output.splitlines()
            cut = self.rng.randint(1, len(lines) - 1)
            answer = "Here is the code:\n\n```\n" + "\n".join(lines[:cut])
            return Rec(r.instruction, r.input, answer, "", "", r.pool, {"sub": sub})
        r = self.take(("gsm8k_train", "alpaca_eval"), lambda r: len(r.output.split()) >= 40 and "```" not in r.output)
        tokens = r.output.split(" ")
        if sub == "cut_mid_sentence":
            spots = [
                k
                for k in range(len(tokens) // 3, len(tokens) - 1)
                if not tokens[k - 1].endswith((".", "!", "?", ":", "\n")) and tokens[k - 1][-1:].isalpha()
            ]
        elif sub == "dangling_word":
            spots = [k for k in range(len(tokens) // 3, len(tokens) - 1) if tokens[k - 1].lower() in DANGLING]
        else:
            spots = [k for k in range(len(tokens) // 3, len(tokens) - 1) if tokens[k - 1].endswith(",")]
        if not spots:
            return self._junk_truncated(i + 4)  # same sub-variant, another answer
        cut = self.rng.choice(spots)
        words_since = len(" ".join(tokens[:cut]).replace("\n", " ").split(". ")[-1].split())
        return Rec(
            r.instruction,
            r.input,
            " ".join(tokens[:cut]),
            "",
            "",
            r.pool,
            {"sub": sub, "words_after_last_sentence_end": words_since},
        )

    # --- output ---------------------------------------------------------------------------------
    def write(self, out: Path) -> dict:
        out.mkdir(parents=True, exist_ok=True)
        for f in FILES:
            self.rng.shuffle(self.files[f])
            for line, rec in enumerate(self.files[f], 1):
                rec.file, rec.line = f"{f}.jsonl", line
        labels = []
        for f in FILES:
            with (out / f"{f}.jsonl").open("w", encoding="utf-8") as fh:
                for rec in self.files[f]:
                    fh.write(
                        json.dumps(
                            {"instruction": rec.instruction, "input": rec.input, "output": rec.output},
                            ensure_ascii=False,
                        )
                        + "\n"
                    )
                    labels.append(
                        {
                            "file": rec.file,
                            "line": rec.line,
                            "category": rec.category,
                            "variant": rec.variant,
                            "label": rec.label,
                            "pool": rec.pool,
                            "benchmark": rec.benchmark,
                            "item_id": rec.item_id,
                            "origin_file": rec.origin.file if rec.origin else None,
                            "origin_line": rec.origin.line if rec.origin else None,
                            "detail": rec.detail,
                        }
                    )
        with (out / "labels.jsonl").open("w", encoding="utf-8") as fh:
            for row in labels:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        summary = {
            "records": len(labels),
            "per_file": {f: len(self.files[f]) for f in FILES},
            "per_label": dict(
                sorted(
                    Counter(
                        r["label"] + ("" if r["category"] != "clean" else f" ({r['variant']})") for r in labels
                    ).items()
                )
            ),
            "left_out": dict(self.left_out),
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
        return summary


LOOKALIKE_TASKS = {
    "factorial": ("computes the factorial of a non-negative integer", "multiplies the numbers from 1 up to n"),
    "reverse": ("reverses a string without using a built-in reverse function", "swaps characters from both ends"),
    "palindrome": ("checks whether a string is a palindrome, ignoring case", "compares characters from both ends"),
    "fibonacci": ("returns the n-th Fibonacci number using iteration", "keeps the last two numbers in variables"),
    "maximum": ("finds the largest element in an array of integers", "keeps the largest value seen so far"),
    "vowels": ("counts the vowels in a given string", "checks each character against the five vowels"),
}
LOOKALIKE_LANGUAGES = ("C", "C++", "C#", "Java", "JavaScript", "Python", "Rust", "Go")
LOOKALIKE_PHRASINGS = (
    "Write a {lang} function that {task}.",
    "Write a function in {lang} that {task}.",
    "Please write a {lang} function that {task}.",
    "How would you write a {lang} function that {task}?",
)


def build(out: Path, seed: int = 0, data: Path = DATA) -> dict:
    """Generate the corpus into `out`; returns the summary (also written to summary.json)."""
    b = Builder(data, seed)
    b.split_pool()
    b.clean()
    b.near_copies()
    b.siblings()
    b.lookalikes()
    b.contamination()
    b.junk()
    return b.write(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="output folder (e.g. bench/out/quality/corpus)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=DATA, help="the shared data folder (pool/ and benchmarks/)")
    args = parser.parse_args()
    print(json.dumps(build(args.out, args.seed, args.data), indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
