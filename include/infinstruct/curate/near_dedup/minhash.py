"""Near-duplicate detection with MinHash LSH: the pure core of the `near_dedup` stage.

The pipeline, one pure function per step (the stage persists band keys in Postgres and joins on them):

1. `shingle_text`: casefold + NFKC, punctuation and symbols to spaces, word n-grams (`shingle` words;
   a text with fewer words is one shingle). CJK ideographs and kana count as one word each, so Chinese
   gets character n-grams instead of one giant "word".
2. `signatures`: one MinHash signature per text (rensa's bulk R-MinHash matrix, uint32, deterministic
   for `seed`), shape (n, num_perm).
3. `band_keys`: one int64 per band; the band index sits in the top bits, so keys of different bands
   never collide and one flat `key` column can be joined on. Store rows (band, key, record_id).
4. `candidate_pairs`: rows sharing any band key, within a batch and between a batch and existing rows;
   `KeySet`: which of many stored keys are among a batch's keys (to find the existing rows worth reading).
5. `confirm_pairs`: estimated Jaccard >= `threshold` (`pair_jaccard`, `jaccard_estimate`), and no
   essential word (number, quoted word, name) swapped for another (`differs_in_essential_words`).
6. `representatives`: walk the records in keep order (`keep_rank`); a record is dropped only when its
   confirmed similarity to a record already accepted reaches the threshold (never by chaining through a
   dropped one); `clusters` (connected components) only say which accepted records to compare it with.

Everything that changes band keys (rensa version and algorithm, this module's ALGORITHM_VERSION,
shingle size, num_perm, bands, seed) is in `NearDupSettings.index_fingerprint`: persisted keys with
another fingerprint must be rebuilt, never joined against.

Default threshold 0.6 (not the 0.45 the synthetic sweep below favours): on the real pool, 0.45 paired
~120 distinct prompts that share boilerplate ("How many X? Try to explain your answer. ...", code_alpaca's
"Write a Java program to ...") and dropped instructions that have no other copy. At 0.6 the planted-edit
corpus gives recall 0.82 (whitespace/case 0.98, appended sentence 0.91, substituted words 0.78, light
rewording 0.91, appended + swapped 0.53) at precision 0.993 with 7 false pairs among the real prompts;
the semantic stage is there to recover the rest of the recall.

The measurements behind these choices (speed against datasketch, recall per edit kind, the essential-word
guard): bench/RESULTS.md, "MinHash core".
"""

from __future__ import annotations

import gc
import re
import unicodedata
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from itertools import chain
from typing import Callable, Iterator, NamedTuple, Sequence

import numpy as np
from pydantic import Field, model_validator
from rensa import RMinHash

from infinstruct.strict import Strict  # not .config: config may embed NearDupSettings without an import cycle

ALGORITHM_VERSION = 1  # bump when shingle_text or band_keys change what they produce
_BAND_BITS = 7  # band index in bits 56..62 of a key; bit 63 stays 0, so keys are >= 0
_HASH_BITS = 63 - _BAND_BITS
_MASK64 = (1 << 64) - 1


