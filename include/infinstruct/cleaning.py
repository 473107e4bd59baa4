"""Phase 1 cleaning stages over one partition: rule filters (with language id) and decontamination.

Each stage streams the partition's records, decides, and replaces its own decisions for the partition
in one transaction (`decisions`, stage `rules` or `decontam`), so re-running it is always safe.
Measurements are cached per record id in `record_stats`: a threshold change in the recipe re-judges
without re-measuring, and the same conversation in another file is measured once.

Decontamination matches every record's text against the benchmark items by word n-grams, and the
instruction of every record still standing by MiniLM cosine (`semantic.EmbeddingMatcher`: cosine ≥ 0.90, or
≥ 0.70 with the item's wording; on unless the recipe says `embedding: null`); instruction vectors are cached per record id (`embedding_cache`),
so a record is encoded once whatever file, run or stage it comes back in.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections import Counter
from collections.abc import Iterator

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from . import rules
from .config import DecontamSettings, Recipe
from .conversation import ASSISTANT, USER
from .decontam import Match, NgramIndex, best_matches, iter_items
from .embedding_cache import instruction_text, instruction_vectors
from .pgcopy import Copier, CopyTable, json_field
from .reasons import Stage, Verdict, contamination_reason
from .semantic import EmbeddingMatcher
from .stages import complete, completed, fingerprint, replace_decisions, stream

log = logging.getLogger(__name__)

BATCH = 2_000
# stages before decontamination: a record they dropped is out of the release, so it is not worth embedding
EARLIER_STAGES = [Stage.RULES.value]


def _records(conn: Connection, partition_id: str, with_stats: bool = False) -> Iterator[list]:
    """The partition's records in batches: (line_no, record_id, turns[, stats, stats version])."""
    # JSON as text, parsed by orjson: psycopg2's json.loads was a quarter of the reading
    stats = ", s.stats::text, s.version" if with_stats else ""
    join = " left join record_stats s on s.record_id = r.record_id" if with_stats else ""
    result = conn.execute(sa.text(
        f"select r.line_no, r.record_id, r.conversation::text{stats} from records r{join}"
        " where r.partition_id = :p order by r.line_no"), {"p": partition_id}, execution_options=stream(BATCH))
    for rows in result.partitions(BATCH):  # the size given here: yield_per alone does not batch a text() query
        if with_stats:
            yield [(line_no, record_id, _turns(conversation), None if stats is None else orjson.loads(stats), version)
                   for line_no, record_id, conversation, stats, version in rows]
        else:
            yield [(line_no, record_id, _turns(conversation)) for line_no, record_id, conversation in rows]


def _turns(conversation: str) -> tuple[tuple[str, str], ...]:
    return tuple((turn["role"], turn["content"]) for turn in orjson.loads(conversation))


def _save_stats(engine: Engine, fresh: dict[str, dict]) -> None:
    """Store measurements (facts about content, not decisions of this partition: committed as they come).
    COPY into a temporary table, then one upsert: a row-by-row executemany took 40% of the stage."""
    if not fresh:
        return
    with engine.begin() as conn:
        conn.execute(sa.text("create temp table new_stats (record_id text, version int, stats jsonb) on commit drop"))
        copier = Copier(conn.connection.dbapi_connection.cursor())
        table = CopyTable(copier, "new_stats", ("record_id", "version", "stats"), len(fresh))
        version = b"%d" % rules.STATS_VERSION
        try:
            for record_id, stats in fresh.items():
                table.add(record_id.encode(), version, json_field(orjson.dumps(stats)))
            table.flush()
        finally:
            copier.close()
        conn.execute(sa.text(
            # in record-id order: parallel partitions sharing records then lock them in the same order (no deadlock)
            "insert into record_stats (record_id, version, stats) select record_id, version, stats from new_stats"
            " order by record_id on conflict (record_id) do update set version = excluded.version, stats = excluded.stats, measured_at = now()"))


def apply_rules(engine: Engine, recipe: Recipe, run_id: str, partition_id: str) -> dict[str, int]:
    """Measure (or reuse measurements of) every record and drop those the recipe's rules fail."""
    with engine.connect() as conn:
        print_ = fingerprint(conn, partition_id, recipe.rules, rules.STATS_VERSION)
        done = completed(conn, partition_id, Stage.RULES, print_)
    if done is not None:
        log.info("rules on %s: unchanged input and settings, skipped", partition_id)
        return {**done, "skipped": True}
    drops: list[dict] = []
    reasons: Counter[str] = Counter()
    measured = 0
    with engine.connect() as reader:
        for batch in _records(reader, partition_id, with_stats=True):
            fresh: dict[str, dict] = {}
            for line_no, record_id, turns, stats, version in batch:
                if stats is None or version != rules.STATS_VERSION:
                    stats = fresh.get(record_id) or rules.measure(turns)
                    fresh[record_id] = stats
                verdict = rules.judge(stats, recipe.rules)
                if not verdict.keep:
                    reasons[verdict.rule.code] += 1
                    numeric = isinstance(verdict.value, (int, float))
                    drops.append({"partition_id": partition_id, "line_no": line_no, "stage": Stage.RULES.value,
                                  "verdict": Verdict.DROPPED.value, "reason": verdict.rule.code,
                                  "score": verdict.value if numeric else None,
                                  "detail": None if numeric else str(verdict.value), "duplicate_of": None,
                                  "run_id": run_id})
            _save_stats(engine, fresh)
            measured += len(fresh)
    result = {"partition_id": partition_id, "measured": measured, "dropped": len(drops), **reasons}
    with engine.begin() as conn:
        replace_decisions(conn, partition_id, Stage.RULES, drops)
        complete(conn, partition_id, Stage.RULES, print_, run_id, result)
    log.info("rules on %s: %d measured, dropped %s", partition_id, measured, dict(reasons))
    return {**result, "skipped": False}


