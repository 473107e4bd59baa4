"""Benchmark decontamination, n-gram part: which benchmark items does a record's text contain?

A `BenchmarkSpec` names a JSONL file of benchmark items and the fields that hold their prompt;
`load_items` turns it into `BenchmarkItem`s. `NgramIndex.build(items)` indexes their word n-grams
(13 by default, as datatrove and the GPT-3 paper do) and `NgramIndex.match(text)` returns, per
benchmark item, the evidence that `text` contains it as a `Match` (benchmark, item id, method,
score). The embedding-cosine matcher (a later module) returns the same `Match` type with method
`embedding`, so `best_matches` merges the two and `contaminating` applies the recipe threshold.

Texts and items
    Every text value a spec's fields yield (list values flattened) is its own item, with id
    `<id>#<k>` (k = 1, 2, ...) when one benchmark line yields several: MT-Bench's two turns are two
    items, `81#1` and `81#2`. A record that copied only turn 1, or turn 1 and 2 around its own
    answer, then matches turn 1 at full score, where one joined text would share only part of its
    n-grams (n-grams across the turn boundary never occur in the record). `split_values: false`
    joins a line's values into one text instead (e.g. a question and its answer choices).

Normalisation (`normalise_words`)
    Unicode NFKC, casefold, then the words are the runs of `\\w` characters: punctuation and
    symbols become word breaks, whitespace collapses. `\\w` includes `_` and digits, so code
    identifiers (`has_close_elements`) stay one word. Case is folded in code too (`List` = `list`);
    a prompt with renamed identifiers loses only the n-grams that contain a renamed name. With
    `mask_numbers` (default) every all-digit word reads as "0" ("$80,000" → "0 0"), so a copy with
    the numbers changed, the commonest GSM8K-style rewrite, still matches in full. With
    `mask_identifiers` (default) the names a code text defines (`def`/`class` names and parameters)
    read as their order of definition (`defined_names`), on both sides, so a HumanEval prompt with
    its function and arguments renamed everywhere still matches in full.

Hashing
    A word hashes to the first 8 bytes of its BLAKE2b digest; an n-gram to a polynomial over its
    word hashes mod 2^64 (computed for all windows at once with numpy, by doubling), finished with
    the MurmurHash3 64-bit mixer: stable across processes and machines (never Python's salted
    `hash`), so a persisted index stays valid. Only words that occur in some benchmark item are
    looked up on the record side (a dict hit); any other word can be in no indexed n-gram and reads
    as a sentinel, so no record word is hashed with BLAKE2b. A bitmap over the keys' low bits
    rejects most record n-grams before any binary search.

Scores and methods
    * `ngram` (items of at least n words): score = the fraction of the item's distinct n-grams that
      occur in the text; every item sharing at least one n-gram is reported (`match`), as evidence
      for the audit table.
    * `containment` (items of `min_short_words` ≤ words < n: 40 of MT-Bench's 160 turns, e.g.
      "Prove the Pythagorean theorem."): the item's whole normalised word sequence occurs
      contiguously in the text; score 1.0. Found by indexing each short item under the hash of its
      first `min_short_words` words and verifying the rest word by word. n-gram overlap alone never
      sees these items.
    * Items under `min_short_words` words (default 4, so every real MT-Bench turn is indexed) are
      not indexed and are listed in `NgramIndex.skipped`.
    A text is contaminated by an item when its score ≥ `threshold` (`contaminating`).

Pass the record's user turns (optionally with the response: it costs little precision, see below).

Defaults: n = 13, threshold = 0.1, min_short_words = 4, mask_numbers = True. The threshold is a
share of the item's n-grams, not "any shared n-gram": with numbers masked, single shared 13-grams
are common in arithmetic and code answers (runs like "0 0 0 ...", DP loops, hex digit strings):
0.1 flags a seventh of the clean records "any" flags (24 vs 178 of 15,475) and keeps its recall
on copies and changed numbers, giving up some on heavier edits.

The measurements behind these defaults (recall per edit, false drops, speed): bench/RESULTS.md,
"N-gram decontamination defaults".
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import chain
from pathlib import Path

import numpy as np
from pydantic import Field

from infinstruct.errors import DataError, permanent_os_error
from infinstruct.strict import Strict

DEFAULT_N = 13
DEFAULT_THRESHOLD = 0.1
DEFAULT_MIN_SHORT_WORDS = 4


_NOT_UTF8 = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of bytes that are not UTF-8


class BenchmarkError(DataError, ValueError):
    """A benchmark file is missing, is not JSONL, or lacks a field its spec names."""


class BenchmarkSpec(Strict):
    """One benchmark to decontaminate against: a JSONL file and where each item's prompt text is."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    path: str  # JSONL; relative paths resolve against load_items' base_dir
    fields: list[str] = Field(min_length=1)  # dotted paths (list indices allowed: `choices.0`)
    id_field: str | None = None  # default: the 1-based line number
    split_values: bool = True  # each text value its own item (see the module docstring)


