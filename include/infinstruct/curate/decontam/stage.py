"""The decontamination stage over one partition: drop records that contain a benchmark item.

Every record's text is matched against the benchmark items by word n-grams (`ngrams.NgramIndex`), and
the instruction of every record still standing by MiniLM cosine (`embedding.EmbeddingMatcher`: cosine
≥ 0.90, or ≥ 0.70 with the item's wording; on unless the recipe says `embedding: null`). Instruction
vectors are cached per record id (`embedding_cache`), so a record is encoded once whatever file, run or
stage it comes back in. Every match goes to the `contamination` audit table.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from infinstruct.config import DecontamSettings, Recipe
from infinstruct.contract import Decision, Outcome, PartitionStage, StageResult
from infinstruct.curate.decontam.embedding import EmbeddingMatcher
from infinstruct.curate.decontam.ngrams import BenchmarkError, Match, NgramIndex, best_matches, iter_items
from infinstruct.errors import permanent_os_error
from infinstruct.record.conversation import ASSISTANT, USER, instruction_text
from infinstruct.record.reasons import Stage, Verdict, contamination_reason
from infinstruct.stages import decided_before
from infinstruct.store.embedding_cache import instruction_vectors
from infinstruct.store.records import partition_records

log = logging.getLogger(__name__)

# stages before decontamination: a record they dropped is out of the release, so it is not worth embedding


@functools.lru_cache(maxsize=4)
def _benchmark_index(settings_json: str, digests: tuple[str, ...]) -> NgramIndex:
    settings = DecontamSettings.model_validate_json(settings_json)
    return NgramIndex.from_specs(settings.benchmarks, settings.ngram)


def benchmark_index(settings: DecontamSettings) -> NgramIndex:
    """The n-gram index of the recipe's benchmarks, built once per process (per version of their files)."""
    return _benchmark_index(settings.model_dump_json(), benchmark_digests(settings))


@functools.lru_cache(maxsize=2)  # holds every item's vector: a few MB per recipe
def _embedding_matcher(settings_json: str, digests: tuple[str, ...]) -> EmbeddingMatcher:
    settings = DecontamSettings.model_validate_json(settings_json)
    items = [item for spec in settings.benchmarks for item in iter_items(spec)]
    return EmbeddingMatcher.build(items, settings.embedding)


def embedding_matcher(settings: DecontamSettings) -> EmbeddingMatcher:
    """The recipe's benchmark items embedded, once per process (per version of their files)."""
    if settings.embedding is None:
        raise ValueError("the recipe turns embedding decontamination off (decontamination.embedding: null)")
    # keyed by what the matcher depends on only: an n-gram setting change does not re-embed the items
    key = DecontamSettings(benchmarks=settings.benchmarks, embedding=settings.embedding)
    return _embedding_matcher(key.model_dump_json(), benchmark_digests(settings))


def benchmark_digests(settings: DecontamSettings) -> tuple[str, ...]:
    """sha256 of every benchmark file: a changed benchmark is new input for the stage and its caches."""
    digests = []
    for benchmark in settings.benchmarks:
        try:
            digests.append(_file_digest(benchmark.path))
        except OSError as exc:  # gone or unreadable since the run started: a retry finds it the same
            if not permanent_os_error(exc):
                raise
            raise BenchmarkError(
                f"benchmark {benchmark.name!r}: cannot read {benchmark.path!r}: {exc.strerror}"
            ) from None
    return tuple(digests)


def match_text(turns: tuple, include_response: bool) -> str:
    """What the n-gram matcher compares with the benchmarks: the user turns, and the responses when asked."""
    roles = (USER, ASSISTANT) if include_response else (USER,)
    return "\n".join(content for role, content in turns if role in roles)


def _dropped_earlier(conn: Connection, partition_id: str) -> list[int]:
    """Lines of the partition that a stage before decontamination dropped (they are out of the release)."""
    return (
        conn.execute(
            sa.text(
                "select line_no from decisions where partition_id = :p and verdict = :v and stage = any(:earlier)"
                " order by line_no"
            ),
            {"p": partition_id, "v": Verdict.DROPPED.value, "earlier": decided_before(Stage.DECONTAM)},
        )
        .scalars()
        .all()
    )