@functools.lru_cache(maxsize=4)
def _benchmark_index(settings_json: str, digests: tuple[str, ...]) -> NgramIndex:
    settings = DecontamSettings.model_validate_json(settings_json)
    return NgramIndex.from_specs(settings.benchmarks, settings.ngram)


def benchmark_index(settings: DecontamSettings) -> NgramIndex:
    """The n-gram index of the recipe's benchmarks, built once per process (per version of their files)."""
    return _benchmark_index(settings.model_dump_json(), benchmark_digests(settings))


@functools.lru_cache(maxsize=2)   # holds every item's vector: a few MB per recipe
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
    return tuple(_file_digest(b.path) for b in settings.benchmarks)


def match_text(turns: tuple, include_response: bool) -> str:
    """What the n-gram matcher compares with the benchmarks: the user turns, and the responses when asked."""
    roles = (USER, ASSISTANT) if include_response else (USER,)
    return "\n".join(content for role, content in turns if role in roles)


def _dropped_earlier(conn: Connection, partition_id: str) -> list[int]:
    """Lines of the partition that a stage before decontamination dropped (they are out of the release)."""
    return conn.execute(sa.text(
        "select line_no from decisions where partition_id = :p and verdict = :v and stage = any(:earlier)"
        " order by line_no"), {"p": partition_id, "v": Verdict.DROPPED.value, "earlier": EARLIER_STAGES}).scalars().all()


def _batch_matches(engine: Engine, batch: list, settings: DecontamSettings, index: NgramIndex,
                   matcher: EmbeddingMatcher | None, skip_embedding: set[int]) -> dict[int, list[Match]]:
    """Every contaminating match of every matcher, per line of the batch (lines without any left out).

    N-grams look at every record (cheap); embeddings only at records still standing (MiniLM is the
    expensive part), by their instruction's vector from the embedding cache."""
    found = dict(zip((line_no for line_no, _, _ in batch),
                     index.contaminating_many([match_text(turns, settings.include_response) for _, _, turns in batch])))
    todo = [(line_no, record_id, turns) for line_no, record_id, turns in batch if line_no not in skip_embedding]
    if matcher is not None and todo:
        texts = [instruction_text(turns) for _, _, turns in todo]
        record_ids = [record_id for _, record_id, _ in todo]
        vectors = instruction_vectors(engine, matcher.settings.embedding, record_ids, texts)
        for (line_no, _, _), matches in zip(todo, matcher.match_vectors(vectors, texts)):
            found[line_no] = found[line_no] + matches
    return {line_no: matches for line_no, matches in found.items() if matches}


def decontaminate(engine: Engine, recipe: Recipe, run_id: str, partition_id: str) -> dict[str, int]:
    """Drop records that contain a benchmark item (n-grams, and the instruction's embedding cosine);
    record every match in the contamination audit."""
    settings = recipe.decontamination
    embedding_on = bool(settings.benchmarks) and settings.embedding is not None
    with engine.connect() as conn:
        skip_embedding = _dropped_earlier(conn, partition_id) if embedding_on else []
        # benchmark files are part of the input: a changed benchmark re-checks every partition; so are the
        # earlier drops when they decide what gets embedded (a record a new rule threshold keeps is checked)
        print_ = fingerprint(conn, partition_id, settings, list(benchmark_digests(settings)), skip_embedding)
        done = completed(conn, partition_id, Stage.DECONTAM, print_)
    if done is not None:
        log.info("decontamination of %s: unchanged input, settings and benchmarks, skipped", partition_id)
        return {**done, "skipped": True}
    drops: list[dict] = []
    audit: list[dict] = []
    reasons: Counter[str] = Counter()
    checked = 0
    if settings.benchmarks:
        index = benchmark_index(settings)
        matcher = embedding_matcher(settings) if embedding_on else None
        skip = set(skip_embedding)
        with engine.connect() as reader:
            for batch in _records(reader, partition_id):
                if matcher is not None:
                    checked += sum(1 for line_no, _, _ in batch if line_no not in skip)
                for line_no, matches in _batch_matches(engine, batch, settings, index, matcher, skip).items():
                    best = best_matches(matches)[0]
                    reason = contamination_reason(best.benchmark)
                    reasons[reason] += 1
                    drops.append({"partition_id": partition_id, "line_no": line_no, "stage": Stage.DECONTAM.value,
                                  "verdict": Verdict.DROPPED.value, "reason": reason, "score": best.score,
                                  "detail": f"{best.method.value} match", "duplicate_of": f"{best.benchmark}:{best.item_id}",
                                  "run_id": run_id})
                    # the evidence of both matchers: an item found by n-grams and by embedding has two rows
                    audit += [{"p": partition_id, "l": line_no, "b": m.benchmark, "i": m.item_id, "m": m.method.value,
                               "s": m.score, "r": run_id} for m in matches]
    result = {"partition_id": partition_id, "dropped": len(drops), "embedding_checked": checked, **reasons}
    with engine.begin() as conn:
        conn.execute(sa.text("delete from contamination where partition_id = :p"), {"p": partition_id})
        if audit:
            conn.execute(sa.text(
                "insert into contamination (partition_id, line_no, benchmark, item_id, method, score, run_id)"
                " values (:p, :l, :b, :i, :m, :s, :r)"), audit)
        replace_decisions(conn, partition_id, Stage.DECONTAM, drops)
        complete(conn, partition_id, Stage.DECONTAM, print_, run_id, result)
    log.info("decontamination of %s: %d records compared by embedding, dropped %s", partition_id, checked, dict(reasons))
    return {**result, "skipped": False}


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
