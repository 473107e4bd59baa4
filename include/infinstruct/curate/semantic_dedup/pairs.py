"""Semantic dedup's pure core: near-duplicate pairs by cosine, and the recipe section.

Within a batch: exact cosine (numpy, chunked), every pair at or above `min_cosine`. Against the
existing rows: the index's k nearest per new vector. Query before adding the batch (hits whose
key is in the batch are ignored either way). Cluster the pairs with `minhash.clusters`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import sqlalchemy as sa
from pydantic import Field

from infinstruct.ml.embeddings import EmbeddingSettings
from infinstruct.store.vector_index import VectorIndex
from infinstruct.strict import Strict


@dataclass(frozen=True)
class SemanticPairs:
    """Pairs at or above the cosine threshold: within the batch and against stored rows."""

    within: np.ndarray  # (p, 2) int64, [i, j] with i < j, rows of the batch
    within_cosine: np.ndarray  # (p,) float32
    across: list[tuple[int, str, float]]  # (batch row, stored record key, cosine)


def pairs_within(vectors: np.ndarray, min_cosine: float, *, chunk: int = 2_048) -> tuple[np.ndarray, np.ndarray]:
    """Every pair i < j of unit rows with cosine ≥ min_cosine (exact, chunked: memory chunk × n)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    firsts, seconds, sims = [], [], []
    for s in range(0, len(vectors), chunk):
        block = vectors[s : s + chunk] @ vectors.T
        i, j = np.nonzero(block >= min_cosine)
        i = i + s
        upper = i < j
        firsts.append(i[upper]), seconds.append(j[upper]), sims.append(block[i[upper] - s, j[upper]])
    if not firsts:
        return np.empty((0, 2), np.int64), np.empty(0, np.float32)
    pairs = np.stack([np.concatenate(firsts), np.concatenate(seconds)], axis=1).astype(np.int64)
    return pairs, np.concatenate(sims).astype(np.float32)


def semantic_pairs(
    keys: Sequence[str],
    vectors: np.ndarray,
    index: VectorIndex | None,
    *,
    min_cosine: float,
    k: int = 5,
    conn: sa.Connection | None = None,
) -> SemanticPairs:
    """Near-duplicate pairs of a new batch by cosine: among its rows (exact) and against the stored
    rows of `index` (k nearest each, approximate). Stored rows whose key is in the batch are ignored."""
    within, cos = pairs_within(vectors, min_cosine)
    across: list[tuple[int, str, float]] = []
    if index is not None and len(keys):
        batch_keys = set(keys)
        across = [hit for hit in index.neighbours(vectors, k, min_cosine, conn=conn) if hit[1] not in batch_keys]
    return SemanticPairs(within, cos, across)


class SemanticDedupSettings(Strict):
    """Recipe section `semantic_dedup`: embedding near-duplicates of the instructions (null: off)."""

    embedding: EmbeddingSettings = EmbeddingSettings()
    threshold: float = Field(0.9, ge=-1, le=1)  # cosine at which two instructions are the same request
    neighbours: int = Field(10, ge=1, le=1000)  # accepted records compared per new record (nearest first)
    min_words: int = Field(4, ge=0)  # shorter instructions are left to exact dedup
    index: Literal["auto", "pgvector", "exact"] = "auto"  # auto: pgvector when the server has it
    batch_size: int = Field(1000, ge=1)  # records decided per step (each step sees the ones before)
