"""Diversity: DEITA greedy selection against the already selected set, and the NN-cosine report.

The selected set of a nightly run is the stored selection (`vector_index.StoredIndex`: a pgvector HNSW table,
or exact in memory) layered under this run's acceptances (`LayeredIndex`); the pgvector tests skip where
the server has no pgvector (the embedded server has it).
"""

from __future__ import annotations

import math
import uuid

import numpy as np
import pytest
import sqlalchemy as sa

from infinstruct.curate.selection.diversity import (
    Decision,
    ExactIndex,
    LayeredIndex,
    Outcome,
    diversity_report,
    greedy_select,
    nearest_neighbour_cosines,
    sample_positions,
    walk_order,
)
from infinstruct.ml.embeddings import encode
from infinstruct.store.vector_index import StoredIndex


def unit(degrees: float) -> list[float]:
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]


def test_the_walk_accepts_by_score_unless_too_similar_until_the_quota_is_full():
    ids = ["a", "b", "c", "d", "e"]
    scores = [0.9, 0.8, 0.7, 0.6, 0.5]
    vectors = np.array([unit(0), unit(10), unit(90), unit(45), unit(180)], dtype=np.float32)
    result = greedy_select(ids, scores, vectors, threshold=0.9, quota=3)
    decisions = list(result.decisions())
    assert [(d.record_id, d.outcome, d.rank, d.similar_to) for d in decisions] == [
        ("a", Outcome.SELECTED, 1, None),  # nothing selected yet: nothing to compare
        ("b", Outcome.TOO_SIMILAR, 2, "a"),  # 10° from a
        ("c", Outcome.SELECTED, 3, "a"),
        ("d", Outcome.SELECTED, 4, "a"),  # 45° from both a and c: below 0.9, tie goes to a
        ("e", Outcome.QUOTA_FULL, 5, None),
    ]
    assert decisions[1].max_cosine == pytest.approx(math.cos(math.radians(10)), abs=1e-6)
    assert decisions[3].max_cosine == pytest.approx(math.cos(math.radians(45)), abs=1e-6)
    assert decisions[0].max_cosine is None and decisions[4].max_cosine is None
    assert result.selected == ["a", "c", "d"]
    assert result.counts() == {"selected": 3, "too_similar": 1, "quota_full": 1}


def test_equal_scores_are_walked_by_id():
    assert walk_order(["b", "a", "c", "d"], [1.0, 1.0, 2.0, 0.5]).tolist() == [2, 1, 0, 3]
    vectors = np.array([unit(0), unit(1)], dtype=np.float32)
    assert greedy_select(["z", "y"], [0.5, 0.5], vectors, 0.9, 10).selected == ["y"]


def test_candidates_must_also_differ_from_the_records_selected_before():
    before = ExactIndex(2, ["old1", "old2"], np.array([unit(0), unit(90)], dtype=np.float32))
    vectors = np.array([unit(5), unit(45), unit(200)], dtype=np.float32)
    result = greedy_select(["n1", "n2", "n3"], [3, 2, 1], vectors, 0.9, 10, existing=before)
    assert [(d.record_id, d.outcome, d.similar_to) for d in result.decisions()] == [
        ("n1", Outcome.TOO_SIMILAR, "old1"),
        ("n2", Outcome.SELECTED, "old1"),
        ("n3", Outcome.SELECTED, "old2"),
    ]
    assert len(before) == 4  # the index now holds this run's selection too: the next run continues from it


def sequential_reference(ids, scores, vectors, threshold, quota):
    """The definition, written plainly: one candidate at a time against everything selected."""
    order = sorted(range(len(ids)), key=lambda i: (-scores[i], ids[i]))
    selected, out = [], []
    for i in order:
        if len(selected) == quota:
            out.append((ids[i], "quota_full", None))
            continue
        sims = [float(vectors[i] @ vectors[j]) for j in selected]
        best = max(sims, default=-math.inf)
        if best < threshold:
            selected.append(i)
            out.append((ids[i], "selected", ids[selected[int(np.argmax(sims))]] if sims else None))
        else:
            out.append((ids[i], "too_similar", ids[selected[int(np.argmax(sims))]]))
    return out


