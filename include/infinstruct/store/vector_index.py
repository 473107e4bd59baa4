"""Vector indexes: pgvector inside PostgreSQL (`VectorIndex`, `StoredIndex`) or exact, in memory.

A table of (record key, embedding) with an HNSW index over cosine distance, in the project's own
database: it persists with everything else, is replaced in the same transactions as the ledger,
and needs no side files. The embedded server ships pgvector; a system server needs it installed
(Debian: postgresql-NN-pgvector). `index_kind` uses it only where the probe showed it works.
Chosen over usearch and faiss (bench/RESULTS.md, "Vector index choice"): the stages are bound by MiniLM,
and pgvector saves the key mapping, persistence and transactional replace. For a first full load, insert
before creating the index (`schema_sql(with_index=False)`, then `index_sql()`): 50x faster.
"""

from __future__ import annotations

import io
import logging
import re
import struct
from typing import Sequence

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from infinstruct.curate.selection.diversity import ExactIndex
from infinstruct.errors import DataError
from infinstruct.store.vector_probe import vector_support

log = logging.getLogger(__name__)

DEFAULT_TABLE = "semantic_vectors"
# StoredIndex.add rebuilds the HNSW index instead of inserting into it when new rows x this >= stored rows: an insert
# costs 5-8x a build per row (bench/RESULTS.md, "Vector index inserts")
REBUILD_FACTOR = 5
# A pgvector table of at most this many rows is searched exactly, in memory (a mirror of its rows, 30 MB for
# MiniLM), and gets its HNSW index only when it grows past it: exact search of 1,000 queries costs less there than
# HNSW's (bench/RESULTS.md, "Vector index inserts"), and a small set needs no index build.
MIRROR_MAX_ROWS = 20_000
DEFAULT_DIM = 384  # all-MiniLM-L6-v2
_IDENT = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def _check_ident(name: str) -> None:
    if not _IDENT.fullmatch(name):
        raise ValueError(f"table name must be a plain lower-case identifier, got {name!r}")


def schema_sql(dim: int = DEFAULT_DIM, table: str = DEFAULT_TABLE, with_index: bool = True) -> str:
    """DDL of a vector table (and its HNSW index): what a migration creates."""
    _check_ident(table)
    ddl = (
        f"create extension if not exists vector;\n"
        f"create table if not exists {table} (\n"
        f"    record_key text primary key,   -- the record id (content hash) the vector embeds\n"
        f"    embedding vector({int(dim)}) not null\n"
        f");\n"
    )
    return ddl + (index_sql(table) if with_index else "")


def index_sql(table: str = DEFAULT_TABLE) -> str:
    """The HNSW index over cosine distance (pgvector defaults m = 16, ef_construction = 64)."""
    _check_ident(table)
    return f"create index if not exists {table}_hnsw on {table} using hnsw (embedding vector_cosine_ops);\n"


# For the lead's migration: the default table for the bundled MiniLM (384 dimensions).
SCHEMA_SQL = schema_sql()


