"""The score_records stage: signals, quality, difficulty and domain of every standing record of a partition.

Measurements are facts about content, kept per record id in `record_scores` (a conversation in two
files is scored once) and apart from the formulas that use them:

* `signals` (`signals.measure_signals`, version `SIGNALS_VERSION`): re-measured only when the version changes;
* `signals["model_score"]` with `scorer`, the name of the model that measured it, when the recipe names a
  `selection.scoring.scorer`: scored again only when that name changes (a weight change never re-scores).
  For the embedding scorer the instruction's vector comes from `embedding_cache`, so only the response is
  encoded; the LLM judge's answers are kept in `llm_responses`, so a retried batch pays only for the rest;
* `quality`, `difficulty`: the formulas over the stored signals under the recipe's `selection.scoring`
  weights, re-derived (no re-measuring) when `scores_key` (their hash, with the scorer's name) changes;
* `domain`, `confidence`: `domains.DomainClassifier` (rules + MiniLM nearest centroid) over the instruction,
  with the instruction vector from `embedding_cache` (computed once per record and model, usually already
  there from semantic dedup), re-derived when `domain_key` (classifier settings + model) changes.

So a partition whose records are all scored under the current keys costs one query; the others are read
from a server-side cursor and scored batch by batch (`BATCH` records, the model's own batches inside). Standing = not dropped
by any stage before selection. Rows are upserted in record-id order (parallel partitions never deadlock).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from typing import Any

import numpy as np
import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from infinstruct.config import Recipe
from infinstruct.curate.scoring.domains import DomainClassifier, DomainSettings
from infinstruct.curate.scoring.signals import (
    SIGNALS_VERSION,
    EmbeddingRelevanceScorer,
    difficulty_score,
    measure_signals,
    model_scorer,
    quality_score,
)
from infinstruct.curate.selection.quotas import SelectionSettings
from infinstruct.ml.embeddings import EmbeddingSettings
from infinstruct.record.conversation import instruction_text
from infinstruct.record.reasons import Stage
from infinstruct.stages import decided_before
from infinstruct.store.embedding_cache import instruction_vectors
from infinstruct.store.ledger import standing_sql
from infinstruct.store.pgcopy import Copier, CopyTable, json_field, text_field
from infinstruct.store.stage_state import stream

log = logging.getLogger(__name__)

BATCH = 2_000
COLUMNS = (
    "record_id",
    "signals_version",
    "signals",
    "scores_key",
    "quality",
    "difficulty",
    "domain_key",
    "domain",
    "confidence",
    "scorer",
)

# a partition's standing records (deduplicated by record id) whose stored scores are missing or stale
_TODO = sa.text(
    """
select distinct on (r.record_id) r.record_id, r.conversation, s.signals_version, s.signals, s.scores_key, s.quality,
       s.difficulty, s.domain_key, s.domain, s.confidence, s.scorer
from records r left join record_scores s on s.record_id = r.record_id
where r.partition_id = :p
  and """
    + standing_sql("r")
    + """
  and (s.record_id is null or s.signals_version <> :v or s.scores_key <> :sk or s.domain_key <> :dk)