class NgramSettings(Strict):
    """Recipe settings of the n-gram matcher."""

    n: int = Field(DEFAULT_N, ge=2)
    threshold: float = Field(DEFAULT_THRESHOLD, gt=0, le=1)
    min_short_words: int = Field(DEFAULT_MIN_SHORT_WORDS, ge=1)
    mask_numbers: bool = True  # every all-digit word reads as "0": changed numbers still match
    mask_identifiers: bool = True  # names a code prompt defines read as their order: renamed code still matches


@dataclass(frozen=True, slots=True)
class BenchmarkItem:
    benchmark: str
    item_id: str
    text: str


class MatchMethod(StrEnum):
    NGRAM = "ngram"  # a share of the item's n-grams occurs in the text
    CONTAINMENT = "containment"  # a short item occurs whole in the text
    EMBEDDING = "embedding"  # reserved for the embedding-cosine matcher


@dataclass(frozen=True, slots=True)
class Match:
    """Evidence that a text contains a benchmark item."""

    benchmark: str
    item_id: str
    method: MatchMethod
    score: float  # ngram: share of the item's n-grams found; containment: 1.0
    shared: int  # ngram: how many of the item's n-grams were found; containment: the item's words


# --- loading -----------------------------------------------------------------------------------


def _resolve(record: object, dotted: str) -> object:
    value = record
    for part in dotted.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise KeyError(dotted)
    return value


def _flatten(value: object, where: str) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for v in value:
            yield from _flatten(v, where)
    else:
        raise BenchmarkError(f"{where}: expected text or a list of texts, got {type(value).__name__}")


def iter_items(spec: BenchmarkSpec, base_dir: Path | None = None) -> Iterator[BenchmarkItem]:
    """Stream a benchmark's items, line by line (blank texts are skipped)."""
    path = Path(spec.path)
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    if not path.is_file():
        raise BenchmarkError(f"benchmark {spec.name!r}: file {str(path)!r} not found")
    try:
        # a leading byte order mark is not part of the first item; bytes that are not UTF-8 are named by line
        with path.open(encoding="utf-8-sig", errors="surrogateescape") as lines:
            for line_no, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                yield from _line_items(spec, line, line_no, f"{path}:{line_no}")
    except OSError as exc:  # e.g. unreadable, or gone since the check above: the same on a retry
        if not permanent_os_error(exc):
            raise
        raise BenchmarkError(f"benchmark {spec.name!r}: cannot read {str(path)!r}: {exc.strerror}") from None


def _line_items(spec: BenchmarkSpec, line: str, line_no: int, where: str) -> Iterator[BenchmarkItem]:
    if _NOT_UTF8.search(line):
        raise BenchmarkError(f"{where}: not UTF-8 (benchmark {spec.name!r})")
    try:
        record = json.loads(line)
        texts = [t for f in spec.fields for t in _flatten(_resolve(record, f), f"{where}: field {f!r}")]
        item_id = str(_resolve(record, spec.id_field)) if spec.id_field else str(line_no)
    except BenchmarkError:
        raise
    except json.JSONDecodeError as exc:
        raise BenchmarkError(f"{where}: not JSON ({exc.msg})") from None
    except KeyError as exc:
        raise BenchmarkError(f"{where}: no field {exc.args[0]!r} (benchmark {spec.name!r})") from None
    except RecursionError:
        raise BenchmarkError(f"{where}: nested too deeply to read (benchmark {spec.name!r})") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise BenchmarkError(f"{where}: {str(exc)[:200]} (benchmark {spec.name!r})") from None
    texts = [t for t in texts if t.strip()]
    if not spec.split_values:
        texts = ["\n".join(texts)] if texts else []
    for k, text in enumerate(texts, 1):
        yield BenchmarkItem(spec.name, item_id if len(texts) == 1 else f"{item_id}#{k}", text)


def load_items(spec: BenchmarkSpec, base_dir: Path | None = None) -> list[BenchmarkItem]:
    """All items of one benchmark (see `iter_items`)."""
    return list(iter_items(spec, base_dir))


# --- normalisation and hashing -----------------------------------------------------------------