@pytest.mark.parametrize("batch_size", [1, 7, 256, 5000])
def test_batched_walk_equals_the_one_at_a_time_definition(batch_size):
    rng = np.random.default_rng(42)
    centres = rng.standard_normal((25, 48))
    vectors = centres[rng.integers(0, 25, 800)] + 0.6 * rng.standard_normal((800, 48))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    ids = [f"r{i:04d}" for i in rng.permutation(800)]
    scores = np.round(rng.random(800), 2)  # many ties
    result = greedy_select(ids, scores, vectors, threshold=0.75, quota=120, batch_size=batch_size)
    got = [(d.record_id, d.outcome.value, d.similar_to) for d in result.decisions()]
    assert got == sequential_reference(ids, scores, vectors, 0.75, 120)
    counts = result.counts()
    assert counts["selected"] == 120 and counts["too_similar"] > 0 and counts["quota_full"] > 0


def test_a_quota_of_zero_selects_nothing_and_a_large_quota_stops_at_the_candidates():
    vectors = np.array([unit(0), unit(90), unit(180)], dtype=np.float32)
    assert greedy_select(["a", "b", "c"], [1, 2, 3], vectors, 0.5, 0).counts() == {
        "selected": 0,
        "too_similar": 0,
        "quota_full": 3,
    }
    assert greedy_select(["a", "b", "c"], [1, 2, 3], vectors, 0.5, 100).selected == ["c", "b", "a"]
    empty = greedy_select([], [], np.empty((0, 2), dtype=np.float32), 0.5, 10)
    assert empty.selected == [] and list(empty.decisions()) == []


def test_bad_input_is_refused():
    vectors = np.array([unit(0), unit(90)], dtype=np.float32)
    with pytest.raises(ValueError, match="must match"):
        greedy_select(["a", "b"], [1.0], vectors, 0.5, 1)
    with pytest.raises(ValueError, match="unique"):
        greedy_select(["a", "a"], [1.0, 2.0], vectors, 0.5, 1)


def test_nearest_neighbour_cosines_and_the_report():
    vectors = np.array([unit(0), unit(10), unit(90), unit(180)], dtype=np.float32)
    nn = nearest_neighbour_cosines(vectors, block=3)
    expected = [math.cos(math.radians(10)), math.cos(math.radians(10)), math.cos(math.radians(80)), 0.0]
    np.testing.assert_allclose(nn, expected, atol=1e-6)
    report = diversity_report(vectors)
    assert report["n"] == 4 and report["mean_nn_cosine"] == pytest.approx(np.mean(expected), abs=1e-4)
    assert report["p95_nn_cosine"] == pytest.approx(np.percentile(expected, 95), abs=1e-4)
    assert np.isnan(nearest_neighbour_cosines(vectors[:1])).all()
    assert math.isnan(diversity_report(vectors[:1])["mean_nn_cosine"])
    assert "sampled" not in report


def test_a_large_set_is_reported_over_a_seeded_sample_which_says_so():
    picks = sample_positions(10_000, 500, seed=3)
    assert len(picks) == 500 == len(set(picks.tolist())) and (np.diff(picks) > 0).all()
    assert picks.tolist() == sample_positions(10_000, 500, seed=3).tolist()  # the same seed, the same sample
    assert sample_positions(20, 500).tolist() == list(range(20))  # small sets whole
    vectors = clustered(10_000, seed=1)
    report = diversity_report(vectors[picks], of=10_000)
    assert report["n"] == 10_000 and report["sampled"] == 500
    assert 0 < report["mean_nn_cosine"] <= report["p95_nn_cosine"] < 1


PARAPHRASED = [  # (prompt, a rewording of it)
    ("Explain how a binary search works.", "Can you explain how binary search works?"),
    ("Write a short poem about the ocean at night.", "Write a brief poem about the sea at night."),
    ("What are the health benefits of green tea?", "What health benefits does green tea have?"),
    ("Give me tips for a job interview.", "Give me some tips for my job interview."),
    ("How do I make a sourdough starter?", "How can I make a sourdough starter at home?"),
    ("Summarize the causes of World War I.", "Summarise what caused World War I."),
]


