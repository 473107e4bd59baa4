"""DSIR importance resampling toward a target distribution (Xie et al. 2023, "Data Selection for
Language Models via Importance Resampling").

1. Features: the lower-cased words of a text (runs of letters/digits; each CJK character is a
   word), as unigrams and bigrams, hashed into ``num_buckets`` buckets with a seeded hash
   (blake2b keyed by the seed, so buckets are the same in every process and on every machine).
2. Fit: the bucket counts of the target texts and of the raw pool, each smoothed with
   ``smoothing`` pseudo-counts per bucket and normalised, give ``p_target`` and ``p_raw``.
   Counting is streaming: texts come from any iterator and are featurised ``batch_size`` at a time.
3. Weight: ``log w(x) = Σ_features count_j(x) · (log p_target[j] − log p_raw[j])``, the log
   likelihood ratio of the text under the two bag-of-ngrams models (optionally divided by the
   number of features, ``length_normalise``: the paper's weights grow with length. Measured on
   the pool with half of gsm8k_train as the target, averaging flattened the weights into the
   Gumbel noise: 44% of the selection from gsm8k's other half instead of 99%, so it is off).
4. Resample k without replacement with probability ∝ w by the Gumbel-top-k trick: keep the k
   largest ``log w + G`` with G standard Gumbel noise. The noise is seeded: by position, or, given
   record ids, per id (blake2b of the id keyed by the seed), so a record keeps its key when others
   are added or reordered and the same seed gives the identical selection.
5. Report: ``KL(p_target ‖ p_raw)`` before and ``KL(p_target ‖ p_selected)`` after, over the same
   smoothed hashed-feature distributions: how far the selection moved toward the target.

Featurising is the cost (Python tokenising and a dict lookup per word); everything after is numpy.
bench/bench_selection.py measures the throughput and the KL shift.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice

import numpy as np
from pydantic import Field

from infinstruct.strict import Strict

_CJK = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_TOKEN = re.compile(f"[{_CJK}]|[^\\W_{_CJK}]+")
# ASCII text (most of it) takes a 3x faster path: punctuation and control characters to spaces, split.
_ASCII_NON_WORD = bytes(c for c in range(128) if not chr(c).isalnum())
_ASCII_TO_SPACE = bytes.maketrans(_ASCII_NON_WORD, b" " * len(_ASCII_NON_WORD))
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


class DsirSettings(Strict):
    """Recipe section `dsir`: the hashed feature space, smoothing and batching."""

    num_buckets: int = Field(10_000, ge=16)
    seed: int = Field(0, ge=0)  # the hash key: changing it changes every bucket
    smoothing: float = Field(1.0, gt=0)  # pseudo-count per bucket
    length_normalise: bool = False  # the paper: False
    max_chars: int = Field(20_000, ge=1)  # texts are cut first (bounds the cost of a huge record)
    batch_size: int = Field(10_000, ge=1)


def _splitmix(x: np.ndarray) -> np.ndarray:
    """A 64-bit finaliser: spreads a combined pair of hashes over all bits (wraps mod 2^64)."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