class NearDupSettings(Strict):
    """MinHash LSH settings (recipe section `near_dedup`). Defaults chosen by bench/bench_minhash.py."""

    shingle: int = Field(2, ge=1, le=16)  # words per shingle
    num_perm: int = Field(96, ge=8, le=1024)  # MinHash permutations (signature length)
    bands: int = Field(32, ge=1, le=1 << _BAND_BITS)  # = key rows per record in the store
    rows: int = Field(3, ge=1)  # permutations per band: bands * rows == num_perm
    threshold: float = Field(0.6, gt=0, le=1)  # estimated Jaccard that confirms a candidate pair
    # reject a pair whose texts each have a number, quoted word or name the other lacks
    # ("capital of France?" vs "... of Spain?"), see `differs_in_essential_words`
    essential_word_guard: bool = True
    # shorter instructions are never near-duplicates: "How do I make apple juice?" / "... escargot?" share
    # most shingles yet ask different things; their real copies (case, spacing) are exact-dedup's job
    min_words: int = Field(8, ge=1)
    # a shingle shared by more candidate texts than this is template boilerplate ("Try to explain your
    # answer. Your explanation should ..."): a confirmed pair must still reach `threshold` without it
    max_shingle_df: int = Field(5, ge=2)
    seed: int = Field(42, ge=0, lt=1 << 63)

    @model_validator(mode="after")
    def _bands_cover_signature(self) -> "NearDupSettings":
        if self.bands * self.rows != self.num_perm:
            raise ValueError(f"bands * rows must equal num_perm: {self.bands} * {self.rows} != {self.num_perm}")
        return self

    @property
    def index_fingerprint(self) -> str:
        """Identifies everything that determines band keys; store it beside them."""
        return (
            f"rensa{version('rensa')}-rmh{RMinHash.ALGORITHM_VERSION}-v{ALGORITHM_VERSION}"
            f"-w{self.shingle}-p{self.num_perm}-b{self.bands}x{self.rows}-s{self.seed}"
        )


# --- 1. shingles -------------------------------------------------------------------------------------

# ASCII fast path: one bytes.translate lowercases and turns everything but letters and digits into spaces.
_ASCII_TABLE = bytes(c + 32 if 65 <= c <= 90 else c if (97 <= c <= 122 or 48 <= c <= 57) else 32 for c in range(256))
_CJK = ((0x3040, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x2FFFF))


class _WordChars(dict):
    """str.translate table for non-ASCII text, filled lazily per character: Unicode punctuation,
    symbols, separators and controls (categories P, S, Z, C) become spaces, CJK characters become
    words of their own, everything else (letters, marks, digits) stays."""

    def __missing__(self, code: int) -> str:
        char = chr(code)
        if unicodedata.category(char)[0] in "PSZC":  # "_" is punctuation (Pc) too
            value = " "
        elif any(lo <= code <= hi for lo, hi in _CJK):
            value = f" {char} "
        else:
            value = char
        self[code] = value
        return value


_WORD_CHARS = _WordChars()
# a quoted span: opening quote after a space or bracket, closing quote before a space or punctuation
_QUOTED = re.compile(r"""(?:^|(?<=[\s(\[:=]))['"“‘`]([^'"”’`\n]{1,200})['"”’`](?=[\s.,;:!?)\]]|$)""")
# a capitalised word that does not start a sentence, a line or a list item
_MID_SENTENCE_CAPITALISED = re.compile(r"(?<=[^\s.!?:\n>*#-] )[A-Z][\w'-]*")
# programming languages, which shingles cannot tell apart ("C", "C++" and "C#" all become the word "c"):
# names that are also English words count only as written ("Go", "Rust", "C"), the others in any case
_LANGUAGE_ALIASES = {
    "c++": "cpp",
    "c#": "csharp",
    "f#": "fsharp",
    "js": "javascript",
    "golang": "go",
    "objective-c": "objc",
    "node.js": "javascript",
    "ts": "typescript",
    "vb.net": "vbnet",
}
_LANGUAGE_ANY_CASE = re.compile(
    r"(?<![\w+#.-])(c\+\+|c#|f#|objective-c|node\.js|vb\.net|javascript|typescript|python|java|kotlin|haskell|"
    r"php|perl|scala|fortran|cobol|matlab|golang|elixir|erlang|clojure|ocaml|powershell|bash|sql|html|css|lua|"
    r"solidity|verilog|vhdl|lisp|prolog|cpp|csharp)(?:\d(?:\.\d+)?)?(?![\w+#])",
    re.IGNORECASE,
)
_LANGUAGE_AS_WRITTEN = re.compile(
    r"(?<![\w+#.-])(C|R|Go|Rust|Swift|Ruby|Dart|Julia|Scheme|Racket|Groovy|JS|TS)(?![\w+#])"
)


