"""The instruction-embedding cache: vectors per record id, computed once, on any PostgreSQL (no pgvector).

Real MiniLM, real PostgreSQL. "Computed once" is shown by making the encoder raise on a second call.
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import sqlalchemy as sa

from infinstruct.ml import embeddings
from infinstruct.ml.embeddings import EmbeddingSettings, encode
from infinstruct.record.conversation import instruction_text
from infinstruct.store.embedding_cache import (
    EmbeddingCacheError,
    instruction_vectors,
    read_vectors,
    store_vectors,
)

SETTINGS = EmbeddingSettings()
TEXTS = {
    "rec-a": "Write a short poem about the ocean at night.",
    "rec-b": "Explain how a binary search works and give its time complexity.",
    "rec-c": "What is the capital of Australia?",
}


def ids(*names: str) -> list[str]:
    """Record ids unique to the calling test (the cache outlives tests within the session database)."""
    tag = uuid.uuid4().hex[:8]
    return [f"{name}-{tag}" for name in names]


def must_not_encode(*_args, **_kwargs):
    raise AssertionError("encoded again: the cache was not used")


@pytest.fixture
def encoded_texts(monkeypatch) -> list[list[str]]:
    """Every list of texts handed to the encoder during the test."""
    calls: list[list[str]] = []
    real = embeddings.encode

    def spy(texts, settings=SETTINGS):
        calls.append(list(texts))
        return real(texts, settings)

    monkeypatch.setattr(embeddings, "encode", spy)
    return calls


def test_instruction_text_is_the_user_turns_joined_by_newlines():
    turns = (
        ("system", "Be brief."),
        ("user", "Hi."),
        ("assistant", "Hello!"),
        ("user", "Name a prime."),
        ("assistant", "7"),
    )
    assert instruction_text(turns) == "Hi.\nName a prime."


def test_vectors_round_trip_in_input_order_and_are_not_encoded_twice(engine, encoded_texts, monkeypatch):
    a, b, c = ids("a", "b", "c")
    texts = [TEXTS["rec-a"], TEXTS["rec-b"], TEXTS["rec-c"]]
    first = instruction_vectors(engine, SETTINGS, [a, b, c], texts)
    expected = encode(texts, SETTINGS)
    assert first.dtype == np.float32 and first.shape == (3, 384)
    np.testing.assert_allclose(first, expected, atol=1e-6)
    assert encoded_texts == [texts]

    monkeypatch.setattr(embeddings, "encode", must_not_encode)
    again = instruction_vectors(engine, SETTINGS, [c, a, b], [texts[2], texts[0], texts[1]])
    np.testing.assert_array_equal(again, first[[2, 0, 1]])  # bit for bit what was stored
    with engine.connect() as conn:
        stored = conn.execute(
            sa.text(
                "select record_id, octet_length(vector) from embedding_cache where model = :m and record_id = any(:ids)"
            ),
            {"m": SETTINGS.fingerprint, "ids": [a, b, c]},
        ).all()
    assert sorted(stored) == sorted([(a, 384 * 4), (b, 384 * 4), (c, 384 * 4)])


def test_only_missing_ids_are_encoded_each_once_and_repeats_get_the_same_row(engine, encoded_texts):
    a, b, c = ids("a", "b", "c")
    instruction_vectors(engine, SETTINGS, [a], [TEXTS["rec-a"]])
    vectors = instruction_vectors(
        engine, SETTINGS, [b, a, b, c], [TEXTS["rec-b"], TEXTS["rec-a"], TEXTS["rec-b"], TEXTS["rec-b"]]
    )
    # a came from the cache; b once although asked twice; c has b's text (another answer to the same
    # instruction: another record), so that text was encoded once for both
    assert encoded_texts == [[TEXTS["rec-a"]], [TEXTS["rec-b"]]]
    np.testing.assert_array_equal(vectors[0], vectors[2])
    np.testing.assert_array_equal(vectors[0], vectors[3])
    with engine.connect() as conn:
        assert set(read_vectors(conn, SETTINGS.fingerprint, [a, b, c])) == {a, b, c}


def test_another_model_fingerprint_is_another_cache_entry(engine, encoded_texts):
    [a] = ids("a")
    instruction_vectors(engine, SETTINGS, [a], [TEXTS["rec-a"]])
    longer = EmbeddingSettings(max_chars=4000)  # another fingerprint: its vectors are not the same thing
    instruction_vectors(engine, longer, [a], [TEXTS["rec-a"]])
    assert len(encoded_texts) == 2
    with engine.connect() as conn:
        models = (
            conn.execute(sa.text("select model from embedding_cache where record_id = :r order by model"), {"r": a})
            .scalars()
            .all()
        )
    assert models == sorted([SETTINGS.fingerprint, longer.fingerprint])


def test_a_vector_stored_meanwhile_by_another_task_is_kept_not_an_error(engine, monkeypatch):
    a, b = ids("a", "b")
    real = embeddings.encode
    planted = np.full(384, 0.5, dtype=np.float32)

    def encode_while_another_task_stores_a(texts, settings=SETTINGS):
        # another mapped task (the same conversation in another file) stores `a` between our read and write
        with engine.begin() as conn:
            store_vectors(conn, settings.fingerprint, {a: planted})
        return real(texts, settings)

    monkeypatch.setattr(embeddings, "encode", encode_while_another_task_stores_a)
    vectors = instruction_vectors(engine, SETTINGS, [a, b], [TEXTS["rec-a"], TEXTS["rec-b"]])
    np.testing.assert_allclose(vectors[0], encode([TEXTS["rec-a"]], SETTINGS)[0], atol=1e-6)  # this call's own result
    monkeypatch.setattr(embeddings, "encode", must_not_encode)
    np.testing.assert_array_equal(instruction_vectors(engine, SETTINGS, [a], ["ignored: cached"])[0], planted)


def test_a_callers_transaction_can_store_twice_and_roll_back(engine, monkeypatch):
    a, b = ids("a", "b")
    with engine.connect() as conn:
        with conn.begin() as tx:
            instruction_vectors(conn, SETTINGS, [a], [TEXTS["rec-a"]])
            instruction_vectors(conn, SETTINGS, [b], [TEXTS["rec-b"]])  # the temporary table was dropped
            assert set(read_vectors(conn, SETTINGS.fingerprint, [a, b])) == {a, b}
            tx.rollback()
        assert read_vectors(conn, SETTINGS.fingerprint, [a, b]) == {}


def test_vectors_of_a_changed_model_under_the_same_name_are_an_error(engine):
    a, b = ids("a", "b")
    with engine.begin() as conn:
        store_vectors(conn, SETTINGS.fingerprint, {a: np.ones(10, dtype=np.float32)})
    with pytest.raises(EmbeddingCacheError, match=r"different sizes \[10, 384\].*delete from embedding_cache"):
        instruction_vectors(engine, SETTINGS, [a, b], [TEXTS["rec-a"], TEXTS["rec-b"]])


def test_mismatched_ids_and_texts_are_an_error(engine):
    with pytest.raises(ValueError, match="2 record ids but 1 texts"):
        instruction_vectors(engine, SETTINGS, ids("a", "b"), [TEXTS["rec-a"]])


def test_the_cache_needs_no_pgvector(engine, database_url, monkeypatch):
    """A fresh database on the same server (no extension created in it) migrates and caches: the
    schema uses no pgvector type. Run with INFINSTRUCT_TEST_DATABASE_URL on a server without pgvector."""
    from infinstruct.store.db import migrate

    server = sa.engine.make_url(database_url)
    name = f"infinstruct_nopgvector_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(server.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'create database "{name}"'))
    fresh = sa.create_engine(server.set(database=name))
    try:
        migrate(fresh)
        with fresh.connect() as conn:
            extensions = conn.execute(sa.text("select extname from pg_extension")).scalars().all()
            column = conn.execute(
                sa.text(
                    "select data_type from information_schema.columns"
                    " where table_name = 'embedding_cache' and column_name = 'vector'"
                )
            ).scalar_one()
        assert "vector" not in extensions and column == "bytea"
        [a] = ids("a")
        first = instruction_vectors(fresh, SETTINGS, [a], [TEXTS["rec-a"]])
        monkeypatch.setattr(embeddings, "encode", must_not_encode)
        np.testing.assert_array_equal(instruction_vectors(fresh, SETTINGS, [a], [TEXTS["rec-a"]]), first)
    finally:
        fresh.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'drop database if exists "{name}" with (force)'))
        admin.dispose()
