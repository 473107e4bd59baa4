"""Semantic dedup (pgvector index, pairs) and embedding decontamination, with the real MiniLM.

The index tests need pgvector: the embedded server has it; an external server named
by INFINSTRUCT_TEST_DATABASE_URL may not (the machine's PostgreSQL 15 has none), and then they skip.
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import sqlalchemy as sa

from conftest import has_pgvector
from infinstruct.curate.decontam.embedding import EmbeddingMatcher, EmbeddingMatchSettings, pair_share, word_pairs
from infinstruct.curate.decontam.ngrams import BenchmarkItem, MatchMethod, NgramIndex, best_matches
from infinstruct.curate.semantic_dedup.pairs import pairs_within, semantic_pairs
from infinstruct.ml.embeddings import EmbeddingSettings, encode
from infinstruct.store.vector_index import SCHEMA_SQL, VectorIndex, VectorIndexError

PROMPTS = {
    "r1": "Write a short poem about the ocean at night.",
    "r2": "Explain how a binary search works and give its time complexity.",
    "r3": "List three benefits of regular exercise for older adults.",
    "r4": "Translate 'good morning' into French and Spanish.",
    "r5": "What is the capital of Australia?",
    "r6": "Suggest a vegetarian recipe for a summer picnic.",
}
NEAR_R2 = "Please explain how binary search works, and give its time complexity."
NEAR_R3 = "List 3 benefits of regular exercise for older adults, briefly."
SETTINGS = EmbeddingSettings()

GSM = BenchmarkItem(
    "gsm8k_test",
    "3",
    "Josh decides to try flipping a house. He buys a house for $80,000 and then "
    "puts in $50,000 in repairs. This increased the value of the house by 150%. "
    "How much profit did he make?",
)
MT = BenchmarkItem(
    "mt_bench",
    "81#1",
    "Compose an engaging travel blog post about a recent trip to Hawaii, "
    "highlighting cultural experiences and must-see attractions.",
)
PARAPHRASED_GSM = (
    "Josh wants to flip a house. He purchases a home for $92,000 and then spends $35,000 on repairs. "
    "That raised the house's value by 120%. What was his profit?"
)
WRAPPED_MT = (
    "I need help with my homework. Compose an engaging travel blog post about a recent trip to Hawaii, "
    "highlighting cultural experiences and must-see attractions. Thanks!"
)
# GSM8K test 1309, and a paraphrase in the evidence band (cosine 0.86): its wording is the item's, its number is not
EGGS = BenchmarkItem(
    "gsm8k_test",
    "1309",
    "If there are 10 eggs in a basket, and there are twice as many eggs in a second "
    "basket, how many eggs are in both baskets put together?",
)
PARAPHRASED_EGGS = (
    "There are 12 eggs in one basket, and a second basket has twice as many eggs. How many eggs are there "
    "in both baskets put together?"
)
# GSM8K test 1317, and a GSM8K *train* question on its topic (cosine 0.90): another problem, worded otherwise
RADIATOR = BenchmarkItem(
    "gsm8k_test",
    "1317",
    "Mark's car breaks down and he needs to get a new radiator.  The cost for a "
    "new radiator is $400 but he goes to get it at a junk shop and gets it for "
    "80% off.  He then hires a mechanic to install it and it takes 3 hours at "
    "$50 an hour.  How much did he pay?",
)
RADIATOR_NEIGHBOUR = (
    "Mark needs to replace the radiator in his car.  The work takes 2 hours and the mechanic charges $75 "
    "an hour.  The part cost $150.  How much did he pay?"
)


@pytest.fixture(scope="module")
def vector_table(engine):
    """A fresh pgvector table for this module (skips where the server has no pgvector)."""
    if not has_pgvector(engine):
        pytest.skip(
            "this PostgreSQL has no pgvector extension (the embedded server has it; "
            "unset INFINSTRUCT_TEST_DATABASE_URL or install pgvector on the server)"
        )
    table = f"semantic_test_{uuid.uuid4().hex[:8]}"
    VectorIndex(engine, table=table).create()
    return table


@pytest.fixture(scope="module")
def vectors() -> dict[str, np.ndarray]:
    texts = [*PROMPTS.values(), NEAR_R2, NEAR_R3]
    encoded = encode(texts, SETTINGS)
    return dict(zip([*PROMPTS, "near_r2", "near_r3"], encoded))


def test_schema_sql_creates_the_table_and_an_hnsw_cosine_index():
    assert "create table if not exists semantic_vectors" in SCHEMA_SQL
    assert "embedding vector(384) not null" in SCHEMA_SQL
    assert "using hnsw (embedding vector_cosine_ops)" in SCHEMA_SQL


def test_table_names_must_be_plain_identifiers(engine):
    with pytest.raises(ValueError, match="identifier"):
        VectorIndex(engine, table="x; drop table records")


def test_added_vectors_are_found_again_by_their_near_copies(engine, vector_table, vectors):
    index = VectorIndex(engine, table=vector_table)
    keys = list(PROMPTS)
    assert index.add(keys, np.stack([vectors[k] for k in keys])) == len(keys)
    hits = index.neighbours(np.stack([vectors["near_r2"], vectors["near_r3"]]), k=3, min_cosine=0.0)
    best = {row: (key, cos) for row, key, cos in reversed(hits)}  # first hit per row = best
    assert best[0][0] == "r2" and best[0][1] >= 0.9
    assert best[1][0] == "r3" and best[1][1] >= 0.85
    assert [h[2] for h in hits if h[0] == 0] == sorted((h[2] for h in hits if h[0] == 0), reverse=True)
    assert index.neighbours(vectors["near_r2"][None, :], k=3, min_cosine=0.99) == []


def test_a_second_index_on_a_new_engine_sees_the_stored_vectors(database_url, vector_table, vectors):
    engine = sa.create_engine(database_url)
    try:
        index = VectorIndex(engine, table=vector_table)
        assert len(index) == len(PROMPTS)
        [(row, key, cos)] = index.neighbours(vectors["r5"][None, :], k=1)
        assert (row, key) == (0, "r5") and cos == pytest.approx(1.0, abs=1e-5)
    finally:
        engine.dispose()


def test_adding_the_same_keys_again_replaces_rows_instead_of_duplicating(engine, vector_table, vectors):
    index = VectorIndex(engine, table=vector_table)
    index.add(["r1"], vectors["r1"][None, :])
    assert len(index) == len(PROMPTS)


@pytest.mark.parametrize("adding", [3, 1], ids=["many new rows: index rebuilt", "few new rows: inserted"])
def test_a_stored_index_grows_by_rebuild_or_insert_and_finds_every_row(engine, vector_table, adding, monkeypatch):
    """StoredIndex.add into an existing table: many rows next to the stored ones rebuild the HNSW index, a few are
    inserted into it; either way every row is found, a key added again is replaced, and the index is there."""
    from infinstruct.store import vector_index
    from infinstruct.store.vector_index import REBUILD_FACTOR, StoredIndex

    rng = np.random.default_rng(adding)
    stored = adding * REBUILD_FACTOR + (REBUILD_FACTOR * 2 if adding == 1 else 0)  # rebuild iff new x factor >= stored
    unit = rng.standard_normal((stored + adding, 384)).astype(np.float32)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    keys = [f"k{i}" for i in range(stored + adding)]
    monkeypatch.setattr(vector_index, "MIRROR_MAX_ROWS", 0)  # the HNSW path, however few rows
    table = f"stored_test_{uuid.uuid4().hex[:8]}"
    builds = []
    build = StoredIndex._build_index
    monkeypatch.setattr(StoredIndex, "_build_index", lambda self, *a: builds.append(a) or build(self, *a))
    with engine.begin() as conn:
        index = StoredIndex(conn, table, "pgvector")
        index.add(keys[:stored], unit[:stored])  # a new table: bulk-loaded
        index.add(keys[stored:] + ["k0"], np.vstack([unit[stored:], -unit[:1]]))  # k0 replaced by its opposite
        assert len(index) == stored + adding
        found = index.neighbours(unit, 1, 0.99)
        assert [hits[0][0] if hits else None for hits in found] == [None, *keys[1:]]  # k0 moved away
        assert conn.execute(sa.text("select to_regclass(:i) is not null"), {"i": f"{table}_hnsw"}).scalar_one()
        assert len(builds) == (2 if adding > 1 else 1)  # the first load's build, and the rebuild
        index.reset()


def test_a_small_stored_index_is_searched_exactly_in_memory_and_indexed_once_it_grows(
    engine, vector_table, monkeypatch
):
    """Up to MIRROR_MAX_ROWS rows: no HNSW index, exact answers from a mirror of the table (read back by another
    StoredIndex on the same table); past it, the index is built and searches go through it."""
    from infinstruct.store import vector_index
    from infinstruct.store.vector_index import StoredIndex

    monkeypatch.setattr(vector_index, "MIRROR_MAX_ROWS", 10)
    rng = np.random.default_rng(7)
    unit = rng.standard_normal((14, 384)).astype(np.float32)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    keys = [f"k{i:02d}" for i in range(14)]
    table = f"mirror_test_{uuid.uuid4().hex[:8]}"

    def indexed(conn) -> bool:
        return conn.execute(sa.text("select to_regclass(:i) is not null"), {"i": f"{table}_hnsw"}).scalar_one()

    with engine.begin() as conn:
        index = StoredIndex(conn, table, "pgvector")
        index.add(keys[:6], unit[:6])
        index.add(keys[6:9], unit[6:9])
        assert not indexed(conn) and len(index) == 9
        exact = [[(keys[i], pytest.approx(1.0, abs=1e-5))] for i in range(9)]
        assert index.neighbours(unit[:9], 1, 0.5) == exact
        again = StoredIndex(conn, table, "pgvector")  # a later transaction's view: the mirror read from the table
        assert again.neighbours(unit[:9], 1, 0.5) == exact
        assert again.nearest(unit[3:4])[1] == ["k03"]
        again.remove(["k03"])
        assert again.neighbours(unit[3:4], 1, 0.9) == [[]] and len(again) == 8
        again.add(keys[9:], unit[9:])  # 13 rows: past the mirror's limit
        assert indexed(conn) and len(again) == 13
        assert [hits[0][0] for hits in again.neighbours(unit[9:], 1, 0.9)] == keys[9:]  # through HNSW now
        again.reset()


def test_wrong_vector_width_is_an_error(engine, vector_table):
    with pytest.raises(VectorIndexError, match="shape"):
        VectorIndex(engine, table=vector_table).add(["x"], np.zeros((1, 10), np.float32))


def test_semantic_pairs_within_the_batch_and_against_stored_rows(engine, vector_table, vectors):
    index = VectorIndex(engine, table=vector_table)
    batch_keys = ["n1", "n2", "n3"]
    batch = np.stack([vectors["near_r2"], vectors["near_r3"], vectors["near_r2"]])
    pairs = semantic_pairs(batch_keys, batch, index, min_cosine=0.85, k=3)
    assert pairs.within.tolist() == [[0, 2]] and pairs.within_cosine[0] == pytest.approx(1.0, abs=1e-5)
    assert sorted((row, key) for row, key, _ in pairs.across) == [(0, "r2"), (1, "r3"), (2, "r2")]


def test_pairs_within_is_exact_and_lists_each_pair_once():
    v = np.array([[1, 0], [0.96, 0.28], [0, 1], [1, 0]], dtype=np.float32)
    pairs, cos = pairs_within(v, 0.9, chunk=2)
    assert pairs.tolist() == [[0, 1], [0, 3], [1, 3]]
    np.testing.assert_allclose(cos, [0.96, 1.0, 0.96], atol=1e-6)


# --- embedding decontamination -----------------------------------------------------------------


@pytest.fixture(scope="module")
def matcher() -> EmbeddingMatcher:
    return EmbeddingMatcher.build([GSM, MT, EGGS, RADIATOR], EmbeddingMatchSettings())


def test_a_paraphrased_benchmark_item_is_flagged_with_its_cosine(matcher):
    [[match]] = matcher.match([PARAPHRASED_GSM])
    assert (match.benchmark, match.item_id, match.method) == ("gsm8k_test", "3", MatchMethod.EMBEDDING)
    assert match.score >= matcher.settings.threshold


def test_a_wrapped_item_is_flagged_and_an_unrelated_prompt_is_not(matcher):
    wrapped, unrelated = matcher.match([WRAPPED_MT, "Suggest a vegetarian recipe for a summer picnic."])
    assert [(m.benchmark, m.item_id) for m in wrapped] == [("mt_bench", "81#1")]
    assert unrelated == []


def test_paraphrase_escapes_ngrams_but_not_embeddings_and_the_results_merge(matcher):
    ngram = NgramIndex.build([GSM, MT, EGGS, RADIATOR]).contaminating(PARAPHRASED_GSM)
    [embedding] = matcher.match([PARAPHRASED_GSM])
    assert ngram == []
    assert [m.method for m in best_matches(ngram, embedding)] == [MatchMethod.EMBEDDING]


def test_verbatim_items_match_themselves_at_cosine_one(matcher):
    found = matcher.match([item.text for item in matcher.items])
    assert [[(m.benchmark, m.item_id) for m in ms][:1] for ms in found] == [
        [(i.benchmark, i.item_id)] for i in matcher.items
    ]
    assert all(ms[0].score == pytest.approx(1.0, abs=1e-5) and ms[0].score <= 1.0 for ms in found)


def test_a_paraphrase_under_the_cosine_threshold_is_caught_by_the_items_wording(matcher):
    s = matcher.settings
    assert NgramIndex.build([EGGS]).contaminating(PARAPHRASED_EGGS) == []  # n-grams miss it
    assert pair_share(word_pairs(EGGS.text), word_pairs(PARAPHRASED_EGGS)) >= s.min_pair_share
    [[match]] = matcher.match([PARAPHRASED_EGGS])
    assert (match.benchmark, match.item_id, match.method) == ("gsm8k_test", "1309", MatchMethod.EMBEDDING)
    assert s.evidence_threshold <= match.score < s.threshold  # the evidence band: score = cosine


def test_a_different_problem_on_an_items_topic_is_kept(matcher):
    # cosine alone at the old 0.80 called it contaminated; it shares few of the item's word pairs
    cosine_only = EmbeddingMatcher(
        matcher.items, matcher.vectors, EmbeddingMatchSettings(threshold=0.8, evidence_threshold=None)
    )
    [[match]] = cosine_only.match([RADIATOR_NEIGHBOUR])
    assert match.item_id == "1317" and match.score < matcher.settings.threshold
    assert pair_share(word_pairs(RADIATOR.text), word_pairs(RADIATOR_NEIGHBOUR)) < matcher.settings.min_pair_share
    assert matcher.match([RADIATOR_NEIGHBOUR]) == [[]]


def test_match_vectors_gives_what_match_gives_for_embedded_texts(matcher):
    texts = [
        PARAPHRASED_GSM,
        WRAPPED_MT,
        PARAPHRASED_EGGS,
        RADIATOR_NEIGHBOUR,
        "Suggest a vegetarian recipe for a picnic.",
    ]
    assert matcher.match_vectors(encode(texts, matcher.settings.embedding), texts) == matcher.match(texts)
    assert matcher.match_vectors(np.empty((0, 384), np.float32), []) == []
    with pytest.raises(ValueError, match="2 vectors for 1 texts"):
        matcher.match_vectors(encode(texts[:2], matcher.settings.embedding), texts[:1])


def test_without_an_evidence_band_the_cosine_alone_decides(matcher):
    one_tier = EmbeddingMatcher(matcher.items, matcher.vectors, EmbeddingMatchSettings(evidence_threshold=None))
    assert one_tier.match([PARAPHRASED_EGGS]) == [[]]  # under 0.90
    assert [m.item_id for m in one_tier.match([PARAPHRASED_GSM])[0]] == ["3"]  # over it


def test_word_pairs_read_numbers_and_defined_names_as_the_ngram_matcher_does():
    assert word_pairs("He paid $80,000, then 5%.") == {
        ("he", "paid"),
        ("paid", "0"),
        ("0", "0"),
        ("0", "then"),
        ("then", "0"),
    }
    renamed = "def helper(values):\n    return sorted(values)"
    assert word_pairs(renamed) == word_pairs("def sort_list(items):\n    return sorted(items)")
    assert pair_share(frozenset(), word_pairs(renamed)) == 0.0