def text_words(text: str) -> list[str]:
    """The words shingles are made of: casefolded, NFKC-normalised, punctuation removed."""
    if text.isascii():
        return text.encode("ascii").translate(_ASCII_TABLE).decode("ascii").split()
    text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())  # NFKC_Casefold
    return text.translate(_WORD_CHARS).split()


def shingle_text(text: str, size: int = 2) -> list[str]:
    """Word `size`-grams of the normalised text, joined by single spaces (order kept, repeats kept).

    A text with fewer than `size` words is one shingle (the whole normalised text; "" when empty),
    so short prompts still match their own near-copies instead of having no shingles at all.
    """
    words = text_words(text)
    if len(words) <= size:
        return [" ".join(words)]
    return list(map(" ".join, zip(*(words[i:] for i in range(size)))))  # 25% faster than slicing


# --- 2. signatures -----------------------------------------------------------------------------------


@contextmanager
def _gc_paused() -> Iterator[None]:
    # Converting rensa's matrix to rows makes one list per row; CPython's cyclic GC would rescan those
    # lists over and over (measured: 7x slower). They hold only ints, so no cycles are missed.
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _signature_rows(shingles: list[list[str]], settings: NearDupSettings) -> np.ndarray:
    matrix = RMinHash.digest_matrix_from_token_sets(shingles, settings.num_perm, settings.seed)
    with _gc_paused():
        return np.asarray(matrix.to_rows(), dtype=np.uint32).reshape(len(shingles), settings.num_perm)


def signatures(texts: Sequence[str], settings: NearDupSettings, *, chunk: int = 20_000) -> np.ndarray:
    """MinHash signatures, uint32 array of shape (len(texts), num_perm); the same text, settings and
    rensa version always give the same row. Works in chunks to bound the Python lists rensa returns."""
    out = np.empty((len(texts), settings.num_perm), dtype=np.uint32)
    for start in range(0, len(texts), chunk):
        shingles = [shingle_text(t, settings.shingle) for t in texts[start : start + chunk]]
        out[start : start + len(shingles)] = _signature_rows(shingles, settings)
    return out


