"""DSIR: hashed n-gram features, importance weights, Gumbel-top-k resampling, KL shift."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from conftest import SHARED_DATA
from infinstruct.curate.selection.dsir import (
    DsirSettings,
    HashedNgrams,
    ImportanceModel,
    distribution,
    kl_divergence,
    resample,
)

TARGET = [  # word problems
    "Tom buys 3 apples for 2 dollars each. How much does he pay in total?",
    "A train travels 60 miles per hour for 3 hours. How many miles does it travel?",
    "Mia has 12 pencils and gives away 5. How many pencils does she have left?",
    "A box holds 24 eggs. How many eggs are in 6 boxes?",
]
RAW = [
    "Write a poem about the ocean at night.",
    "Explain the causes of the French Revolution.",
    "Write a Python function that reverses a string.",
    "Sam has 8 marbles and buys 7 more. How many marbles does he have now?",
    "Suggest a name for a coffee shop.",
    "What is the capital of Australia?",
    "A farmer plants 4 rows of 9 trees. How many trees does he plant?",
    "Describe your favourite holiday.",
]
MATHY = {3, 6}


def test_words_are_lower_cased_letter_digit_runs_and_cjk_characters():
    ngrams = HashedNgrams()
    assert ngrams.words("Hello, World! snake_case 3.14") == [b"hello", b"world", b"snake", b"case", b"3", b"14"]
    assert ngrams.words("Café au lait? 你好吗") == ["café".encode(), b"au", b"lait"] + [c.encode() for c in "你好吗"]


def test_a_text_has_its_unigrams_and_bigrams_and_bigrams_never_cross_texts():
    docs, buckets = HashedNgrams().features(["a b c", "d e"])
    assert docs.tolist() == [0, 0, 0, 1, 1, 0, 0, 1]  # 5 unigrams, then bigrams ab bc | de
    assert ((0 <= buckets) & (buckets < 10_000)).all()
    assert HashedNgrams().features([""])[0].size == 0


def test_buckets_are_fixed_by_the_seed_not_by_the_process():
    # pinned: stored counts (ImportanceModel.from_counts) stay valid only while these do not move
    assert HashedNgrams().features(["hello world"])[1].tolist() == [8525, 4781, 8811]
    assert HashedNgrams(DsirSettings(seed=1)).features(["hello world"])[1].tolist() == [6066, 4288, 4249]


def test_counting_streams_in_batches_with_the_same_result():
    one = HashedNgrams(DsirSettings(batch_size=10_000)).counts(RAW)
    streamed = HashedNgrams(DsirSettings(batch_size=3)).counts(iter(RAW))
    np.testing.assert_array_equal(one, streamed)
    assert one.sum() == sum(2 * len(HashedNgrams().words(t)) - 1 for t in RAW)


def test_the_log_weight_is_the_summed_log_ratio_of_the_text_features():
    model = ImportanceModel.fit(TARGET, RAW)
    text = RAW[3]
    _, buckets = HashedNgrams().features([text])  # the same seed, the same buckets
    assert model.log_weights([text])[0] == pytest.approx(
        np.sum(np.log(model.target[buckets]) - np.log(model.raw[buckets]))
    )


def test_a_new_text_like_the_target_outweighs_one_of_the_same_length_that_is_not():
    model = ImportanceModel.fit(TARGET, RAW)
    word_problem, story = model.log_weights(
        [
            "Lisa reads 15 pages a day. How many pages does she read in 4 days?",
            "Write a short story about a dragon who loves to bake fresh bread.",
        ]
    )
    assert word_problem > story + 2  # measured 6.2 nats apart


def test_from_counts_equals_fit():
    settings = DsirSettings(smoothing=0.5)
    ngrams = HashedNgrams(settings)
    fitted = ImportanceModel.fit(TARGET, RAW, settings)
    stored = ImportanceModel.from_counts(ngrams.counts(TARGET), ngrams.counts(RAW), settings)
    np.testing.assert_array_equal(fitted.log_ratio, stored.log_ratio)


def test_resampling_is_seeded_and_without_replacement():
    w = ImportanceModel.fit(TARGET, RAW).log_weights(RAW)
    first = resample(w, 4, seed=7)
    np.testing.assert_array_equal(first, resample(w, 4, seed=7))
    assert len(set(first.tolist())) == 4
    assert any(not np.array_equal(first, resample(w, 4, seed=s)) for s in range(1, 6))
    assert sorted(resample(w, 100, seed=7).tolist()) == list(range(len(RAW)))
    assert resample(w, 0, seed=7).size == 0
    with pytest.raises(ValueError):
        resample(w, -1, seed=7)


def test_gumbel_top_1_draws_in_proportion_to_the_weights():
    w = np.log([1.0, 2.0, 3.0, 4.0])
    freq = np.bincount([resample(w, 1, seed=s)[0] for s in range(20_000)], minlength=4) / 20_000
    np.testing.assert_allclose(freq, [0.1, 0.2, 0.3, 0.4], atol=0.015)


def test_keys_by_id_keep_a_selection_when_records_are_reordered_or_added():
    rng = np.random.default_rng(0)
    ids = [f"rec{i:03d}" for i in range(300)]
    w = rng.normal(size=300)
    chosen = {ids[i] for i in resample(w, 50, seed=3, ids=ids)}
    perm = rng.permutation(300)
    shuffled = [ids[i] for i in perm]
    assert {shuffled[i] for i in resample(w[perm], 50, seed=3, ids=shuffled)} == chosen
    more_ids = ids + [f"new{i:03d}" for i in range(30)]
    more_w = np.concatenate([w, rng.normal(size=30)])
    after = {more_ids[i] for i in resample(more_w, 50, seed=3, ids=more_ids)}
    assert {i for i in after if i.startswith("rec")} <= chosen  # old records only leave, for new ones
    with pytest.raises(ValueError, match="ids"):
        resample(w, 5, seed=3, ids=ids[:10])


def test_kl_divergence():
    p = distribution(np.array([5.0, 3.0, 0.0, 2.0]), 1.0)
    q = distribution(np.array([0.0, 3.0, 5.0, 2.0]), 1.0)
    assert kl_divergence(p, p) == 0.0
    assert kl_divergence(p, q) == pytest.approx(float(np.sum(p * np.log(p / q))))
    assert kl_divergence(p, q) > 0


def test_the_shift_report_shows_selection_moving_toward_the_target():
    model = ImportanceModel.fit(TARGET, RAW)
    ngrams = HashedNgrams()
    selected = [RAW[i] for i in sorted(MATHY)]
    shift = model.shift(ngrams.counts(RAW), ngrams.counts(selected))
    assert shift["kl_after"] < shift["kl_before"] and 0 < shift["kl_reduction"] < 1


def test_settings_are_strict():
    with pytest.raises(ValidationError):
        DsirSettings(num_bucket=100)
    with pytest.raises(ValidationError):
        DsirSettings(smoothing=0)


@pytest.mark.shared_data
@pytest.mark.skipif(not (SHARED_DATA / "pool").is_dir(), reason="../shared/data/pool is not present")
def test_gsm8k_target_selects_held_out_gsm8k_from_a_mixed_pool():
    pool_dir = SHARED_DATA / "pool"
    gsm8k = [json.loads(line)["question"] for line in (pool_dir / "gsm8k_train.custom.jsonl").open()][:3000]
    target, held_out = gsm8k[:1500], gsm8k[1500:]
    others = [json.loads(line)["instruction"] for line in (pool_dir / "code_alpaca_2k.alpaca.jsonl").open()]
    others += [json.loads(line)["instruction"] for line in (pool_dir / "alpaca_eval_claude-2.alpaca.jsonl").open()]
    pool = others + held_out  # 1,500 of 4,322 (35%) are word problems
    model = ImportanceModel.fit(target, pool)
    picked = resample(model.log_weights(pool), 1000, seed=0)
    from_gsm8k = np.mean(picked >= len(others))
    ngrams = HashedNgrams()
    shift = model.shift(ngrams.counts(pool), ngrams.counts(pool[i] for i in picked))
    best = kl_divergence(model.target, distribution(ngrams.counts(held_out), 1.0))  # all word problems
    assert from_gsm8k >= 0.95  # measured 0.99
    assert shift["kl_reduction"] >= 0.4  # measured 0.50 (0.25 -> 0.12 nats)
    assert shift["kl_after"] <= 1.1 * best  # as close as the held-out word problems themselves
