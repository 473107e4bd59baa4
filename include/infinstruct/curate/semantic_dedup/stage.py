"""The semantic dedup stage: instructions that ask the same thing in other words, by embedding cosine.

MinHash (near_dedup) misses edits that change many shingles: reworded prompts, appended sentences plus
swapped words. This stage catches them with sentence embeddings (MiniLM by default), after exact and
MinHash dedup, over the records still standing.

How it decides (greedy, like DEITA's selection against the already selected set)
    The records to decide are taken in the keep rule's order: source priority, then the most complete
    conversation (total characters), then record id. Each is compared with the records accepted so far
    (its `neighbours` nearest by cosine) and with the earlier ones of its own batch; it is dropped as
    `semantic_duplicate` of the most similar one whose cosine reaches `threshold`, unless either
    instruction is shorter than `min_words` or they differ in an essential word (a number, a name, a
    quoted word: `minhash.differs_in_essential_words`, so "the capital of France" never duplicates
    "the capital of Spain"). Otherwise it is accepted. Because the order is the keep rule's, the record
    kept is always the preferred one, and a chain a~b~c never drops c for resembling a dropped b.

Incremental (`stage_state.whole_dataset_scope`)
    Accepted records persist (`semantic_accepted`, per dataset and embedding model). A run that only
    added files decides only their standing records, against everything accepted before (which always
    wins); any other change re-decides the dataset from an empty accepted set.

Embeddings and search
    Vectors come from `embedding_cache` (computed once per record and model; the decontamination stage
    usually computed them already). Before the deciding transaction, missing vectors are computed and
    committed in their own transactions, so a failure never throws encoding work away. The search over
    the accepted set is a pgvector table per dataset and model when the server has the extension (`index:
    auto` or `pgvector`; searched exactly in memory up to 20,000 rows, through its HNSW index beyond:
    `vector_index.StoredIndex`), else exact: all accepted vectors in memory (dim x 4 bytes
    each, 1.5 KB for MiniLM: fine to a few hundred thousand records; install pgvector beyond).
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from infinstruct.config import Recipe
from infinstruct.contract import DatasetStage, Decision, Outcome, StageResult
from infinstruct.curate.near_dedup.minhash import differs_in_essential_words, text_words
from infinstruct.curate.semantic_dedup.pairs import SemanticDedupSettings, pairs_within
from infinstruct.record.conversation import instruction_text
from infinstruct.record.reasons import Drop, Stage
from infinstruct.stages import decided_before
from infinstruct.store.embedding_cache import instruction_vectors, read_vectors
from infinstruct.store.ledger import standing_sql
from infinstruct.store.stage_state import Scope, deciding_table, stream, whole_dataset_scope
from infinstruct.store.vector_index import StoredIndex, VectorIndexError, index_kind
from infinstruct.store.vector_probe import vector_support

log = logging.getLogger(__name__)


# standing records of the partitions being decided (temp table `deciding`), in the keep rule's order
_TODO = sa.text(
    """
create temp table todo on commit drop as
select row_number() over (order by sp.priority, r.total_chars desc, r.record_id, r.partition_id, r.line_no) as n,
       r.partition_id, r.line_no, r.record_id