# --- 3. band keys ------------------------------------------------------------------------------------


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _mix64(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, vectorised (uint64 arithmetic wraps, as intended)."""
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def band_keys(sigs: np.ndarray, settings: NearDupSettings) -> np.ndarray:
    """One non-negative int64 key per (row, band), shape (n, bands): band b hashes permutations
    b*rows .. (b+1)*rows-1 into 56 bits and puts b in bits 56-62, so equal keys mean the same band."""
    n, num_perm = sigs.shape
    if num_perm != settings.num_perm:
        raise ValueError(f"signatures have {num_perm} permutations, settings say {settings.num_perm}")
    per_row = sigs.reshape(n, settings.bands, settings.rows)
    band = np.arange(settings.bands, dtype=np.uint64) << np.uint64(_HASH_BITS)
    out = np.empty((n, settings.bands), dtype=np.int64)
    for s in range(0, n, 32_768):  # chunks keep the uint64 temporaries in cache
        h = np.zeros((min(n - s, 32_768), settings.bands), dtype=np.uint64)
        for j in range(settings.rows):  # multiply-add with a distinct odd constant per position
            h += per_row[s : s + len(h), :, j]
            h += np.uint64(1)
            h *= np.uint64(_splitmix64(j) | 1)
        out[s : s + len(h)] = ((_mix64(h) >> np.uint64(64 - _HASH_BITS)) | band).view(np.int64)
    return out


# --- 4. candidate pairs ------------------------------------------------------------------------------


class Candidates(NamedTuple):
    """Row-index pairs sharing at least one band key, each pair once, sorted."""

    within: np.ndarray  # (p, 2) int64: [i, j] with i < j, both rows of the new batch
    across: np.ndarray  # (q, 2) int64: [new row, existing row]


def _unique_pairs(a: np.ndarray, b: np.ndarray, width: int) -> np.ndarray:
    codes = np.unique(a.astype(np.int64) * width + b)
    return np.stack([codes // width, codes % width], axis=1)


def candidate_pairs(keys_new: np.ndarray, keys_existing: np.ndarray | None = None, *, window: int = 64) -> Candidates:
    """Pairs of rows that share a band key: among `keys_new`, and between `keys_new` and `keys_existing`.

    A bucket (rows with one key) of g rows gives all g(g-1)/2 pairs while g <= `window`; a larger
    bucket (thousands of copies of one template) pairs each row with its `window` - 1 neighbours in
    row order, and each new row with the first `window` existing rows of the bucket, so one hot key
    cannot produce millions of pairs. Sort-based, no Python loop over rows.
    """
    n, bands = keys_new.shape
    flat = keys_new.ravel()
    if keys_existing is None or len(keys_existing) == 0:
        # only keys held twice make pairs: found by sorting values (vectorised: ~20x an argsort), so the
        # stable argsort runs over those entries only
        values = np.sort(flat)
        twice = KeySet(values[1:][values[1:] == values[:-1]])
        entries = np.flatnonzero(twice.contains(flat))
        order = entries[np.argsort(flat[entries], kind="stable")]  # stable: rows ascending inside a bucket
        k, r = flat[order], order // bands
    else:
        order = np.argsort(flat, kind="stable")
        keys, rows = flat[order], order // bands
        same = keys[1:] == keys[:-1]
        shared = np.zeros(len(keys), dtype=bool)
        shared[1:] |= same
        shared[:-1] |= same
        k, r = keys[shared], rows[shared]
    firsts, seconds = [], []
    for d in range(1, window):
        hit = k[d:] == k[:-d]
        if not hit.any():
            break
        firsts.append(r[:-d][hit])
        seconds.append(r[d:][hit])
    within = (
        _unique_pairs(np.concatenate(firsts), np.concatenate(seconds), max(n, 1))
        if firsts
        else np.empty((0, 2), dtype=np.int64)
    )
    if keys_existing is None or len(keys_existing) == 0:
        return Candidates(within, np.empty((0, 2), dtype=np.int64))
    if keys_existing.shape[1] != bands:
        raise ValueError(f"existing keys have {keys_existing.shape[1]} bands, new keys {bands}")
    ex_flat = keys_existing.ravel()
    lo = np.searchsorted(keys, ex_flat, side="left")
    hi = np.searchsorted(keys, ex_flat, side="right")
    hit = np.flatnonzero(hi > lo)  # existing (row, band) entries whose key is new too
    hit = hit[np.argsort(ex_flat[hit], kind="stable")]
    hk = ex_flat[hit]
    starts = np.r_[True, hk[1:] != hk[:-1]]  # rank each hit inside its key; keep `window`
    first_of_key = np.maximum.accumulate(np.where(starts, np.arange(len(hk)), 0))
    hit = hit[np.arange(len(hk)) - first_of_key < window]
    lo, count = lo[hit], (hi - lo)[hit]
    new_pos = np.repeat(lo - np.cumsum(count) + count, count) + np.arange(count.sum())
    across = _unique_pairs(rows[new_pos], np.repeat(hit // bands, count), len(keys_existing))
    return Candidates(within, across)


class KeySet:
    """A fixed set of band keys that millions of stored keys are tested against, a partition at a time.

    A table of bits over the keys' low bits (uniform hash bits) rules most keys out with one lookup each,
    and a binary search in the sorted set confirms the rest: ~10x faster than searching every key
    (1.6 M keys against 64 k: 46 ms vs 685 ms, measured on the loaded 2-core machine)."""

    def __init__(self, keys: np.ndarray):
        self.sorted = np.unique(keys.astype(np.int64, copy=False))
        # ~1/32 of the flags set (16-32 MiB at 320 k keys): 1.5x faster than a fixed 4 MiB table there
        bits = int(np.clip(np.ceil(np.log2(max(len(self.sorted), 1) * 32)), 16, 25))
        self.mask = np.int64((1 << bits) - 1)
        self.maybe = np.zeros(1 << bits, dtype=bool)
        self.maybe[self.sorted & self.mask] = True

    def __len__(self) -> int:
        return len(self.sorted)

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """Per key (any shape): True when it is in the set."""
        flat = keys.astype(np.int64, copy=False).reshape(-1)
        found = np.zeros(len(flat), dtype=bool)
        if len(self.sorted):
            maybe = np.flatnonzero(self.maybe[flat & self.mask])
            at = np.minimum(np.searchsorted(self.sorted, flat[maybe]), len(self.sorted) - 1)
            found[maybe] = self.sorted[at] == flat[maybe]
        return found.reshape(keys.shape)


# --- 5. confirmation ---------------------------------------------------------------------------------


def jaccard_estimate(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard similarity: the share of equal signature positions (row by row for 2-D input)."""
    return (sig_a == sig_b).mean(axis=-1)


def pair_jaccard(
    sigs: np.ndarray, pairs: np.ndarray, other: np.ndarray | None = None, *, chunk: int = 100_000
) -> np.ndarray:
    """`jaccard_estimate` for each pair [i, j] of rows sigs[i] and (other or sigs)[j], in chunks."""
    other = sigs if other is None else other
    out = np.empty(len(pairs), dtype=np.float64)
    for s in range(0, len(pairs), chunk):
        p = pairs[s : s + chunk]
        out[s : s + chunk] = jaccard_estimate(sigs[p[:, 0]], other[p[:, 1]])
    return out


def languages(text: str) -> set[str]:
    """The programming languages a text names, as `lang:<name>` tokens (never equal to a word)."""
    found = {m.lower() for m in _LANGUAGE_ANY_CASE.findall(text)} | {
        m.lower() for m in _LANGUAGE_AS_WRITTEN.findall(text)
    }
    return {"lang:" + _LANGUAGE_ALIASES.get(name, name) for name in found}


def essential_words(text: str) -> set[str]:
    """Words that make a prompt what it is, casefolded: numbers, words inside quotes, words capitalised
    in mid-sentence (names: "France", "Picasso") and programming languages (`languages`). Templates
    differ in exactly these."""
    found: set[str] = languages(text)
    for span in _QUOTED.findall(text):
        found.update(text_words(span))
    for word in _MID_SENTENCE_CAPITALISED.findall(text):
        found.update(text_words(word))
    found.update(w for w in text_words(text) if any(c.isdigit() for c in w))
    return found - {"i"}


def differs_in_essential_words(text_a: str, text_b: str) -> bool:
    """True when each text has an essential word that occurs nowhere in the other: a substitution of
    what the prompt is about ("capital of France?" vs "capital of Spain?"), as templates produce.

    Jaccard cannot tell such pairs (0.6 on word 3-grams; ~0.8 for the 40-word AlpacaEval prompts that
    differ in one nationality) from a near-copy with a word or two changed; this guard can, when the
    changed word is a number, a quoted word or a name. One-sided additions ("... Answer in formal
    English.") and case or whitespace variants never trip it. A plain lower-case word is no signal:
    "a haiku about autumn" vs "... about snow" still needs the Jaccard threshold.
    """
    words_a, words_b = set(text_words(text_a)) | languages(text_a), set(text_words(text_b)) | languages(text_b)
    return bool(essential_words(text_a) - words_b) and bool(essential_words(text_b) - words_a)


def confirm_pairs(
    pairs: np.ndarray,
    sigs: np.ndarray,
    texts: Sequence[str],
    settings: NearDupSettings,
    other_sigs: np.ndarray | None = None,
    other_texts: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs that are near-duplicates: estimated Jaccard >= threshold, both texts of at least
    `min_words` words, and (with the guard on) not `differs_in_essential_words`. Returns (confirmed pairs, their Jaccard estimates).
    For pairs across batches pass the existing rows' signatures and texts as `other_*`."""
    other_texts = texts if other_texts is None else other_texts
    estimate = pair_jaccard(sigs, pairs, other_sigs)
    keep = estimate >= settings.threshold
    for k in np.flatnonzero(keep):
        i, j = pairs[k]
        a, b = texts[i], other_texts[j]
        keep[k] = (
            len(text_words(a)) >= settings.min_words
            and len(text_words(b)) >= settings.min_words
            and not (settings.essential_word_guard and differs_in_essential_words(a, b))
        )
    return pairs[keep], estimate[keep]


def boilerplate_shingles(texts: Sequence[str], settings: NearDupSettings) -> set[str]:
    """Shingles that occur in more than `max_shingle_df` of the texts: a template's shared words, which
    make its instances look alike without being copies of each other."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(set(shingle_text(text, settings.shingle)))
    return _frequent(counts, settings)


def _frequent(counts: Counter[str], settings: NearDupSettings) -> set[str]:
    return {shingle for shingle, n in counts.items() if n > settings.max_shingle_df}


def without_boilerplate(
    pairs: np.ndarray, estimates: np.ndarray, texts: Sequence[str], settings: NearDupSettings, boilerplate: set[str]
) -> tuple[np.ndarray, np.ndarray]:
    """The pairs whose exact Jaccard over non-boilerplate shingles still reaches `threshold`
    (pairs with nothing left but boilerplate fall back to the MinHash estimate)."""
    keep = np.ones(len(pairs), dtype=bool)
    for k, (i, j) in enumerate(pairs.tolist()):
        a = set(shingle_text(texts[i], settings.shingle)) - boilerplate
        b = set(shingle_text(texts[j], settings.shingle)) - boilerplate
        if a or b:
            keep[k] = len(a & b) / len(a | b) >= settings.threshold
    return pairs[keep], estimates[keep]


class PairJudge:
    """Steps 2 and 5 over one set of texts: their `signatures` and the boilerplate counted over them
    (`boilerplate_shingles`), kept so that pairs found later can be judged the same way. Each text is
    shingled once for its signature and the count, a chunk at a time (all the texts' shingles at once
    would hold ~1 KB a text)."""

    def __init__(self, texts: Sequence[str], settings: NearDupSettings, *, chunk: int = 20_000):
        self.texts, self.settings = texts, settings
        self.sigs = np.empty((len(texts), settings.num_perm), dtype=np.uint32)
        counts: Counter[str] = Counter()
        for start in range(0, len(texts), chunk):
            shingles = [shingle_text(t, settings.shingle) for t in texts[start : start + chunk]]
            counts.update(chain.from_iterable(map(set, shingles)))
            self.sigs[start : start + len(shingles)] = _signature_rows(shingles, settings)
        self.boilerplate = _frequent(counts, settings)

    def confirm(self, pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`confirm_pairs`, then `without_boilerplate`: (confirmed pairs, their estimates)."""
        confirmed, estimates = confirm_pairs(pairs, self.sigs, self.texts, self.settings)
        return without_boilerplate(confirmed, estimates, self.texts, self.settings, self.boilerplate)

    def similar(self, row: int, others: Sequence[int]) -> list[float | None]:
        """Per other row: the estimate when (row, other) is a confirmed pair, else None."""
        pairs = np.array([[row, other] for other in others], dtype=np.int64).reshape(-1, 2)
        confirmed, estimates = self.confirm(pairs)
        found = dict(zip(confirmed[:, 1].tolist(), estimates.tolist()))
        return [found.get(other) for other in others]


def confirm(pairs: np.ndarray, texts: Sequence[str], settings: NearDupSettings) -> tuple[np.ndarray, np.ndarray]:
    """`PairJudge(texts).confirm(pairs)`: (confirmed pairs, their estimates)."""
    return PairJudge(texts, settings).confirm(pairs)


# --- 6. the keep rule and the representatives ---------------------------------------------------------


def clusters(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected components of the pairs (union-find, hooking on the smaller index).
    Returns per row its cluster id: the smallest row index in its cluster (a lone row is its own)."""
    parent = np.arange(n)
    if len(pairs) == 0:
        return parent
    a, b = pairs[:, 0], pairs[:, 1]
    while True:
        ra, rb = parent[a], parent[b]
        if np.array_equal(ra, rb):
            return parent
        low = np.minimum(ra, rb)
        np.minimum.at(parent, ra, low)  # hook both roots under the smaller one
        np.minimum.at(parent, rb, low)
        while True:  # compress paths until every row points at a root
            nxt = parent[parent]
            if np.array_equal(nxt, parent):
                break
            parent = nxt


@dataclass(frozen=True)
class Member:
    """A record in a confirmed pair, with what the keep rule looks at."""

    record_id: str
    priority: int  # source priority from the recipe: lower wins
    completeness: int  # e.g. total characters of the conversation: longer (more complete) wins
    accepted: bool = False  # kept by an earlier run: an incremental run never swaps it for a new record


def keep_rank(member: Member) -> tuple[bool, int, int, str]:
    """The keep rule: a record accepted before wins, then the lowest source priority, then the most
    complete, then the smallest record id (a tie-break that makes the choice deterministic and
    independent of input order)."""
    return (not member.accepted, member.priority, -member.completeness, member.record_id)


class Representative(NamedTuple):
    """Why a record was dropped: the accepted record it near-duplicates, and that pair's Jaccard estimate."""

    row: int
    jaccard: float


def representatives(
    members: Sequence[Member],
    pairs: np.ndarray,
    estimates: np.ndarray,
    similar: Callable[[int, Sequence[int]], list[float | None]] | None = None,
    *,
    max_checks: int = 64,
) -> list[Representative | None]:
    """Per member: None when it is accepted, else the accepted member it duplicates.

    Members are walked in keep order (`keep_rank`). One is dropped only when it is a confirmed pair with
    a member accepted before it, and names the most similar such member (ties: the earlier in keep
    order). So a chain a~b~c, where a and c are no pair, keeps c: connected components would drop it as
    a duplicate of a record it does not resemble. A member accepted by an earlier run is always accepted.

    The pairs are only candidates' confirmations: a hot template's bucket pairs each row with its window
    of neighbours only (`candidate_pairs`), so a member may be paired with no accepted member of its
    cluster (connected component) at all. `similar(row, rows)` (`PairJudge.similar`) then judges it
    against up to `max_checks` accepted members of its cluster, the earliest in keep order first."""
    if len(pairs) != len(estimates):
        raise ValueError(f"{len(pairs)} pairs for {len(estimates)} estimates")
    neighbours: list[list[tuple[int, float]]] = [[] for _ in members]
    for (a, b), e in zip(pairs.tolist(), estimates.tolist()):
        neighbours[a].append((b, e))
        neighbours[b].append((a, e))
    cluster = clusters(len(members), pairs).tolist()
    order = sorted(range(len(members)), key=lambda row: keep_rank(members[row]))
    position = {row: n for n, row in enumerate(order)}
    out: list[Representative | None] = [None] * len(members)
    accepted = np.zeros(len(members), dtype=bool)
    accepted_in: dict[int, list[int]] = {}  # cluster -> its accepted rows, in keep order
    for row in order:
        if not members[row].accepted:
            found = [(e, other) for other, e in neighbours[row] if accepted[other]]
            if not found and similar is not None and accepted_in.get(cluster[row]):
                others = accepted_in[cluster[row]][:max_checks]
                found = [(e, other) for other, e in zip(others, similar(row, others)) if e is not None]
            if found:
                e, other = max(found, key=lambda f: (f[0], -position[f[1]]))
                out[row] = Representative(other, e)
                continue
        accepted[row] = True
        accepted_in.setdefault(cluster[row], []).append(row)
    return out