class HashedNgrams:
    """Unigram + bigram features of texts hashed into `num_buckets` (module docstring, step 1)."""

    def __init__(self, settings: DsirSettings = DsirSettings()):
        self.settings = settings
        self._key = settings.seed.to_bytes(8, "little")
        self._cache: dict[bytes, int] = {}

    def words(self, text: str) -> list[bytes]:
        """The lower-cased words of `text` (UTF-8): letter/digit runs, each CJK character alone."""
        text = text[: self.settings.max_chars].lower()
        if text.isascii():
            return text.encode("ascii").translate(_ASCII_TO_SPACE).split()
        return [w.encode("utf-8", "surrogatepass") for w in _TOKEN.findall(text)]

    def _word_hash(self, word: bytes) -> int:
        return int.from_bytes(hashlib.blake2b(word, digest_size=8, key=self._key).digest(), "little")

    def features(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(document index, bucket) of every feature of `texts`, as two int64 arrays."""
        docs = [self.words(t) for t in texts]
        lengths = np.fromiter(map(len, docs), dtype=np.int64, count=len(docs))
        words = [w for doc in docs for w in doc]
        cache = self._cache
        if len(cache) > 5_000_000:  # a bound on memory for endless streams of new words
            cache.clear()
        for w in set(words).difference(cache):
            cache[w] = self._word_hash(w)
        h = np.fromiter(map(cache.__getitem__, words), dtype=np.uint64, count=len(words))
        doc_of = np.repeat(np.arange(len(docs), dtype=np.int64), lengths)
        same_doc = doc_of[1:] == doc_of[:-1]  # bigrams never cross documents
        with np.errstate(over="ignore"):
            bigrams = _splitmix(h[:-1][same_doc] * np.uint64(0x9E3779B97F4A7C15) ^ h[1:][same_doc])
        buckets = np.concatenate([h, bigrams]) % np.uint64(self.settings.num_buckets)
        return np.concatenate([doc_of, doc_of[:-1][same_doc]]), buckets.astype(np.int64)

    def counts(self, texts: Iterable[str]) -> np.ndarray:
        """Bucket counts (float64, length num_buckets) summed over all texts, streamed in batches."""
        total = np.zeros(self.settings.num_buckets, dtype=np.float64)
        for batch in batched(texts, self.settings.batch_size):
            _, buckets = self.features(batch)
            total += np.bincount(buckets, minlength=self.settings.num_buckets)
        return total


def batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
    """Lists of up to `size` items from any iterable."""
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


def distribution(counts: np.ndarray, smoothing: float) -> np.ndarray:
    """Smoothed, normalised bucket distribution: (counts + smoothing) / sum."""
    p = np.asarray(counts, dtype=np.float64) + smoothing
    return p / p.sum()


def kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p ‖ q) in nats for distributions over the same buckets (q > 0 where p > 0)."""
    mask = p > 0
    return float(np.sum(p[mask] * (np.log(p[mask]) - np.log(q[mask]))))


@dataclass(frozen=True)
class ImportanceModel:
    """The fitted target and raw distributions; `log_weights` scores texts against them."""

    target: np.ndarray
    raw: np.ndarray
    settings: DsirSettings

    @classmethod
    def fit(
        cls, target_texts: Iterable[str], raw_texts: Iterable[str], settings: DsirSettings = DsirSettings()
    ) -> ImportanceModel:
        """Count both corpora (streamed) and smooth them into distributions."""
        ngrams = HashedNgrams(settings)
        return cls(
            distribution(ngrams.counts(target_texts), settings.smoothing),
            distribution(ngrams.counts(raw_texts), settings.smoothing),
            settings,
        )

    @classmethod
    def from_counts(
        cls, target_counts: np.ndarray, raw_counts: np.ndarray, settings: DsirSettings = DsirSettings()
    ) -> ImportanceModel:
        """From stored bucket counts (e.g. summed per partition), without re-reading the texts."""
        return cls(
            distribution(target_counts, settings.smoothing), distribution(raw_counts, settings.smoothing), settings
        )

    @property
    def log_ratio(self) -> np.ndarray:
        """log p_target − log p_raw per bucket."""
        return np.log(self.target) - np.log(self.raw)

    def log_weights(self, texts: Iterable[str], ngrams: HashedNgrams | None = None) -> np.ndarray:
        """log importance weight of each text (float64, in input order), streamed in batches."""
        ngrams = ngrams or HashedNgrams(self.settings)
        ratio = self.log_ratio
        out = []
        for batch in batched(texts, self.settings.batch_size):
            docs, buckets = ngrams.features(batch)
            w = np.bincount(docs, weights=ratio[buckets], minlength=len(batch))
            if self.settings.length_normalise:
                w /= np.maximum(np.bincount(docs, minlength=len(batch)), 1)
            out.append(w)
        return np.concatenate(out) if out else np.empty(0)

    def shift(self, raw_counts: np.ndarray, selected_counts: np.ndarray) -> dict[str, float]:
        """KL(target ‖ raw) before and KL(target ‖ selected) after selection, in nats."""
        s = self.settings.smoothing
        before = kl_divergence(self.target, distribution(raw_counts, s))
        after = kl_divergence(self.target, distribution(selected_counts, s))
        return {
            "kl_before": round(before, 6),
            "kl_after": round(after, 6),
            "kl_reduction": round(1 - after / before, 6) if before > 0 else 0.0,
        }


def uniforms(n: int, seed: int, ids: Sequence[str] | None = None) -> np.ndarray:
    """n uniforms in (0, 1): positional from the seed, or one per id (stable under reordering)."""
    if ids is None:
        return np.random.default_rng(seed).random(n) * (1 - 2**-53) + 2**-54
    if len(ids) != n:
        raise ValueError(f"{n} weights but {len(ids)} ids")
    key = seed.to_bytes(8, "little")
    raw = np.fromiter(
        (int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8, key=key).digest(), "little") for i in ids),
        dtype=np.uint64,
        count=n,
    )
    return ((raw >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53


def resample(log_weights: np.ndarray, k: int, seed: int, ids: Sequence[str] | None = None) -> np.ndarray:
    """Indices of k items drawn without replacement with probability ∝ exp(log_weights)
    (Gumbel-top-k), in draw order; ties broken by index. k ≥ n returns every index."""
    log_weights = np.asarray(log_weights, dtype=np.float64)
    n = len(log_weights)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    keys = log_weights - np.log(-np.log(uniforms(n, seed, ids)))
    k = min(k, n)
    top = np.argpartition(-keys, k - 1)[:k] if 0 < k < n else np.arange(n)[:k]
    return top[np.lexsort((top, -keys[top]))]