from records r
join deciding dp on dp.partition_id = r.partition_id
join source_priority sp on sp.source = r.source
where """
    + standing_sql("r")
)


class AcceptedSet:
    """The records semantic dedup accepted for one dataset and embedding model, searched by cosine."""

    def __init__(self, conn: Connection, dataset: str, settings: SemanticDedupSettings, *, fresh: bool):
        """`fresh`: forget what was accepted before (a full pass), else load it (for the exact search)."""
        self.conn, self.dataset, self.model = conn, dataset, settings.embedding.fingerprint
        self.kind = index_kind(conn, settings.index, "semantic_dedup.index")
        table = "semantic_hnsw_" + hashlib.sha256(f"{dataset}\0{self.model}".encode()).hexdigest()[:16]
        self.index = StoredIndex(conn, table, self.kind)
        if fresh:
            self._reset()
        elif self.kind == "exact":
            self._load()

    def _reset(self) -> None:
        """Forget every accepted record (a full pass starts over)."""
        self.conn.execute(
            sa.text("delete from semantic_accepted where dataset = :d and model = :m"),
            {"d": self.dataset, "m": self.model},
        )
        self.index.reset()

    def _load(self) -> None:
        result = self.conn.execute(
            sa.text(
                "select a.record_id, c.vector from semantic_accepted a left join embedding_cache c"
                " on c.model = a.model and c.record_id = a.record_id where a.dataset = :d and a.model = :m order by a.record_id"
            ),
            {"d": self.dataset, "m": self.model},
            execution_options=stream(20_000),
        )
        for rows in result.partitions(20_000):
            if any(vector is None for _, vector in rows):
                raise VectorIndexError(
                    f"accepted records of {self.dataset!r} lost their cached vectors "
                    "(embedding_cache rows deleted?): re-run with changed semantic_dedup settings"
                )
            vectors = np.frombuffer(b"".join(bytes(v) for _, v in rows), dtype="<f4").reshape(len(rows), -1)
            self.index.load([record_id for record_id, _ in rows], vectors)

    def nearest(self, vectors: np.ndarray, k: int, min_cosine: float) -> list[list[tuple[str, float]]]:
        """Per query row, up to k accepted (record id, cosine) with cosine >= min_cosine, best first."""
        return self.index.neighbours(vectors, k, min_cosine)

    def instructions(self, record_ids: list[str]) -> dict[str, str]:
        if not record_ids:
            return {}
        return dict(
            self.conn.execute(
                sa.text(
                    "select record_id, instruction from semantic_accepted where dataset = :d and model = :m and record_id = any(:ids)"
                ),
                {"d": self.dataset, "m": self.model, "ids": record_ids},
            ).all()
        )

    def add(self, record_ids: list[str], vectors: np.ndarray, texts: list[str], run_id: str) -> None:
        if not record_ids:
            return
        self.conn.execute(
            sa.text(
                "insert into semantic_accepted (dataset, model, record_id, instruction, run_id) values (:d, :m, :r, :t, :run)"
                " on conflict do nothing"
            ),
            [{"d": self.dataset, "m": self.model, "r": r, "t": t, "run": run_id} for r, t in zip(record_ids, texts)],
        )
        self.index.add(record_ids, np.ascontiguousarray(vectors, dtype=np.float32))


def _prepare(conn: Connection, recipe: Recipe, run_id: str):
    """The pass's scope, with temp tables `deciding`, `source_priority` and `todo` (records to decide, in order)."""
    settings = recipe.semantic_dedup
    scope = whole_dataset_scope(
        conn, run_id, Stage.SEMANTIC_DEDUP, [settings, recipe.priorities], decided_before(Stage.SEMANTIC_DEDUP)
    )
    deciding_table(conn, scope, recipe.priorities)
    conn.execute(_TODO, {"earlier": decided_before(Stage.SEMANTIC_DEDUP)})
    return scope


def _todo(conn: Connection, batch: int):
    """(n, partition_id, line_no, record_id, instruction) of the records to decide, in batches, in order."""
    total = conn.execute(sa.text("select count(*) from todo")).scalar_one()
    for start in range(0, total, batch):
        rows = conn.execute(
            sa.text(
                "select t.partition_id, t.line_no, t.record_id, r.conversation from todo t"
                " join records r on r.partition_id = t.partition_id and r.line_no = t.line_no"
                " where t.n > :a and t.n <= :b order by t.n"
            ),
            {"a": start, "b": start + batch},
        ).all()
        yield [(p, line, rid, instruction_text((t["role"], t["content"]) for t in conv)) for p, line, rid, conv in rows]


def embed_standing(engine: Engine, recipe: Recipe, run_id: str) -> int:
    """Compute and commit the missing vectors of the records the pass will decide; returns how many."""
    settings = recipe.semantic_dedup
    missing = 0
    with engine.begin() as conn:  # read-only: temp tables only, dropped at commit
        _prepare(conn, recipe, run_id)
        for batch in _todo(conn, settings.batch_size):
            ids = [rid for _, _, rid, _ in batch]
            cached = read_vectors(conn, settings.embedding.fingerprint, ids)
            todo = [(rid, text) for _, _, rid, text in batch if rid not in cached]
            if todo:
                instruction_vectors(engine, settings.embedding, [r for r, _ in todo], [t for _, t in todo])
                missing += len(todo)
    return missing