_WORD = re.compile(r"\w+")
# ASCII text (most records) takes a faster path with the same result as _WORD: non-word → space
_ASCII_BREAKS = str.maketrans({c: " " for c in map(chr, range(128)) if not (c.isalnum() or c == "_")})
_P = 0x9E3779B97F4A7C15  # odd: multiplication by it is a bijection mod 2^64
_M1, _M2 = np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53)
_S33 = np.uint64(33)
_UNKNOWN = 0x6A09E667F3BCC908  # a word in no benchmark item (fixed, not a BLAKE2b value)
_NUMBER = "0"  # what every number reads as under mask_numbers


def normalise_words(text: str) -> list[str]:
    """NFKC, casefold, words = runs of `\\w` (letters, digits, `_`); everything else separates."""
    text = unicodedata.normalize("NFKC", text).casefold()
    if text.isascii():
        return text.translate(_ASCII_BREAKS).split()
    return _WORD.findall(text)


_DEF = re.compile(r"\b(?:def|class)\s+([A-Za-z_]\w*)\s*(?:\(([^)]*)\))?")
_PARAM = re.compile(r"^\s*\**\s*([A-Za-z_]\w*)")


def defined_names(text: str) -> list[str]:
    """Names a code prompt defines (functions, classes, their parameters), casefolded, in order of definition.

    A benchmark's code item copied with its function and arguments renamed (`has_close_elements(numbers,
    threshold)` → `helper(values, limit)`) shares almost no n-gram with the original; read both with
    these names replaced by their order of definition and the copy matches in full."""
    if "def " not in text and "class " not in text:
        return []
    names: dict[str, None] = {}
    for match in _DEF.finditer(text):
        names.setdefault(match[1].casefold(), None)
        for param in (match[2] or "").split(","):
            found = _PARAM.match(param)
            if found and found[1] not in ("self", "cls"):
                names.setdefault(found[1].casefold(), None)
    return list(names)


def mask_defined_names(words: list[str], names: list[str]) -> list[str]:
    r"""`words` with each defined name replaced by a placeholder for its order of definition (words are
    runs of `\w`, so a placeholder can never be a real word)."""
    if not names:
        return words
    placeholder = {name: f"<id{k}>" for k, name in enumerate(names)}
    return [placeholder.get(w, w) for w in words]


def normalise(text: str) -> str:
    """The normalised text: its words joined by single spaces."""
    return " ".join(normalise_words(text))


def word_hash(word: str) -> int:
    """Stable 64-bit hash of one normalised word."""
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")


def _combine(a: np.ndarray, len_a: int, b: np.ndarray, len_b: int) -> np.ndarray:
    """Polynomials of the windows of length len_a + len_b, from those of len_a and of len_b."""
    m = len(a) - len_b  # windows of the combined length
    out = a[:m] * np.uint64(pow(_P, len_b, 1 << 64))
    out += b[len_a : len_a + m]
    return out


def _window_polys(word_hashes: np.ndarray, lengths: set[int]) -> dict[int, np.ndarray]:
    """sum_j w[i+j] * P^(L-1-j) mod 2^64 for every window length L in `lengths`, by doubling."""
    powers = {1: word_hashes}
    size = 1
    while size * 2 <= max(lengths) and len(word_hashes) >= size * 2:
        powers[size * 2] = _combine(powers[size], size, powers[size], size)
        size *= 2
    out = {}
    for length in lengths:
        if len(word_hashes) < length:
            out[length] = np.empty(0, dtype=np.uint64)
            continue
        bits = [b for b in sorted(powers, reverse=True) if length & b]
        poly, done = powers[bits[0]], bits[0]
        for b in bits[1:]:
            poly, done = _combine(poly, done, powers[b], b), done + b
        out[length] = poly
    return out


