"""Instruction embeddings per record, computed once and kept in PostgreSQL (`embedding_cache`).

Encoding is the expensive part of every embedding stage (MiniLM ~130 texts/s on 2 cores), and the same
record comes back in every nightly run, in other files, and in more than one stage (embedding
decontamination, semantic dedup). So a record's vector is stored under (model, record id) and reused:

    vectors = instruction_vectors(engine, settings, record_ids, [instruction_text(turns) for turns in ...])

What a row means
    `model` is `EmbeddingSettings.fingerprint`; the vector is `embeddings.encode` of the record's
    *instruction*, its user turns joined by "\\n" (`instruction_text`), exactly as `encode` returned it
    (unit length when the settings normalise). Every caller must embed that same text for a record id,
    or the cache would hand one stage the vector another stage computed of something else.

Storage
    bytea of float32 little-endian (dimension = bytes / 4), not pgvector: it works on any PostgreSQL.
    New rows go in by COPY into a temporary table, then one `insert ... on conflict do nothing` in
    record-id order: mapped tasks that share records (the same conversation in two files) then lock
    the keys in the same order and never deadlock, and whichever stores a vector first wins (both
    computed the same thing).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from infinstruct.errors import DataError
from infinstruct.ml import embeddings
from infinstruct.ml.embeddings import EmbeddingSettings
from infinstruct.store.pgcopy import Copier, CopyTable, text_field

COPY_BATCH = 5_000


class EmbeddingCacheError(DataError, RuntimeError):
    """Cached vectors do not fit the model that the settings name."""


def instruction_vectors(
    connectable: Engine | Connection, settings: EmbeddingSettings, record_ids: Sequence[str], texts: Sequence[str]
) -> np.ndarray:
    """The vectors of `texts` (row i embeds texts[i], the instruction of record_ids[i]), in input order.

    Cached vectors are read in one query; only the missing record ids are encoded (each once, and each
    distinct text once), then stored. Returns float32 (len(record_ids), dim).

    With an Engine, reading and storing use their own short transactions and no connection is held
    while the model encodes: the vectors are committed whatever the caller does next (they are facts
    about content). With a Connection, both happen inside the caller's transaction.
    """
    if len(record_ids) != len(texts):
        raise ValueError(f"{len(record_ids)} record ids but {len(texts)} texts")
    if isinstance(connectable, Engine):
        with connectable.connect() as conn:
            cached = read_vectors(conn, settings.fingerprint, record_ids)
    else:
        cached = read_vectors(connectable, settings.fingerprint, record_ids)
    missing = {rid: text for rid, text in zip(record_ids, texts) if rid not in cached}
    fresh = _encode_once(missing, settings)
    if fresh:
        if isinstance(connectable, Engine):
            with connectable.begin() as conn:
                store_vectors(conn, settings.fingerprint, fresh)
        else:
            store_vectors(connectable, settings.fingerprint, fresh)
    return _in_order(record_ids, cached, fresh, settings)


def read_vectors(conn: Connection, model: str, record_ids: Sequence[str]) -> dict[str, np.ndarray]:
    """The cached vectors of `model` for those of `record_ids` that have one."""
    if not record_ids:
        return {}
    rows = conn.execute(
        sa.text("select record_id, vector from embedding_cache where model = :m and record_id = any(:ids)"),
        {"m": model, "ids": list(dict.fromkeys(record_ids))},
    )
    return {record_id: np.frombuffer(bytes(vector), dtype="<f4") for record_id, vector in rows}


def store_vectors(conn: Connection, model: str, vectors: dict[str, np.ndarray]) -> None:
    """Add vectors of `model` by record id; ids already stored keep their vector (see the module docstring)."""
    if not vectors:
        return
    # dropped at the end, not only on commit: a caller's transaction may store twice
    conn.execute(sa.text("create temp table new_embeddings (record_id text, vector bytea) on commit drop"))
    copier = Copier(conn.connection.dbapi_connection.cursor())
    table = CopyTable(copier, "new_embeddings", ("record_id", "vector"), COPY_BATCH)
    try:
        for record_id, vector in vectors.items():
            # bytea in COPY text format: \x<hex>, its backslash escaped for COPY
            table.add(text_field(record_id), b"\\\\x" + np.asarray(vector, dtype="<f4").tobytes().hex().encode())
        table.flush()
    except BaseException:
        copier.close(check=False)
        raise
    copier.close()
    conn.execute(
        sa.text(
            "insert into embedding_cache (model, record_id, vector) select :m, record_id, vector from new_embeddings"
            " order by record_id on conflict (model, record_id) do nothing"
        ),
        {"m": model},
    )
    conn.execute(sa.text("drop table new_embeddings"))


def _encode_once(texts_by_id: dict[str, str], settings: EmbeddingSettings) -> dict[str, np.ndarray]:
    """Encode each distinct text once (e.g. one instruction answered by several models: several records)."""
    if not texts_by_id:
        return {}
    distinct = list(dict.fromkeys(texts_by_id.values()))
    encoded = embeddings.encode(distinct, settings)  # looked up at call time: a test can stand in for it
    row = {text: i for i, text in enumerate(distinct)}
    return {record_id: encoded[row[text]] for record_id, text in texts_by_id.items()}


def _in_order(
    record_ids: Sequence[str], cached: dict[str, np.ndarray], fresh: dict[str, np.ndarray], settings: EmbeddingSettings
) -> np.ndarray:
    found = {**cached, **fresh}
    dims = {v.shape[0] for v in found.values()}
    if len(dims) > 1:
        raise EmbeddingCacheError(
            f"vectors of different sizes {sorted(dims)} under model {settings.fingerprint!r}: the model at that "
            "name changed (a replaced local directory?); give it a new path, or delete its rows: "
            f"delete from embedding_cache where model = '{settings.fingerprint}'"
        )
    dim = dims.pop() if dims else embeddings.dimension(settings)
    out = np.empty((len(record_ids), dim), dtype=np.float32)
    for i, record_id in enumerate(record_ids):
        out[i] = found[record_id]
    return out