def _same_request(a: str, b: str, min_words: int) -> bool:
    """Close in embedding space and allowed to count as one request (see the module docstring)."""
    return len(text_words(a)) >= min_words and len(text_words(b)) >= min_words and not differs_in_essential_words(a, b)


def decide_batch(
    vectors: np.ndarray, texts: list[str], accepted: AcceptedSet, settings: SemanticDedupSettings, ids: list[str]
) -> list[tuple[str, float] | None]:
    """Per row of a batch (in keep order): None to accept it, else (record id it duplicates, cosine)."""
    hits = accepted.nearest(vectors, settings.neighbours, settings.threshold)
    known = accepted.instructions(sorted({rid for row in hits for rid, _ in row}))
    pairs, cosines = pairs_within(vectors, settings.threshold)
    earlier: dict[int, list[tuple[int, float]]] = {}
    for (i, j), cosine in zip(pairs.tolist(), cosines.tolist()):
        earlier.setdefault(j, []).append((i, cosine))
    out: list[tuple[str, float] | None] = []
    for j, text in enumerate(texts):
        candidates = [(cos, rid, known[rid]) for rid, cos in hits[j] if rid in known]
        candidates += [(cos, ids[i], texts[i]) for i, cos in earlier.get(j, []) if out[i] is None]
        match = next(
            (
                (rid, cos)
                for cos, rid, other in sorted(candidates, key=lambda c: (-c[0], c[1]))
                if rid != ids[j] and _same_request(text, other, settings.min_words)
            ),
            None,
        )
        out.append(match)
    return out


class SemanticDedupStage(DatasetStage):
    """Semantic duplicates among the run's standing records (or only the new ones), against the accepted set."""

    ledger = Stage.SEMANTIC_DEDUP

    def enabled(self) -> bool:
        return self.recipe.semantic_dedup is not None  # `semantic_dedup: null` turns it off

    def forget(self, conn: Connection, dataset: str) -> None:
        conn.execute(sa.text("delete from semantic_accepted where dataset = :d"), {"d": dataset})

    def settings(self) -> object:
        return [self.recipe.semantic_dedup, self.recipe.priorities]

    def prepare(self) -> dict:
        embedded = embed_standing(self.engine, self.recipe, self.run_id)
        if self.recipe.semantic_dedup.index != "exact":
            vector_support(self.engine)  # probed (once per server start) outside the stage's transaction
        return {"embedded": embedded}

    def decide(self, conn: Connection, scope: Scope) -> Outcome:
        settings = self.recipe.semantic_dedup
        conn.execute(_TODO, {"earlier": self.upstream()})
        accepted = AcceptedSet(conn, scope.dataset, settings, fresh=scope.full)
        outcome = Outcome(numbers={"index": accepted.kind})
        for batch in _todo(conn, settings.batch_size):
            ids, texts = [rid for _, _, rid, _ in batch], [text for *_, text in batch]
            vectors = instruction_vectors(conn, settings.embedding, ids, texts)
            verdicts = decide_batch(vectors, texts, accepted, settings, ids)
            keep = [n for n, v in enumerate(verdicts) if v is None]
            accepted.add([ids[n] for n in keep], vectors[keep], [texts[n] for n in keep], self.run_id)
            for (partition_id, line_no, _, _), verdict in zip(batch, verdicts):
                if verdict is not None:
                    outcome.decisions.append(
                        Decision(
                            partition_id,
                            line_no,
                            Drop.SEMANTIC_DUPLICATE.value,
                            score=round(verdict[1], 4),
                            duplicate_of=verdict[0],
                        )
                    )
            outcome.decided += len(batch)
        return outcome


def semantic_dedup(engine: Engine, recipe: Recipe, run_id: str) -> StageResult:
    """Decide semantic duplicates among the run's standing records (or only the new ones)."""
    result = SemanticDedupStage(engine, recipe, run_id).run()
    log.info("semantic dedup of run %s: %s", run_id, result.as_dict())
    return result