def test_on_minilm_vectors_one_prompt_of_each_paraphrase_pair_is_kept():
    texts = [p for pair in PARAPHRASED for p in pair]
    ids = [f"p{i:02d}" for i in range(len(texts))]
    vectors = encode(texts)
    result = greedy_select(ids, [1.0] * len(ids), vectors, threshold=0.85, quota=len(ids))
    assert result.selected == ids[::2]  # ties walk by id: the first of each pair
    assert all(
        d.similar_to == ids[int(d.record_id[1:]) - 1] for d in result.decisions() if d.outcome is Outcome.TOO_SIMILAR
    )
    chosen = [int(i[1:]) for i in result.selected]
    assert diversity_report(vectors[chosen])["mean_nn_cosine"] < diversity_report(vectors)["mean_nn_cosine"] - 0.3


def test_decisions_are_plain_values_for_the_ledger():
    vectors = np.array([unit(0), unit(3)], dtype=np.float32)
    d = list(greedy_select(["a", "b"], [2, 1], vectors, 0.9, 5).decisions())[1]
    assert isinstance(d, Decision) and d.outcome.value == "too_similar" and isinstance(d.max_cosine, float)


def clustered(n: int, seed: int, dim: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((40, dim))[rng.integers(0, 40, n)] + 0.7 * rng.standard_normal((n, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def test_the_stored_selection_under_this_runs_acceptances_decides_as_one_exact_index():
    vectors = clustered(900, seed=5)
    ids = [f"r{i:04d}" for i in range(900)]
    kept, candidates = slice(0, 100), slice(100, 900)
    scores = np.round(np.random.default_rng(6).random(800), 2)
    one = ExactIndex(32, ids[kept], vectors[kept])
    layered = LayeredIndex(ExactIndex(32, ids[kept], vectors[kept]), 32)
    expected = greedy_select(ids[candidates], scores, vectors[candidates], 0.7, 150, existing=one)
    got = greedy_select(ids[candidates], scores, vectors[candidates], 0.7, 150, existing=layered)
    assert list(got.decisions()) == list(expected.decisions())
    assert any(d.similar_to in ids[kept] for d in got.decisions() if d.outcome is Outcome.TOO_SIMILAR)
    assert layered.accepted.ids == got.selected and len(layered.before) == 100  # the stored part is left as it was


def test_the_stored_selection_outlives_the_run_and_forgets_the_records_let_go(engine, index):
    kind = index
    table = f"test_selected_{uuid.uuid4().hex[:8]}"
    old = np.array([unit(0), unit(60), unit(120)], dtype=np.float32)
    with engine.begin() as conn:  # the first run selects three records
        index = StoredIndex(conn, table, kind)
        index.add(["a", "b", "c"], old)
    with engine.begin() as conn:  # the next run: "b" was let go
        index = StoredIndex(conn, table, kind)
        if kind == "exact":  # exact: the caller hands over the kept records' vectors
            index.load(["a", "b", "c"], old)
        assert len(index) == 3
        index.remove(["b"])
        assert len(index) == 2
        near_a, near_b = unit(3), unit(58)
        walked = LayeredIndex(index, 2)
        result = greedy_select(
            ["x", "y"], [2, 1], np.array([near_a, near_b], dtype=np.float32), 0.95, 5, existing=walked
        )
        assert [(d.record_id, d.outcome, d.similar_to) for d in result.decisions()] == [
            ("x", Outcome.TOO_SIMILAR, "a"),  # searched against the stored selection
            ("y", Outcome.SELECTED, "a"),
        ]  # b (2 deg away) was let go: never matched
        assert len(index) == 2  # this run's acceptances stay in memory until written
        index.add(["y"], walked.accepted.vectors)
    with engine.begin() as conn:
        stored = StoredIndex(conn, table, kind)
        if kind == "pgvector":  # the table persists: a, c and y, not b
            assert sorted(conn.execute(sa.text(f"select record_key from {table}")).scalars()) == ["a", "c", "y"]
            best, best_id = stored.nearest(np.array([unit(59), unit(119)], dtype=np.float32))
            assert best_id == ["y", "c"] and best == pytest.approx([math.cos(math.radians(1))] * 2, abs=1e-5)
            stored.reset()
        else:  # exact: nothing outlives the transaction
            assert len(stored) == 0 and stored.nearest(np.array([unit(0)], dtype=np.float32))[1] == [None]
    with engine.connect() as conn:
        assert conn.execute(sa.text("select to_regclass(:t)"), {"t": table}).scalar() is None
