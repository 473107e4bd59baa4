"""Embedding decontamination: MiniLM cosine of an instruction to every benchmark item (`EmbeddingMatcher`).

Benchmark items are few (1,643 for GSM8K test + MT-Bench + HumanEval), so the match is an exact
matrix product in memory: `match(texts)` (or `match_vectors(vectors, texts)` for texts already
embedded, e.g. cached) returns per text the items it contains (best first, at most `max_matches`),
as `ngrams.Match` with method `embedding`, score = cosine, shared = 0. Merge with the n-gram
matcher's results via `ngrams.best_matches`. The rule has two tiers (`EmbeddingMatchSettings`):

* cosine ≥ `threshold` (0.90): contained, on the cosine alone;
* cosine ≥ `evidence_threshold` (0.70) and the text holds ≥ `min_pair_share` (0.45) of the item's
  adjacent word pairs (`pair_share`: words normalised as the n-gram matcher reads them, every
  number "0", so changed numbers still count).

Why: below 0.90 MiniLM cannot tell a paraphrase of an item from a different problem on its topic.
Cosine alone at 0.80 dropped 128 real pool records that n-grams keep, 114 of them at 0.80-0.85, and
those read are topic neighbours: GSM8K *train* questions on a test question's topic (pizzas
for friends, pencils and erasers), generic Fibonacci or tree prompts vs MT-Bench 122/125. A paraphrase, even one
that changes every number and a third of the words, keeps much of the item's wording (word pairs
of the item found in the text, median at cosine 0.75-0.88: 0.70 for 15% of the words changed, 0.50
for 30%); a neighbour on the same topic does not (median 0.12 over the 939 top-5 pool pairs at
cosine ≥ 0.75, 95th percentile 0.33). Pairs, not single words: a neighbour shares the topic's nouns, rarely their
phrasing. So the band can start lower than the old single threshold and recall rises too.

The measurements behind these thresholds: bench/RESULTS.md, "Embedding decontamination thresholds".
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from pydantic import Field

from infinstruct.curate.decontam.ngrams import (
    BenchmarkItem,
    Match,
    MatchMethod,
    defined_names,
    mask_defined_names,
    normalise_words,
)
from infinstruct.ml.embeddings import EmbeddingSettings, encode
from infinstruct.strict import Strict


def word_pairs(text: str) -> frozenset[tuple[str, str]]:
    """The text's adjacent word pairs, words read as the n-gram matcher reads them (normalised, every
    number as "0", names a code text defines as their order of definition)."""
    words = mask_defined_names(["0" if w.isdigit() else w for w in normalise_words(text)], defined_names(text))
    return frozenset(zip(words, words[1:]))


def pair_share(item_pairs: frozenset[tuple[str, str]], text_pairs: frozenset[tuple[str, str]]) -> float:
    """Share of the item's word pairs that occur in the text (0 for an item of one word)."""
    return len(item_pairs & text_pairs) / len(item_pairs) if item_pairs else 0.0


class EmbeddingMatchSettings(Strict):
    """Recipe settings of the embedding-cosine decontamination matcher (module docstring: the rule)."""

    embedding: EmbeddingSettings = EmbeddingSettings()
    threshold: float = Field(0.9, ge=-1, le=1)  # cosine at which a text contains an item on its own
    # cosine from which a text contains an item when it also reuses the item's wording: a share ≥
    # min_pair_share of the item's word pairs (`pair_share`). null, or ≥ threshold: cosine alone decides
    evidence_threshold: float | None = Field(0.7, ge=-1, le=1)
    min_pair_share: float = Field(0.45, ge=0, le=1)
    max_matches: int = Field(5, ge=1)  # matches reported per text (best first)

    @property
    def lowest(self) -> float:
        """The lowest cosine at which any match is possible."""
        if self.evidence_threshold is None:
            return self.threshold
        return min(self.threshold, self.evidence_threshold)


class EmbeddingMatcher:
    """Benchmark items embedded once; texts matched by exact cosine against all of them, in the evidence
    band only when they also reuse the item's word pairs."""

    def __init__(self, items: list[BenchmarkItem], vectors: np.ndarray, settings: EmbeddingMatchSettings):
        self.items, self.vectors, self.settings = items, vectors, settings
        self._pairs = [word_pairs(item.text) for item in items]

    @classmethod
    def build(
        cls,
        items: Sequence[BenchmarkItem],
        settings: EmbeddingMatchSettings = EmbeddingMatchSettings(),
    ) -> EmbeddingMatcher:
        """Embed the benchmark items (normalised, whatever the embedding settings say)."""
        embedding = settings.embedding.model_copy(update={"normalize": True})
        settings = settings.model_copy(update={"embedding": embedding})
        items = list(items)
        return cls(items, encode([i.text for i in items], embedding), settings)

    def __len__(self) -> int:
        return len(self.items)

    def match(self, texts: Sequence[str]) -> list[list[Match]]:
        """Per text, the items it contains (see `match_vectors`); encodes the texts first."""
        if not texts or not self.items:
            return [[] for _ in texts]
        return self.match_vectors(encode(list(texts), self.settings.embedding), texts)

    def match_vectors(self, vectors: np.ndarray, texts: Sequence[str]) -> list[list[Match]]:
        """Per row of `vectors` (the unit embedding of texts[row], e.g. from the embedding cache), the items
        it contains, best cosine first, at most `max_matches`: cosine ≥ `threshold`, or cosine ≥
        `evidence_threshold` and the text holds a share ≥ `min_pair_share` of the item's word pairs. Each
        is a `Match` with method `embedding`, score = cosine, shared = 0."""
        if len(vectors) != len(texts):
            raise ValueError(f"{len(vectors)} vectors for {len(texts)} texts")
        if not self.items or not len(vectors):
            return [[] for _ in range(len(vectors))]
        s = self.settings
        # float32 puts an exact copy a hair above 1: clipped, so best_matches keeps an n-gram match on a tie
        sims = np.minimum(np.asarray(vectors, dtype=np.float32) @ self.vectors.T, 1.0)
        out = []
        for row, text in zip(sims, texts):
            candidates = np.flatnonzero(row >= s.lowest)
            candidates = candidates[np.argsort(-row[candidates], kind="stable")]
            pairs = None
            found = []
            for i in candidates.tolist():
                if row[i] < s.threshold:  # the evidence band: the text must reuse the item's wording
                    pairs = word_pairs(text) if pairs is None else pairs
                    if pair_share(self._pairs[i], pairs) < s.min_pair_share:
                        continue
                found.append(
                    Match(self.items[i].benchmark, self.items[i].item_id, MatchMethod.EMBEDDING, float(row[i]), 0)
                )
                if len(found) == s.max_matches:
                    break
            out.append(found)
        return out