order by r.record_id
"""
)


def _hash(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def scorer_name(settings: SelectionSettings) -> str | None:
    """The name of the model that measures signals["model_score"] under the settings (None: no scorer)."""
    scorer = model_scorer(settings.scoring, settings.embedding)
    return scorer.name if scorer else None


def keys(settings: SelectionSettings) -> tuple[str, str]:
    """(scores_key, domain_key) of the settings: what the derived columns were computed with."""
    return (
        _hash([settings.scoring.model_dump(mode="json"), scorer_name(settings)]),
        _hash([settings.domains.model_dump(mode="json"), settings.embedding.fingerprint]),
    )


@functools.lru_cache(maxsize=4)
def _classifier(domains_json: str, embedding_json: str) -> DomainClassifier:
    return DomainClassifier(
        DomainSettings.model_validate_json(domains_json), EmbeddingSettings.model_validate_json(embedding_json)
    )


def classifier(settings: SelectionSettings) -> DomainClassifier:
    """The domain classifier of the settings, built once per process (its centroids cost ~64 encodes)."""
    return _classifier(settings.domains.model_dump_json(), settings.embedding.model_dump_json())


def score_batch(engine: Engine, settings: SelectionSettings, rows: list) -> list[tuple]:
    """Fresh record_scores rows (COLUMNS order) for rows of `_TODO`, re-using what is still valid."""
    scores_key, domain_key = keys(settings)
    scorer = model_scorer(settings.scoring, settings.embedding, engine)
    out, to_classify, to_score = [], [], []
    for rid, conversation, version, signals, s_key, quality, difficulty, d_key, domain, confidence, name in rows:
        turns = [(t["role"], t["content"]) for t in conversation]
        if version != SIGNALS_VERSION or signals is None:
            stored = signals or {}
            signals = measure_signals(turns)
            if "model_score" in stored:  # a fact of the model named in `scorer`, not of the signals' version
                signals["model_score"] = stored["model_score"]
        if scorer is not None and (name != scorer.name or "model_score" not in signals):
            to_score.append(len(out))
        if d_key != domain_key:
            to_classify.append(len(out))
        out.append(
            [
                rid,
                SIGNALS_VERSION,
                signals,
                scores_key,
                quality,
                difficulty,
                domain_key,
                domain,
                confidence,
                name,
                turns,
            ]
        )
    if to_score:
        ids = [out[i][0] for i in to_score]
        instructions = [instruction_text(out[i][10]) for i in to_score]
        responses = ["\n".join(c for r, c in out[i][10] if r == "assistant") for i in to_score]
        if isinstance(scorer, EmbeddingRelevanceScorer):  # the cached instruction vectors: only responses encoded
            values = scorer.score_vectors(instruction_vectors(engine, scorer.settings, ids, instructions), responses)
        else:
            values = scorer.score(instructions, responses)
        for i, value in zip(to_score, values):
            out[i][2] = {**out[i][2], "model_score": round(float(value), 6)}
            out[i][9] = scorer.name
    for row in out:  # the formulas are cheap: always over the signals as they now stand
        row[4], row[5] = quality_score(row[2], settings.scoring), difficulty_score(row[2], settings.scoring)
    if to_classify:
        ids = [out[i][0] for i in to_classify]
        texts = [instruction_text(out[i][10]) for i in to_classify]
        vectors = instruction_vectors(engine, settings.embedding, ids, texts)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        labels = classifier(settings).classify(texts, vectors / np.maximum(norms, 1e-12))
        for i, label in zip(to_classify, labels):
            out[i][7], out[i][8] = label.domain, label.confidence
    return [tuple(row[:10]) for row in out]


def save_scores(conn: Connection, rows: list[tuple]) -> None:
    """Upsert record_scores rows by COPY into a temporary table, then one insert in record-id order."""
    if not rows:
        return
    conn.execute(sa.text("create temp table new_scores (like record_scores including defaults) on commit drop"))
    copier = Copier(conn.connection.dbapi_connection.cursor())
    table = CopyTable(copier, "new_scores", COLUMNS, 10_000)
    try:
        for rid, version, signals, s_key, quality, difficulty, d_key, domain, confidence, scorer in rows:
            table.add(
                text_field(rid),
                b"%d" % version,
                json_field(orjson.dumps(signals)),
                text_field(s_key),
                repr(float(quality)).encode(),
                repr(float(difficulty)).encode(),
                text_field(d_key),
                text_field(domain),
                repr(float(confidence)).encode(),
                b"\\N" if scorer is None else text_field(scorer),
            )
        table.flush()
    finally:
        copier.close()
    updates = ", ".join(f"{c} = excluded.{c}" for c in COLUMNS[1:])
    conn.execute(
        sa.text(
            f"insert into record_scores ({', '.join(COLUMNS)}) select {', '.join(COLUMNS)} from new_scores"
            f" order by record_id on conflict (record_id) do update set {updates}, scored_at = now()"
        )
    )
    conn.execute(sa.text("drop table new_scores"))


def score_partition(engine: Engine, recipe: Recipe, run_id: str, partition_id: str) -> dict[str, Any]:
    """Score the partition's standing records that have no current scores; returns counts."""
    settings = recipe.selection
    if settings is None:
        return {"partition_id": partition_id, "disabled": True}
    scores_key, domain_key = keys(settings)
    scored = 0
    with engine.connect() as reader:  # streamed: a partition's conversations never all in memory
        result = reader.execute(
            _TODO,
            {
                "p": partition_id,
                "earlier": decided_before(Stage.SELECT),
                "v": SIGNALS_VERSION,
                "sk": scores_key,
                "dk": domain_key,
            },
            execution_options=stream(BATCH),
        )
        for todo in result.partitions():
            rows = score_batch(engine, settings, todo)
            with engine.begin() as conn:  # facts about content: committed batch by batch
                save_scores(conn, rows)
            scored += len(rows)
    log.info("score_records on %s: %d records scored", partition_id, scored)
    return {"partition_id": partition_id, "scored": scored}
