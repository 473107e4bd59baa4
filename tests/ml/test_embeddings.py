"""Embeddings: the bundled MiniLM, loaded offline, on a few real-looking prompts."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from infinstruct.ml.embeddings import EmbeddingError, EmbeddingSettings, dimension, encode, model_path

PROMPTS = [
    "Write a short poem about the ocean at night.",
    "Explain how a binary search works and give its time complexity.",
    "A farmer has 3 fields with 24 rows of corn each. How many rows does he have?",
    "Translate 'good morning' into French and Spanish.",
    "List three benefits of regular exercise for older adults.",
    "What is the capital of Australia?",
]
NEAR_COPY = (
    "Explain how a binary search works and give its time complexity.",
    "Please explain how binary search works, and give its time complexity.",
)
UNRELATED = (
    "Explain how a binary search works and give its time complexity.",
    "Suggest a vegetarian recipe for a summer picnic.",
)
SETTINGS = EmbeddingSettings()


def cosine(a: str, b: str) -> float:
    va, vb = encode([a, b], SETTINGS)
    return float(va @ vb)


def test_the_default_model_is_the_bundled_minilm_in_site_packages():
    path = model_path(SETTINGS.model)
    assert "site-packages" in str(path) and (path / "config.json").is_file()
    assert dimension(SETTINGS) == 384


def test_encode_gives_unit_float32_rows_one_per_text():
    vectors = encode(PROMPTS, SETTINGS)
    assert vectors.shape == (len(PROMPTS), 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_encode_is_deterministic_and_independent_of_batching():
    once = encode(PROMPTS, SETTINGS)
    np.testing.assert_array_equal(once, encode(PROMPTS, SETTINGS))
    np.testing.assert_allclose(once, encode(PROMPTS, SETTINGS.model_copy(update={"batch_size": 2})), atol=1e-5)


def test_no_texts_give_an_empty_matrix_of_the_model_width():
    assert encode([], SETTINGS).shape == (0, 384)


def test_a_near_copy_is_above_and_an_unrelated_prompt_below_the_dedup_threshold():
    assert cosine(*NEAR_COPY) >= 0.9
    assert cosine(*UNRELATED) < 0.5


def test_texts_are_cut_to_max_chars_before_encoding():
    short = EmbeddingSettings(max_chars=40)
    a, b = encode([PROMPTS[0], PROMPTS[0][:40] + " and then something else entirely, about taxes"], short)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_without_normalize_the_raw_model_output_is_returned():
    raw = encode(PROMPTS[:2], SETTINGS.model_copy(update={"normalize": False}))
    np.testing.assert_allclose(
        raw / np.linalg.norm(raw, axis=1, keepdims=True), encode(PROMPTS[:2], SETTINGS), atol=1e-5
    )


def test_a_model_that_is_not_a_local_directory_is_an_error_not_a_download(tmp_path):
    with pytest.raises(EmbeddingError, match="never downloaded"):
        model_path("sentence-transformers/all-mpnet-base-v2")
    with pytest.raises(EmbeddingError, match="no local model directory"):
        encode(["x"], EmbeddingSettings(model=str(tmp_path)))


def test_settings_reject_unknown_keys():
    with pytest.raises(ValidationError, match="batchsize"):
        EmbeddingSettings(batchsize=8)
