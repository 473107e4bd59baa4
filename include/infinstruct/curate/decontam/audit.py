"""How many released records a looser, independent contamination check still flags: the release gate's
contamination audit.

The decontamination stage decides with its own thresholds, and its `contamination` table says what it
found; a gate that re-reads that table cannot see what the stage missed. This audit re-derives matches
from the benchmark files for a sample of the released records (the records of the parts the gate
validates now, at most `gates.contamination_sample`, sampled by record id so the same release gives the
same sample), with settings the stage does not use:

* n-grams: `n` halved (at least 5 words) and the threshold halved, so a wrapped or lightly edited item
  that the stage's 13-grams miss still shares evidence;
* embeddings: the instruction's cosine to every item at `gates.contamination_audit_cosine` (0.80), on the
  cosine alone, without the word-pair evidence the stage asks for below 0.90 (when the recipe embeds:
  the stage has cached every instruction's vector then, so the audit encodes nothing; a recipe that turns
  embedding decontamination off is audited by n-grams alone, not charged a model's encoding of the sample).

The share of sampled records with any such match is what the gate reports (`contamination_suspects`,
with examples) and, when the recipe sets `gates.max_contamination_suspect_share`, bounds. Looser means
false alarms (a question on the same topic as a benchmark item): it is a rate to watch, not a filter.
Known limit: MiniLM embeds English; a translation of an item is not found by either check.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from infinstruct.config import DecontamSettings, Recipe
from infinstruct.curate.decontam.embedding import EmbeddingMatcher, EmbeddingMatchSettings
from infinstruct.curate.decontam.ngrams import NgramIndex, best_matches, iter_items
from infinstruct.curate.decontam.stage import benchmark_digests, embedding_matcher, match_text
from infinstruct.record.conversation import instruction_text
from infinstruct.store.db import records
from infinstruct.store.embedding_cache import instruction_vectors
from infinstruct.store.ledger import dropped
from infinstruct.store.records import parse_turns


@dataclass
class ContaminationAudit:
    sampled: int  # released records audited
    of: int  # released records of the audited parts
    suspects: int  # sampled records with a looser match
    examples: list[dict] = field(default_factory=list)  # a few: record id, item, method, score

    @property
    def share(self) -> float:
        return self.suspects / self.sampled if self.sampled else 0.0

    def as_dict(self) -> dict:
        return {
            "sampled": self.sampled,
            "of": self.of,
            "suspects": self.suspects,
            "share": round(self.share, 6),
            "examples": self.examples,
        }


def audit_settings(settings: DecontamSettings, cosine: float) -> DecontamSettings:
    """The looser settings the audit matches with (see the module's docstring)."""
    ngram = settings.ngram.model_copy(
        update={"n": max(5, settings.ngram.n // 2), "threshold": settings.ngram.threshold / 2}
    )
    embedding = (settings.embedding or EmbeddingMatchSettings()).model_copy(
        update={"threshold": cosine, "evidence_threshold": None}
    )
    return settings.model_copy(update={"ngram": ngram, "embedding": embedding})


@functools.lru_cache(maxsize=2)
def _ngram_index(settings_json: str, digests: tuple[str, ...]) -> NgramIndex:
    settings = DecontamSettings.model_validate_json(settings_json)
    return NgramIndex([item for spec in settings.benchmarks for item in iter_items(spec)], settings.ngram)


def matchers(settings: DecontamSettings, cosine: float) -> tuple[NgramIndex, EmbeddingMatcher | None]:
    """The audit's n-gram index and, when the recipe embeds, its embedding matcher (the items' vectors are
    the stage's, embedded once)."""
    loose = audit_settings(settings, cosine)
    index = _ngram_index(loose.model_dump_json(), benchmark_digests(settings))
    if settings.embedding is None:
        return index, None
    stage = embedding_matcher(settings)
    return index, EmbeddingMatcher(stage.items, stage.vectors, loose.embedding)


def audit(engine: Engine, recipe: Recipe, run_id: str, partition_ids: list[str]) -> ContaminationAudit:
    """Audit a sample of the released records of `partition_ids` (see the module's docstring)."""
    gates, settings = recipe.gates, recipe.decontamination
    if not settings.benchmarks or not partition_ids:
        return ContaminationAudit(0, 0, 0)
    released = sa.select(records.c.record_id, records.c.conversation).where(
        records.c.partition_id.in_(partition_ids), ~dropped()
    )
    with engine.connect() as conn:
        of = conn.execute(sa.select(sa.func.count()).select_from(released.subquery())).scalar_one()
        rows = conn.execute(
            released.with_only_columns(records.c.record_id, sa.cast(records.c.conversation, sa.Text))
            .order_by(sa.func.md5(records.c.record_id), records.c.partition_id, records.c.line_no)
            .limit(gates.contamination_sample)
        ).all()
    if not rows:
        return ContaminationAudit(0, of, 0)
    index, matcher = matchers(settings, gates.contamination_audit_cosine)
    ids = [record_id for record_id, _ in rows]
    turns = [parse_turns(conversation) for _, conversation in rows]
    found = index.contaminating_many([match_text(t, settings.include_response) for t in turns])
    if settings.embedding is not None:
        instructions = [instruction_text(t) for t in turns]
        vectors = instruction_vectors(engine, matcher.settings.embedding, ids, instructions)
        for n, matches in enumerate(matcher.match_vectors(vectors, instructions)):
            found[n] = found[n] + matches
    suspects = [(ids[n], best_matches(m)[0]) for n, m in enumerate(found) if m]
    examples = [
        {"record_id": rid, "item": f"{m.benchmark}:{m.item_id}", "method": m.method.value, "score": round(m.score, 4)}
        for rid, m in suspects[:5]
    ]
    return ContaminationAudit(len(rows), of, len(suspects), examples)
