"""Diversity-aware greedy selection (DEITA, Liu et al. 2024) and the diversity report.

`greedy_select` walks the candidates by descending score (ties: ascending id, so the walk is
deterministic) and accepts a candidate only when its largest cosine to the selected set (the
records selected before this run, plus those accepted so far) is below `threshold`, until `quota`
candidates are accepted. Every candidate gets a decision with its rank in the walk (1-based):

* ``selected``     accepted (its max cosine and nearest selected id are kept for the record)
* ``too_similar``  max cosine ≥ threshold; `similar_to` names the selected record it is close to
* ``quota_full``   the quota was filled before the walk reached it (never compared)

Vectors are unit rows (cosine = dot product), as `embeddings.encode` returns them. The walk takes
candidates in batches: one matrix product of the batch against the selected set, one of the batch
against itself for the candidates accepted earlier in the same batch, then the selected matrix
grows in place. The selected set lives in a `NearestIndex`: `ExactIndex` (numpy, exact) by default.
A nightly run passes the earlier selection as `existing` and only new candidates (a record already
selected would be too similar to itself): `LayeredIndex` over the stored selection (`vector_index.StoredIndex`,
the persistent index semantic dedup also uses: pgvector HNSW or exact) plus this run's acceptances,
searched exactly in memory and written to the stored index only when the run commits.

`nearest_neighbour_cosines` / `diversity_report`: for each vector of a set, its largest cosine to
another member; the report gives their mean and 95th percentile (lower = more diverse). For a large
set, report a seeded sample (`sample_positions`): its members' nearest neighbours within the sample sit
a little further apart than within the whole set, so compare samples of one size; `sampled` says so.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import numpy as np


class Outcome(StrEnum):
    SELECTED = "selected"
    TOO_SIMILAR = "too_similar"
    QUOTA_FULL = "quota_full"


_OUTCOMES = list(Outcome)


class NearestIndex(Protocol):
    """The selected set: add unit vectors with ids, and find each query's most similar member."""

    def __len__(self) -> int: ...

    def add(self, ids: Sequence[str], vectors: np.ndarray) -> None: ...

    def nearest(self, queries: np.ndarray) -> tuple[np.ndarray, list[str | None]]:
        """(max cosine per query, -inf when empty; the id of that member, None when empty)."""
        ...


class ExactIndex:
    """Exact maximum inner product over a growing float32 matrix (amortised doubling)."""

    def __init__(self, dim: int, ids: Sequence[str] = (), vectors: np.ndarray | None = None):
        self._matrix = np.empty((max(1024, len(ids)), dim), dtype=np.float32)
        self._ids: list[str] = []
        if len(ids):
            self.add(ids, vectors)

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(ids), self._matrix.shape[1])
        n, m = len(self._ids), len(ids)
        if n + m > len(self._matrix):
            grown = np.empty((max(2 * len(self._matrix), n + m), self._matrix.shape[1]), dtype=np.float32)
            grown[:n] = self._matrix[:n]
            self._matrix = grown
        self._matrix[n : n + m] = vectors
        self._ids.extend(ids)

    @property
    def ids(self) -> list[str]:
        return self._ids

    @property
    def vectors(self) -> np.ndarray:
        """The stored rows, in the order they were added (a view)."""
        return self._matrix[: len(self._ids)]

    def remove(self, ids: Sequence[str]) -> None:
        """Forget the rows of `ids` (the others keep their order)."""
        gone = set(ids)
        keep = [i for i, rid in enumerate(self._ids) if rid not in gone]
        if len(keep) < len(self._ids):
            self._matrix[: len(keep)] = self._matrix[keep]
            self._ids = [self._ids[i] for i in keep]

    def neighbours(self, queries: np.ndarray, k: int, min_cosine: float) -> list[list[tuple[str, float]]]:
        """Per query, up to k (id, cosine) with cosine >= min_cosine, best first (ties: by id)."""
        found: list[list[tuple[str, float]]] = [[] for _ in range(len(queries))]
        for s in range(0, len(self._ids), 20_000):  # bounded memory: queries x 20k cosines at a time
            sims = queries @ self._matrix[s : min(s + 20_000, len(self._ids))].T
            rows, cols = np.nonzero(sims >= min_cosine)
            for row, col in zip(rows.tolist(), cols.tolist()):
                found[row].append((self._ids[s + col], float(sims[row, col])))
        return [sorted(hits, key=lambda h: (-h[1], h[0]))[:k] for hits in found]

    def nearest(self, queries: np.ndarray) -> tuple[np.ndarray, list[str | None]]:
        if not self._ids:
            return np.full(len(queries), -np.inf, dtype=np.float32), [None] * len(queries)
        sims = queries @ self._matrix[: len(self._ids)].T
        best = sims.argmax(axis=1)
        return sims[np.arange(len(queries)), best], [self._ids[b] for b in best]