def vector_literal(vectors: np.ndarray) -> list[str]:
    """pgvector's text form of each row: '[x1,x2,...]' (float32 precision kept: 9 significant digits)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    row_format = "[" + ",".join(["%.9g"] * vectors.shape[1]) + "]"
    return [row_format % tuple(row) for row in vectors.tolist()]


class VectorIndexError(DataError, RuntimeError):
    """The database cannot hold vectors (no pgvector) or a vector has the wrong shape."""


class VectorIndex:
    """(record key, embedding) rows in PostgreSQL with pgvector, searched by cosine.

    Every method opens its own transaction on `engine`; pass a `conn` to take part in the caller's.
    """

    def __init__(
        self,
        engine: Engine,
        dim: int = DEFAULT_DIM,
        table: str = DEFAULT_TABLE,
        *,
        ef_search: int = 100,
        batch: int = 2_000,
    ):
        _check_ident(table)
        self.engine, self.dim, self.table = engine, dim, table
        self.ef_search = ef_search  # HNSW candidate list per query: 40 (pgvector's default) gave lower recall
        self.batch = batch

    def create(self) -> None:
        """Create the extension, table and HNSW index if missing (tests; production uses migrations)."""
        try:
            with self.engine.begin() as conn:
                for statement in filter(str.strip, schema_sql(self.dim, self.table).split(";")):
                    conn.execute(sa.text(statement))
        except sa.exc.DBAPIError as exc:
            if "vector" in str(exc.orig):
                raise VectorIndexError(
                    "this PostgreSQL has no pgvector extension: use the embedded server "
                    "or install pgvector on the server"
                ) from exc
            raise

    def _vectors(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise VectorIndexError(f"expected vectors of shape (n, {self.dim}), got {vectors.shape}")
        return vectors

    def add(self, keys: Sequence[str], vectors: np.ndarray, conn: sa.Connection | None = None) -> int:
        """Insert or replace the vectors of `keys` (idempotent); returns the number of rows written."""
        vectors = self._vectors(vectors)
        if len(keys) != len(vectors):
            raise VectorIndexError(f"{len(keys)} keys for {len(vectors)} vectors")
        statement = sa.text(
            f"insert into {self.table} (record_key, embedding) values (:k, cast(:v as vector))"
            f" on conflict (record_key) do update set embedding = excluded.embedding"
        )
        with _connection(self.engine, conn) as c:
            for s in range(0, len(keys), self.batch):
                literals = vector_literal(vectors[s : s + self.batch])
                c.execute(statement, [{"k": k, "v": v} for k, v in zip(keys[s : s + self.batch], literals)])
        return len(keys)

    def remove(self, keys: Sequence[str], conn: sa.Connection | None = None) -> None:
        """Delete the rows of `keys` (a re-run replacing its partition, a record dropped later)."""
        with _connection(self.engine, conn) as c:
            c.execute(sa.text(f"delete from {self.table} where record_key = any(:keys)"), {"keys": list(keys)})

    def __len__(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.text(f"select count(*) from {self.table}")).scalar_one())

    def neighbours(
        self, vectors: np.ndarray, k: int = 5, min_cosine: float = 0.0, conn: sa.Connection | None = None
    ) -> list[tuple[int, str, float]]:
        """The k nearest stored rows of each query vector (approximate: HNSW), those with cosine ≥
        `min_cosine`, as (query row, record key, cosine), by row then by descending cosine."""
        vectors = self._vectors(vectors)
        # materialized: inlined, the text-to-vector cast is redone for every row a sequential scan (the
        # planner's choice for a small table) compares with: 120 ms instead of 1 ms per query at 1,000 rows
        query = sa.text(f"""
            with q as materialized (select (n - 1)::int as row, cast(v as vector({self.dim})) as v
                       from unnest(cast(:vs as text[])) with ordinality as t(v, n))
            select q.row, nb.record_key, 1 - nb.distance as cosine
            from q cross join lateral (
                select record_key, embedding <=> q.v as distance from {self.table}
                order by embedding <=> q.v limit :k) nb
            where 1 - nb.distance >= :min_cosine
            order by q.row, nb.distance, nb.record_key""")
        out: list[tuple[int, str, float]] = []
        with _connection(self.engine, conn) as c:
            c.execute(sa.text("select set_config('hnsw.ef_search', :ef, true)"), {"ef": str(max(self.ef_search, k))})
            for s in range(0, len(vectors), self.batch):
                rows = c.execute(
                    query, {"vs": vector_literal(vectors[s : s + self.batch]), "k": k, "min_cosine": min_cosine}
                ).all()
                out.extend((s + row, key, float(cos)) for row, key, cos in rows)
        return out


def index_kind(conn: sa.Connection, wanted: str, setting: str) -> str:
    """ "pgvector" or "exact" for a recipe's `index` setting (auto: pgvector when it works on this server).

    Whether it works is the probe's answer (`vector_probe`), remembered for this server start: a
    pgvector that would crash the server is never used. Stages call `vector_support` before opening the
    transaction `conn` belongs to, so this only reads the answer."""
    if wanted == "exact":
        return "exact"
    support = vector_support(conn.engine)
    if support.ok:
        return "pgvector"
    if wanted == "pgvector":
        raise VectorIndexError(
            f"{setting} is 'pgvector' but pgvector does not work on this server: {support.detail}. "
            "Install a pgvector built for this CPU (Debian: postgresql-NN-pgvector), use the "
            "embedded server, or set index: auto (exact search)"
        )
    return "exact"


class StoredIndex:
    """A persistent set of (record id, unit vector) searched by cosine, inside the caller's transaction:
    semantic dedup's accepted records and each domain of the selection are one.

    kind "pgvector": the rows of `table`, created on the first `add` and bulk-loaded by binary COPY. Up to
    MIRROR_MAX_ROWS rows it is searched exactly, over a mirror of its rows in memory; past that, through an HNSW
    index over cosine distance, built once the rows are in (far faster than inserting into a built index), and
    rebuilt rather than inserted into when many rows come at once. kind "exact": the vectors in memory
    (`ExactIndex`); what is stored elsewhere (e.g. the vectors of the members in embedding_cache) the caller
    hands to `load`.
    """

    def __init__(self, conn: sa.Connection, table: str, kind: str, *, ef_search: int = 100):
        _check_ident(table)
        self.conn, self.table, self.kind, self.ef_search = conn, table, kind, ef_search
        self._memory: ExactIndex | None = None
        # pgvector: the table's rows in memory while it has at most MIRROR_MAX_ROWS (`_mirrored`)
        self._mirror: ExactIndex | None = None
        self._mirroring: bool | None = None  # None: not known yet (the table is counted on first use)
        self._exists = (
            kind == "pgvector"
            and conn.execute(sa.text("select to_regclass(:t) is not null"), {"t": table}).scalar_one()
        )

    @property
    def persistent(self) -> bool:
        """True when the rows outlive the transaction's Python objects (a pgvector table)."""
        return self.kind == "pgvector"

    @property
    def memory(self) -> ExactIndex | None:
        """Exact kind: the members' vectors in memory (None before any)."""
        return self._memory

    def __len__(self) -> int:
        if self.kind == "exact":
            return len(self._memory) if self._memory is not None else 0
        if not self._exists:
            return 0
        return int(self.conn.execute(sa.text(f"select count(*) from {self.table}")).scalar_one())

    def reset(self) -> None:
        """Forget every row (the table goes)."""
        if self.kind == "pgvector":
            self.conn.execute(sa.text(f"drop table if exists {self.table}"))
            self._exists = False
        self._memory = None
        self._mirror, self._mirroring = None, True  # no table: an empty mirror

    def load(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Exact kind: members stored elsewhere, into memory (in order: ties go to the earlier)."""
        if self.kind != "exact":
            raise VectorIndexError("load() is for the exact index; a pgvector table keeps its own rows")
        self._exact(vectors).add(ids, vectors)

    def _exact(self, vectors: np.ndarray) -> ExactIndex:
        if self._memory is None:
            self._memory = ExactIndex(np.asarray(vectors).shape[1])
        return self._memory

    def add(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Add members (pgvector: written in the caller's transaction; an existing key is replaced)."""
        if not len(ids):
            return
        if self.kind == "exact":
            self._exact(vectors).add(ids, vectors)
        else:
            vectors = np.asarray(vectors, dtype=np.float32)
            mirror = self._mirrored(vectors.shape[1])
            if self._exists:
                self._insert(ids, vectors)
            else:
                self._bulk_load(ids, vectors)
            if mirror is not None:
                mirror.remove(ids)  # an upsert: a key added again is replaced
                mirror.add(ids, vectors)
                if len(mirror) > MIRROR_MAX_ROWS:  # grown past it: HNSW from now on (the index is built by now)
                    self._mirror, self._mirroring = None, False

    def _copy(self, table: str, ids: Sequence[str], vectors: np.ndarray) -> None:
        cursor = self.conn.connection.dbapi_connection.cursor()
        for s in range(0, len(ids), 50_000):
            cursor.copy_expert(
                f"copy {table} (record_key, embedding) from stdin with (format binary)",
                io.BytesIO(_binary_rows(ids[s : s + 50_000], vectors[s : s + 50_000])),
            )

    def _bulk_load(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Create the table, COPY the rows in binary, then build the HNSW index over them."""
        for statement in filter(str.strip, schema_sql(vectors.shape[1], self.table, with_index=False).split(";")):
            self.conn.execute(sa.text(statement))
        self._copy(self.table, ids, vectors)
        if len(ids) > MIRROR_MAX_ROWS:
            self._build_index(len(ids), vectors.shape[1])
        self._exists = True

    def _insert(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Upsert rows into the existing table through a binary COPY. Inserting into an HNSW graph costs far more
        per row than building it: when the new rows are many next to the stored ones, the index is dropped and
        built again over all of them (bench/RESULTS.md, "Vector index inserts")."""
        stored = len(self)
        indexed = self._has_index()
        rebuild = indexed and len(ids) * REBUILD_FACTOR >= stored
        if rebuild:
            self.conn.execute(sa.text(f"drop index if exists {self.table}_hnsw"))
        staging = f"{self.table}_adding"
        self.conn.execute(sa.text(f"create temp table {staging} (like {self.table})"))
        self._copy(staging, ids, vectors)
        self.conn.execute(
            sa.text(
                f"insert into {self.table} (record_key, embedding) select record_key, embedding from {staging}"
                f" on conflict (record_key) do update set embedding = excluded.embedding"
            )
        )
        self.conn.execute(sa.text(f"drop table {staging}"))
        if rebuild or (not indexed and stored + len(ids) > MIRROR_MAX_ROWS):
            self._build_index(stored + len(ids), vectors.shape[1])

    def _has_index(self) -> bool:
        return self.conn.execute(
            sa.text("select to_regclass(:i) is not null"), {"i": f"{self.table}_hnsw"}
        ).scalar_one()

    def _mirrored(self, dim: int | None = None) -> ExactIndex | None:
        """pgvector: the in-memory mirror of the table's rows while it has at most MIRROR_MAX_ROWS (read from the
        table on first use, then kept in step by add and remove), else None. `dim` makes an empty one."""
        if self.kind != "pgvector":
            return None
        if self._mirroring is None:
            rows = len(self)
            self._mirroring = rows <= MIRROR_MAX_ROWS
            if self._mirroring and rows:
                ids, vectors = self._read_rows()
                self._mirror = ExactIndex(vectors.shape[1], ids, vectors)
        if self._mirroring and self._mirror is None and dim is not None:
            self._mirror = ExactIndex(dim)
        return self._mirror if self._mirroring else None

    def _read_rows(self) -> tuple[list[str], np.ndarray]:
        """Every (key, vector) of the table, in key order; pgvector's binary form: int16 dim, int16 0, float4 x dim."""
        rows = self.conn.execute(
            sa.text(f"select record_key, vector_send(embedding) from {self.table} order by record_key")
        ).all()
        dim = struct.unpack(">h", bytes(rows[0][1])[:2])[0]
        raw = b"".join(bytes(v)[4:] for _, v in rows)
        return [k for k, _ in rows], np.frombuffer(raw, dtype=">f4").astype(np.float32).reshape(len(rows), dim)

    def _build_index(self, rows: int, dim: int) -> None:
        # the build is fast only while the graph fits in maintenance_work_mem (default 64 MB: ~30k MiniLM rows)
        needed = rows * (dim * 4 + 512) + (64 << 20)
        self.conn.execute(
            sa.text(
                "select set_config('maintenance_work_mem', :m, true)"
                " where pg_size_bytes(current_setting('maintenance_work_mem')) < :b"
            ),
            {"m": f"{min(needed, 1 << 30) >> 20}MB", "b": min(needed, 1 << 30)},
        )
        self.conn.execute(sa.text(index_sql(self.table)))

    def remove(self, ids: Sequence[str]) -> None:
        """Forget the members `ids` (the others keep their place)."""
        if not len(ids):
            return
        if self.kind == "exact":
            if self._memory is not None:
                self._memory.remove(ids)
        elif self._exists:
            mirror = self._mirrored()
            self.conn.execute(sa.text(f"delete from {self.table} where record_key = any(:keys)"), {"keys": list(ids)})
            if mirror is not None:
                mirror.remove(ids)

    def neighbours(self, vectors: np.ndarray, k: int, min_cosine: float) -> list[list[tuple[str, float]]]:
        """Per query row, up to k members (record id, cosine) with cosine >= min_cosine, best first
        (pgvector: approximate, HNSW)."""
        if self.kind == "exact":
            return (
                self._memory.neighbours(vectors, k, min_cosine) if self._memory is not None else [[] for _ in vectors]
            )
        mirror = self._mirrored(vectors.shape[1])
        if mirror is not None:
            return mirror.neighbours(vectors, k, min_cosine)
        found: list[list[tuple[str, float]]] = [[] for _ in range(len(vectors))]
        if self._exists:
            index = VectorIndex(self.conn.engine, vectors.shape[1], self.table, ef_search=self.ef_search)
            for row, key, cosine in index.neighbours(vectors, k, min_cosine, conn=self.conn):
                found[row].append((key, cosine))
        return found

    def nearest(self, queries: np.ndarray) -> tuple[np.ndarray, list[str | None]]:
        """`diversity.NearestIndex`: the most similar member per query (-inf and None when there is none)."""
        if self.kind == "exact" and self._memory is not None:
            return self._memory.nearest(queries)
        mirror = self._mirrored(np.asarray(queries).shape[1])
        if mirror is not None:
            return mirror.nearest(queries)
        best = np.full(len(queries), -np.inf, dtype=np.float32)
        best_id: list[str | None] = [None] * len(queries)
        if self.kind == "pgvector":
            for row, hits in enumerate(self.neighbours(queries, 1, -2.0)):
                if hits:
                    best[row], best_id[row] = hits[0][1], hits[0][0]
        return best, best_id


def _binary_rows(ids: Sequence[str], vectors: np.ndarray) -> bytes:
    """COPY binary format of (text, vector) rows: pgvector's wire form is int16 dim, int16 0, float4 x dim."""
    dim = vectors.shape[1]
    floats = np.ascontiguousarray(vectors, dtype=">f4").tobytes()
    width = 4 * dim
    head = struct.pack(">ihh", 4 + width, dim, 0)
    parts = [b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)]
    for i, key in enumerate(ids):
        raw = key.encode()
        parts.append(struct.pack(">hi", 2, len(raw)) + raw + head + floats[i * width : (i + 1) * width])
    parts.append(struct.pack(">h", -1))
    return b"".join(parts)


class _connection:
    """Use the caller's connection, or a new transaction of our own."""

    def __init__(self, engine: Engine, conn: sa.Connection | None):
        self.engine, self.conn, self._ctx = engine, conn, None

    def __enter__(self) -> sa.Connection:
        if self.conn is not None:
            return self.conn
        self._ctx = self.engine.begin()
        return self._ctx.__enter__()

    def __exit__(self, *exc) -> None:
        if self._ctx is not None:
            self._ctx.__exit__(*exc)