def _fmix(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser (in place): spreads the polynomial's weak low bits."""
    h ^= h >> _S33
    h *= _M1
    h ^= h >> _S33
    h *= _M2
    h ^= h >> _S33
    return h


def window_hashes(word_hashes: np.ndarray, n: int) -> np.ndarray:
    """Hash of every run of n consecutive words (position i → words i..i+n-1); uint64."""
    return _fmix(_window_polys(word_hashes, {n})[n].copy())


def _postings(keys: list[np.ndarray], owners: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """key → owners as sorted unique keys, offsets and the owners (CSR)."""
    if not keys:
        return np.empty(0, np.uint64), np.zeros(1, np.int64), np.empty(0, np.int32)
    all_keys, all_owners = np.concatenate(keys), np.concatenate(owners)
    order = np.argsort(all_keys, kind="stable")
    all_keys, all_owners = all_keys[order], all_owners[order]
    unique, starts = np.unique(all_keys, return_index=True)
    return unique, np.append(starts, len(all_keys)).astype(np.int64), all_owners.astype(np.int32)


class _KeyTable:
    """Sorted unique uint64 keys with a bitmap prefilter: most record n-grams are rejected by one
    bitmap probe instead of a binary search over all keys."""

    def __init__(self, keys: np.ndarray):
        self.keys = keys
        bits = int(np.clip(np.ceil(np.log2(max(keys.size, 1) * 64)), 16, 26))  # ≤ 1/64 occupancy up to 1M keys
        self._mask = np.uint64((1 << bits) - 1)
        self._bitmap = np.zeros(1 << bits, dtype=bool)
        self._bitmap[(keys & self._mask).astype(np.intp)] = True

    def find(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions in `values` that are keys, and the indices of those keys."""
        if not self.keys.size or not values.size:
            return np.empty(0, np.intp), np.empty(0, np.intp)
        candidates = np.flatnonzero(self._bitmap[(values & self._mask).astype(np.intp)])
        if not candidates.size:
            return candidates, candidates
        pos = np.searchsorted(self.keys, values[candidates])
        pos[pos == self.keys.size] = 0
        hit = self.keys[pos] == values[candidates]
        return candidates[hit], pos[hit]


class _Vocabulary(dict):
    """Benchmark words and their hashes; any other word reads as the one `_UNKNOWN` hash, and with
    `mask_numbers` any number as "0" (numbers are stored as "0" only, so a known word never is one)."""

    def __init__(self, mask_numbers: bool):
        super().__init__()
        self.mask_numbers = mask_numbers
        self._number = word_hash(_NUMBER) if mask_numbers else _UNKNOWN

    def add(self, word: str) -> int:
        if self.mask_numbers and word.isdigit():
            word = _NUMBER
        if word not in self:
            self[word] = word_hash(word)
        return self[word]

    def __missing__(self, word: str) -> int:
        return self._number if word.isdigit() else _UNKNOWN


# --- the index ---------------------------------------------------------------------------------


class NgramIndex:
    """Benchmark items indexed by word n-grams (and short items by their first words)."""

    def __init__(self, items: list[BenchmarkItem], settings: NgramSettings):
        self.settings = settings
        self.items: list[BenchmarkItem] = []  # indexed items
        self.skipped: list[BenchmarkItem] = []  # shorter than min_short_words: not indexed
        self._vocab = _Vocabulary(settings.mask_numbers)  # benchmark word → word hash
        n, k = settings.n, min(settings.min_short_words, settings.n)
        grams, gram_owner, totals = [], [], []
        heads, head_owner, self._short_words = [], [], {}
        for item in items:
            words = self._words(item.text)
            if len(words) < k:
                self.skipped.append(item)
                continue
            index = len(self.items)
            self.items.append(item)
            wh = np.array([self._vocab.add(w) for w in words], dtype=np.uint64)
            if len(words) >= n:
                g = np.unique(window_hashes(wh, n))
                grams.append(g)
                gram_owner.append(np.full(g.size, index, np.int32))
                totals.append(g.size)
            else:
                heads.append(window_hashes(wh[:k], k))
                head_owner.append(np.array([index], np.int32))
                self._short_words[index] = wh
                totals.append(0)
        self._k = k
        self._totals = np.array(totals, dtype=np.int64)
        keys, self._starts, self._owners = _postings(grams, gram_owner)
        self._keys = _KeyTable(keys)
        heads, self._head_starts, self._head_owners = _postings(heads, head_owner)
        self._heads = _KeyTable(heads)

    @classmethod
    def build(
        cls,
        items: Iterable[BenchmarkItem],
        n: int = DEFAULT_N,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        min_short_words: int = DEFAULT_MIN_SHORT_WORDS,
        mask_numbers: bool = True,
    ) -> NgramIndex:
        """Index benchmark items: n-grams of items with ≥ n words, heads of the shorter ones."""
        return cls(
            list(items),
            NgramSettings(n=n, threshold=threshold, min_short_words=min_short_words, mask_numbers=mask_numbers),
        )

    @classmethod
    def from_specs(
        cls, specs: Iterable[BenchmarkSpec], settings: NgramSettings = NgramSettings(), base_dir: Path | None = None
    ) -> NgramIndex:
        """Load every benchmark and index its items."""
        return cls([item for spec in specs for item in iter_items(spec, base_dir)], settings)

    def __len__(self) -> int:
        return len(self.items)

    def _words(self, text: str) -> list[str]:
        words = normalise_words(text)
        return mask_defined_names(words, defined_names(text)) if self.settings.mask_identifiers else words

    def match(self, text: str) -> list[Match]:
        """Every item `text` shares evidence with (best match per item), highest score first."""
        words = self._words(text)
        if len(words) < self._k:
            return []
        wh = np.fromiter(map(self._vocab.__getitem__, words), dtype=np.uint64, count=len(words))
        n, k = self.settings.n, self._k
        polys = _window_polys(wh, {n, k})
        heads = polys[k].copy() if polys[k] is wh else polys[k]
        grams = _fmix(polys[n]) if n != k else heads  # fmix in place: every poly is computed by now
        heads = _fmix(heads)
        matches = self._ngram_matches(grams) + self._containment_matches(wh, heads)
        matches.sort(key=lambda m: (-m.score, m.benchmark, m.item_id))
        return matches

    def contaminating(self, text: str) -> list[Match]:
        """The matches at or above the settings' threshold: the items that contaminate `text`."""
        return contaminating(self.match(text), self.settings.threshold)

    def match_many(self, texts: Sequence[str]) -> list[list[Match]]:
        """`match` of each text. Nearly every text shares nothing with a benchmark: the n-grams and heads of
        the whole batch are hashed and looked up in one numpy pass over the texts' words laid end to end
        (a window that crosses into the next text is ignored), and only texts with a hit go through `match`.
        Per text, numpy's call overhead was most of the stage (~80 µs a record)."""
        words = [self._words(text) for text in texts]
        out: list[list[Match]] = [[] for _ in texts]
        n, k = self.settings.n, self._k
        long_enough = [i for i, w in enumerate(words) if len(w) >= k]
        if not long_enough or not len(self.items):
            return out
        sizes = np.array([len(words[i]) for i in long_enough], dtype=np.int64)
        ends = np.cumsum(sizes)
        owner = np.repeat(np.arange(len(long_enough)), sizes)  # which text each word position is in
        wh = np.fromiter(
            map(self._vocab.__getitem__, chain.from_iterable(words[i] for i in long_enough)),
            dtype=np.uint64,
            count=int(ends[-1]),
        )
        polys = _window_polys(wh, {n, k})
        hit_texts: set[int] = set()
        for length, table in ((n, self._keys), (k, self._heads)):
            hashes = _fmix(polys[length].copy())
            at, _ = table.find(hashes)
            inside = at + length <= ends[owner[at]]
            hit_texts.update(owner[at[inside]].tolist())
        for t in sorted(hit_texts):
            i = long_enough[t]
            out[i] = self.match(texts[i])
        return out

    def contaminating_many(self, texts: Sequence[str]) -> list[list[Match]]:
        """`contaminating` of each text (see `match_many`)."""
        return [contaminating(matches, self.settings.threshold) for matches in self.match_many(texts)]

    def _ngram_matches(self, grams: np.ndarray) -> list[Match]:
        hit, key = self._keys.find(grams)
        if not hit.size:
            return []
        starts, owners = self._starts, self._owners
        # a repeated n-gram counts once: unique keys, then one owner entry per (key, item)
        found = np.concatenate([owners[starts[i] : starts[i + 1]] for i in np.unique(key).tolist()])
        indices, shared = np.unique(found, return_counts=True)
        return [
            Match(self.items[i].benchmark, self.items[i].item_id, MatchMethod.NGRAM, float(s / self._totals[i]), s)
            for i, s in zip(indices.tolist(), shared.tolist())
        ]

    def _containment_matches(self, wh: np.ndarray, heads: np.ndarray) -> list[Match]:
        positions, key = self._heads.find(heads)
        found: set[int] = set()
        starts, owners = self._head_starts, self._head_owners
        for p, i in zip(positions.tolist(), key.tolist()):
            for owner in owners[starts[i] : starts[i + 1]].tolist():
                words = self._short_words[owner]
                if owner not in found and np.array_equal(wh[p : p + words.size], words):
                    found.add(owner)
        return [
            Match(
                self.items[i].benchmark, self.items[i].item_id, MatchMethod.CONTAINMENT, 1.0, self._short_words[i].size
            )
            for i in sorted(found)
        ]


def best_matches(*match_lists: Iterable[Match]) -> list[Match]:
    """Merge matchers' results: the highest-scoring match per (benchmark, item), best first."""
    best: dict[tuple[str, str], Match] = {}
    for matches in match_lists:
        for m in matches:
            key = (m.benchmark, m.item_id)
            if key not in best or m.score > best[key].score:
                best[key] = m
    return sorted(best.values(), key=lambda m: (-m.score, m.benchmark, m.item_id))


def contaminating(matches: Iterable[Match], threshold: float) -> list[Match]:
    """The matches whose score reaches the threshold."""
    return [m for m in matches if m.score >= threshold]