class LayeredIndex:
    """The selected set of a run that continues an earlier selection: `before` (searched as it is,
    e.g. a persistent index) plus what this run accepts (exact, in memory, in acceptance order:
    `accepted`). A tie goes to `before`, so with an exact `before` the answers are those of one
    ExactIndex holding both, in that order."""

    def __init__(self, before: NearestIndex, dim: int):
        self.before = before
        self.accepted = ExactIndex(dim)

    def __len__(self) -> int:
        return len(self.before) + len(self.accepted)

    def add(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        self.accepted.add(ids, vectors)

    def nearest(self, queries: np.ndarray) -> tuple[np.ndarray, list[str | None]]:
        best, best_id = self.before.nearest(queries)
        if not len(self.accepted):
            return best, best_id
        mine, mine_id = self.accepted.nearest(queries)
        closer = mine > best
        return np.where(closer, mine, best), [m if c else b for c, m, b in zip(closer.tolist(), mine_id, best_id)]


@dataclass(frozen=True, slots=True)
class Decision:
    record_id: str
    outcome: Outcome
    rank: int  # 1-based position in the walk (descending score, then id)
    max_cosine: float | None  # to the selected set when compared; None for quota_full / empty set
    similar_to: str | None  # the selected record with that cosine


@dataclass(frozen=True)
class GreedySelection:
    """Decisions in rank order, as columns (ids[i] has rank i + 1)."""

    ids: list[str]
    outcomes: np.ndarray  # int8 index into Outcome
    max_cosine: np.ndarray  # float32, NaN where not compared
    similar_to: list[str | None]

    @property
    def selected(self) -> list[str]:
        """The accepted ids, in the order they were accepted."""
        return [i for i, o in zip(self.ids, self.outcomes) if o == 0]

    def decisions(self) -> Iterator[Decision]:
        for rank, (rid, o, cos, sim) in enumerate(zip(self.ids, self.outcomes, self.max_cosine, self.similar_to), 1):
            yield Decision(rid, _OUTCOMES[o], rank, None if np.isnan(cos) else round(float(cos), 6), sim)

    def counts(self) -> dict[str, int]:
        found = np.bincount(self.outcomes, minlength=len(_OUTCOMES))
        return {o.value: int(c) for o, c in zip(_OUTCOMES, found)}


def walk_order(ids: Sequence[str], scores: np.ndarray) -> np.ndarray:
    """Indices by descending score, ties by ascending id."""
    return np.lexsort((np.asarray(ids), -np.asarray(scores, dtype=np.float64)))


def greedy_select(
    ids: Sequence[str],
    scores: Sequence[float] | np.ndarray,
    vectors: np.ndarray,
    threshold: float,
    quota: int,
    *,
    existing: NearestIndex | None = None,
    batch_size: int = 256,
) -> GreedySelection:
    """DEITA greedy selection (module docstring). `existing`: the records selected before, which
    candidates must also differ from; it grows by the accepted vectors (pass a copy to keep it)."""
    n = len(ids)
    vectors = np.asarray(vectors, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float64)
    if vectors.ndim != 2 or len(vectors) != n or len(scores) != n:
        raise ValueError(f"{n} ids, {len(scores)} scores and {len(vectors)} vectors must match")
    if len(set(ids)) != n:
        raise ValueError("candidate ids must be unique")
    if quota < 0 or batch_size < 1:
        raise ValueError("quota must be >= 0 and batch_size >= 1")
    index = existing if existing is not None else ExactIndex(vectors.shape[1])
    order = walk_order(ids, scores)
    ranked_ids = [ids[i] for i in order]
    outcomes = np.full(n, _OUTCOMES.index(Outcome.QUOTA_FULL), dtype=np.int8)
    max_cos = np.full(n, np.nan, dtype=np.float32)
    similar: list[str | None] = [None] * n
    accepted = 0
    start = 0
    while start < n and accepted < quota:
        stop = min(start + batch_size, n)
        batch = vectors[order[start:stop]]
        best, best_id = index.nearest(batch)
        inside = batch @ batch.T  # for candidates accepted earlier in this batch
        taken: list[int] = []
        for j in range(stop - start):
            if accepted == quota:
                break
            cos, near = float(best[j]), best_id[j]
            if taken:
                row = inside[j, taken]
                k = int(row.argmax())
                if row[k] > cos:
                    cos, near = float(row[k]), ranked_ids[start + taken[k]]
            rank = start + j
            if near is not None:
                max_cos[rank], similar[rank] = cos, near
            if cos < threshold:
                outcomes[rank] = 0
                taken.append(j)
                accepted += 1
            else:
                outcomes[rank] = _OUTCOMES.index(Outcome.TOO_SIMILAR)
        if taken:
            index.add([ranked_ids[start + j] for j in taken], batch[taken])
        start = stop
    return GreedySelection(ranked_ids, outcomes, max_cos, similar)


def nearest_neighbour_cosines(vectors: np.ndarray, block: int = 2048) -> np.ndarray:
    """For each unit row, its largest cosine to another row (float32; NaN for a set of one)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    n = len(vectors)
    out = np.full(n, np.nan, dtype=np.float32)
    if n < 2:
        return out
    for s in range(0, n, block):
        sims = vectors[s : s + block] @ vectors.T
        rows = np.arange(len(sims))
        sims[rows, s + rows] = -np.inf  # not oneself
        out[s : s + block] = sims.max(axis=1)
    return out


def sample_positions(n: int, max_n: int | None, seed: int = 0) -> np.ndarray:
    """All of range(n), or a seeded random `max_n` of them (ascending) when n is larger."""
    if max_n is None or n <= max_n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_n, replace=False))


def diversity_report(vectors: np.ndarray, *, of: int | None = None) -> dict[str, float]:
    """n, mean and 95th-percentile nearest-neighbour cosine inside the set (lower: more diverse). `of`: the
    vectors are a sample (`sample_positions`) of a set of that size: n = of, and `sampled` says how many."""
    report: dict[str, float] = {"n": len(vectors) if of is None else of}
    if of is not None and of > len(vectors):
        report["sampled"] = len(vectors)
    if len(vectors) < 2:
        return {**report, "mean_nn_cosine": float("nan"), "p95_nn_cosine": float("nan")}
    nn = nearest_neighbour_cosines(vectors)
    return {
        **report,
        "mean_nn_cosine": round(float(nn.mean()), 4),
        "p95_nn_cosine": round(float(np.percentile(nn, 95)), 4),
    }