def _batch_matches(
    engine: Engine, batch: list, settings: DecontamSettings, index: NgramIndex, matcher: EmbeddingMatcher | None
) -> dict[int, list[Match]]:
    """Every contaminating match of every matcher, per line of the batch (lines without any left out):
    n-grams over the text, embeddings by the instruction's vector from the embedding cache."""
    found = dict(
        zip(
            (line_no for line_no, _, _ in batch),
            index.contaminating_many([match_text(turns, settings.include_response) for _, _, turns in batch]),
        )
    )
    if matcher is not None and batch:
        texts = [instruction_text(turns) for _, _, turns in batch]
        record_ids = [record_id for _, record_id, _ in batch]
        vectors = instruction_vectors(engine, matcher.settings.embedding, record_ids, texts)
        for (line_no, _, _), matches in zip(batch, matcher.match_vectors(vectors, texts)):
            found[line_no] = found[line_no] + matches
    return {line_no: matches for line_no, matches in found.items() if matches}


class DecontamStage(PartitionStage):
    """Drop records that contain a benchmark item (n-grams, and the instruction's embedding cosine); record
    every match in the contamination audit."""

    ledger = Stage.DECONTAM

    def inputs(self, conn: Connection) -> list:
        settings = self.recipe.decontamination
        # a line an earlier stage dropped is out of the release: it is not decided again (the ledger, the
        # funnel and the contamination audit count each line once)
        self.skip = set(_dropped_earlier(conn, self.partition_id))
        # benchmark files are part of the input: a changed benchmark re-checks every partition; so are the
        # earlier drops (a record a new rule threshold keeps is checked)
        return [settings, list(benchmark_digests(settings)), sorted(self.skip)]

    def decide(self) -> Outcome:
        settings = self.recipe.decontamination
        outcome = Outcome(numbers={"embedding_checked": 0})
        self.audit: list[dict] = []
        if not settings.benchmarks:
            return outcome
        index = benchmark_index(settings)
        matcher = embedding_matcher(settings) if settings.embedding is not None else None
        with self.engine.connect() as reader:
            for batch in partition_records(reader, self.partition_id):
                batch = [row for row in batch if row[0] not in self.skip]
                outcome.decided += len(batch)
                outcome.numbers["embedding_checked"] += len(batch) if matcher is not None else 0
                for line_no, matches in _batch_matches(self.engine, batch, settings, index, matcher).items():
                    best = best_matches(matches)[0]
                    outcome.decisions.append(
                        Decision(
                            self.partition_id,
                            line_no,
                            contamination_reason(best.benchmark),
                            score=best.score,
                            detail=f"{best.method.value} match",
                            duplicate_of=f"{best.benchmark}:{best.item_id}",
                        )
                    )
                    # the evidence of both matchers: an item found by n-grams and by embedding has two rows
                    self.audit += [
                        {
                            "p": self.partition_id,
                            "l": line_no,
                            "b": m.benchmark,
                            "i": m.item_id,
                            "m": m.method.value,
                            "s": m.score,
                            "r": self.run_id,
                        }
                        for m in matches
                    ]
        return outcome

    def write(self, conn: Connection, outcome: Outcome) -> None:
        conn.execute(sa.text("delete from contamination where partition_id = :p"), {"p": self.partition_id})
        if self.audit:
            conn.execute(
                sa.text(
                    "insert into contamination (partition_id, line_no, benchmark, item_id, method, score, run_id)"
                    " values (:p, :l, :b, :i, :m, :s, :r)"
                ),
                self.audit,
            )


def decontaminate(engine: Engine, recipe: Recipe, run_id: str, partition_id: str) -> StageResult:
    result = DecontamStage(engine, recipe, run_id, partition_id).run()
    log.info(
        "decontamination of %s: %s",
        partition_id,
        "unchanged input, settings and benchmarks, skipped"
        if result.skipped
        else f"{result.decided} records checked, dropped {result.by_reason}",
    )
    return result


def _file_digest(path: str) -> str:
    stat = os.stat(path)
    return _digest_of(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _digest_of(path: str, mtime_ns: int, size: int) -> str:  # cached per version of the file
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
