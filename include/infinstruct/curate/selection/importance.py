"""DSIR importance of one domain's records toward its target, featurised once (select_records, step 1).

`dsir.ImportanceModel` streams texts through the hashed n-gram featuriser for every use; a selection needs
the pool's features four times (raw counts, weights, then the counts of the selection and of a random draw
of the same size for the shift report), and featurising is the whole cost. `DomainImportance` keeps them as
one CSR matrix (int32 buckets + row offsets: ~4 bytes per feature) and derives everything from it.

Importance of a record = the percentile (in (0, 1]) of its Gumbel-top-k key ``log w + G`` among the
domain's records, where ``log w`` is DSIR's log importance weight and G seeded Gumbel noise per record id:
walking by that key *is* DSIR resampling without replacement; the percentile puts it on the scale of the
quality and difficulty scores it is mixed with.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from infinstruct.curate.selection.dsir import DsirSettings, HashedNgrams, ImportanceModel, batched, uniforms


class DomainImportance:
    """Hashed n-gram features of a domain's texts and the DSIR model toward `target_texts`."""

    def __init__(self, texts: Sequence[str], target_texts: Sequence[str], settings: DsirSettings):
        self.settings = settings
        ngrams = HashedNgrams(settings)
        lengths, parts = [], []
        for batch in batched(texts, settings.batch_size):
            docs, buckets = ngrams.features(batch)
            lengths.append(np.bincount(docs, minlength=len(batch)))
            parts.append(buckets[np.argsort(docs, kind="stable")].astype(np.int32))
        self.lengths = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
        self.buckets = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
        self.rows = np.repeat(np.arange(len(self.lengths)), self.lengths)
        self.raw_counts = self.counts()
        self.model = ImportanceModel.from_counts(ngrams.counts(target_texts), self.raw_counts, settings)

    def counts(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Bucket counts over all texts, or over the given row indices."""
        if rows is None:
            return np.bincount(self.buckets, minlength=self.settings.num_buckets).astype(np.float64)
        mask = np.zeros(len(self.lengths), dtype=bool)
        mask[rows] = True
        return np.bincount(self.buckets[mask[self.rows]], minlength=self.settings.num_buckets).astype(np.float64)

    def log_weights(self) -> np.ndarray:
        w = np.bincount(self.rows, weights=self.model.log_ratio[self.buckets], minlength=len(self.lengths))
        return w / np.maximum(self.lengths, 1) if self.settings.length_normalise else w

    def percentiles(self, ids: Sequence[str], seed: int) -> np.ndarray:
        """Importance of each text (module docstring), in input order."""
        n = len(ids)
        keys = self.log_weights() - np.log(-np.log(uniforms(n, seed, ids)))
        out = np.empty(n)
        out[np.argsort(keys, kind="stable")] = (np.arange(n) + 1) / max(n, 1)
        return out

    def shift(self, selected_rows: Sequence[int], seed: int) -> dict[str, float]:
        """KL(target ‖ pool) before, KL(target ‖ selection) after, and KL(target ‖ a seeded random draw of the
        same size): a smaller set sits farther from any target under smoothing, so the draw is the fair baseline."""
        rows = np.asarray(selected_rows, dtype=np.int64)
        out = self.model.shift(self.raw_counts, self.counts(rows))
        draw = np.random.default_rng(seed).choice(len(self.lengths), size=len(rows), replace=False)
        out["kl_random_same_size"] = self.model.shift(self.raw_counts, self.counts(draw))["kl_after"]
        return out
