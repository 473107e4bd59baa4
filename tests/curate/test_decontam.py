"""Benchmark decontamination: what counts as a record containing a benchmark item (n-gram part), and
the stage that drops such records by n-grams and MiniLM cosine (real PostgreSQL and MiniLM).

The synthetic tests read as the spec; the `shared_data` tests run the real GSM8K-test, MT-Bench and
HumanEval files against the clean pool (skipped where ../shared/data is absent).
"""

from __future__ import annotations

import json
import uuid

import pytest
import sqlalchemy as sa
from pydantic import ValidationError

from conftest import SHARED_DATA, write_jsonl
from infinstruct.curate.decontam.ngrams import (
    BenchmarkError,
    BenchmarkItem,
    BenchmarkSpec,
    Match,
    MatchMethod,
    NgramIndex,
    best_matches,
    contaminating,
    load_items,
    normalise,
    normalise_words,
    word_hash,
)

MATH = BenchmarkItem(
    "mathbench",
    "7",
    "A farmer has 3 fields. Each field has 24 rows of corn with 15 plants in a row. "
    "How many corn plants does the farmer have in total?",
)
CODE = BenchmarkItem(
    "codebench",
    "Code/1",
    'def count_vowels(text: str) -> int:\n    """Return how many vowels the text '
    "contains, counting y only at the end of a word.\n"
    '    >>> count_vowels("happy")\n    2\n    """\n',
)
SHORT = BenchmarkItem("chatbench", "81#2", "Rewrite it as a limerick, please.")  # 6 words: below n = 13


@pytest.fixture(scope="module")
def index() -> NgramIndex:
    return NgramIndex.build([MATH, CODE, SHORT])


def ids(matches: list[Match]) -> list[tuple[str, str, str]]:
    return [(m.benchmark, m.item_id, m.method.value) for m in matches]


# --- what matches ------------------------------------------------------------------------------


def test_a_verbatim_item_matches_with_all_its_ngrams(index):
    [match] = index.match(MATH.text)
    assert (match.benchmark, match.item_id, match.method, match.score) == ("mathbench", "7", MatchMethod.NGRAM, 1.0)
    assert match.shared == len(normalise_words(MATH.text)) - 13 + 1


def test_an_item_wrapped_in_a_longer_prompt_and_answered_matches(index):
    text = (
        f"Please solve the following problem step by step:\n{MATH.text}\nAnswer with a number.\n\n24 * 15 * 3 = 1080."
    )
    assert ids(index.contaminating(text)) == [("mathbench", "7", "ngram")]
    assert index.match(text)[0].score == 1.0


def test_case_punctuation_whitespace_and_unicode_width_do_not_hide_an_item(index):
    shouted = MATH.text.upper().replace(" ", "  \n").replace(".", " !") + " ＡＮＳＷＥＲ"  # full-width: NFKC
    assert index.match(shouted)[0].score == 1.0


def test_changed_numbers_still_match_because_numbers_are_masked(index):
    text = MATH.text.replace("3", "5").replace("24", "30").replace("15", "12")
    assert index.match(text)[0].score == 1.0
    # unmasked, only the 2 of 16 13-grams after the last number survive
    unmasked = NgramIndex.build([MATH], mask_numbers=False)
    assert unmasked.match(text)[0].score == 2 / 16


def test_a_code_prompt_matches_in_a_record_with_its_solution(index):
    record = "Complete this function:\n" + CODE.text + "    return sum(c in 'aeiou' for c in text)\n"
    assert ids(index.contaminating(record)) == [("codebench", "Code/1", "ngram")]


def test_a_short_item_inside_a_preamble_matches_by_containment(index):
    text = "Thanks, that story was lovely and my kids enjoyed it a lot. Rewrite it as a limerick, please!"
    [match] = index.match(text)
    assert (match.item_id, match.method, match.score, match.shared) == ("81#2", MatchMethod.CONTAINMENT, 1.0, 6)


def test_a_short_item_must_appear_whole_and_word_for_word(index):
    assert index.match("Rewrite it as a limerick.") == []  # a prefix is not the item
    assert index.match("Rewrite it as a limerick, pleased with the result.") == []  # 'pleased' ≠ 'please'


def test_partial_overlap_scores_the_share_of_the_items_ngrams(index):
    words = normalise_words(MATH.text)  # 28 words: 16 13-grams
    [match] = index.match("My notes say: " + " ".join(words[:17]) + " and then I forgot the rest.")
    assert match.score == 5 / 16 and match.shared == 5
    assert contaminating([match], 0.5) == [] and contaminating([match], 0.3) == [match]


def test_an_item_repeated_in_a_text_is_one_best_match(index):
    matches = index.match(MATH.text + "\n" + MATH.text + "\n" + SHORT.text + " " + SHORT.text)
    assert ids(matches) == [("chatbench", "81#2", "containment"), ("mathbench", "7", "ngram")]


# --- what does not match -----------------------------------------------------------------------


def test_unrelated_text_does_not_match(index):
    assert index.match("Write a haiku about autumn leaves falling on a quiet river at dusk.") == []
    assert index.match("") == []


def test_a_near_miss_sharing_only_common_phrases_does_not_match(index):
    # shares a 12-word run with MATH ("each field has 24 rows of corn with 15 plants in a") and the
    # first words of the short item and of CODE's docstring, but no 13 words in a row, no whole short item
    text = (
        "A farmer has 2 barns. Each field has 24 rows of corn with 15 plants in a column. How many corn "
        "plants does the farmer have if he sells half? Rewrite it as a poem. Return how many vowels it has."
    )
    assert index.match(text) == []


def test_items_shorter_than_min_short_words_are_listed_not_indexed():
    tiny = BenchmarkItem("chatbench", "90#2", "Why?")
    index = NgramIndex.build([MATH, tiny], min_short_words=4)
    assert index.skipped == [tiny] and len(index) == 1
    assert index.match("Why? Because I said so, and that is the end of this story.") == []


def test_a_batch_matches_each_text_as_alone_and_no_item_spans_two_texts(index):
    """The stage matches a batch at once (`match_many`): the same matches as text by text, and an item cut
    in two across neighbouring texts (one ends where the next begins) matches neither."""
    words = MATH.text.split()
    texts = [
        "Unrelated words about gardening.",
        MATH.text,
        " ".join(words[:12]),  # 12 words each: under n = 13
        " ".join(words[12:24]),
        "",
        "Rewrite it as a limerick, please. Thanks!",
        CODE.text,
        "one",
    ]
    assert index.match_many(texts) == [index.match(t) for t in texts]
    assert [bool(m) for m in index.match_many(texts)] == [False, True, False, False, False, True, True, False]
    assert index.contaminating_many(texts) == [index.contaminating(t) for t in texts]


# --- normalisation and hashing -----------------------------------------------------------------


def test_normalisation_folds_case_width_and_punctuation_and_keeps_code_identifiers():
    assert normalise("  Ｈｅｌｌｏ,\tWORLD!! it's  3.5%") == "hello world it s 3 5"
    assert (
        normalise("def has_close_elements(numbers: List[float]) -> bool:")
        == "def has_close_elements numbers list float bool"
    )
    assert normalise("Größe – naïve café") == "grösse naïve café"  # non-ASCII path, same rule


def test_word_hashes_are_stable_across_processes_and_releases():
    # persisted indexes rely on it: BLAKE2b, never Python's salted hash(); changing it invalidates them
    assert word_hash("contamination") == 0x15A047945F5E4BFE


# --- loading benchmarks ------------------------------------------------------------------------


def test_each_turn_of_a_multi_turn_item_is_its_own_text(tmp_path):
    path = write_jsonl(
        tmp_path / "mt.jsonl",
        [
            {"question_id": 81, "turns": ["Compose a travel blog post about Hawaii.", "Rewrite it as a limerick."]},
            {"question_id": 82, "turns": ["Draft an email to your supervisor."]},
        ],
    )
    spec = BenchmarkSpec(name="mt_bench", path=str(path), fields=["turns"], id_field="question_id")
    assert load_items(spec) == [
        BenchmarkItem("mt_bench", "81#1", "Compose a travel blog post about Hawaii."),
        BenchmarkItem("mt_bench", "81#2", "Rewrite it as a limerick."),
        BenchmarkItem("mt_bench", "82", "Draft an email to your supervisor."),
    ]
    joined = spec.model_copy(update={"split_values": False})
    assert [i.item_id for i in load_items(joined)] == ["81", "82"]
    assert load_items(joined)[0].text == "Compose a travel blog post about Hawaii.\nRewrite it as a limerick."


def test_dotted_fields_and_line_numbers_as_default_ids(tmp_path):
    write_jsonl(tmp_path / "b.jsonl", [{"q": {"text": "First?", "choices": ["a", "b"]}}, {"q": {"text": "Second?"}}])
    spec = BenchmarkSpec(name="b", path="b.jsonl", fields=["q.text"])
    assert [(i.item_id, i.text) for i in load_items(spec, base_dir=tmp_path)] == [("1", "First?"), ("2", "Second?")]
    spec = BenchmarkSpec(name="b", path="b.jsonl", fields=["q.choices.1"])
    with pytest.raises(BenchmarkError, match=r"b\.jsonl:2: no field 'q\.choices\.1'"):
        load_items(spec, base_dir=tmp_path)


def test_bad_benchmark_files_and_specs_fail_with_a_clear_message(tmp_path):
    with pytest.raises(BenchmarkError, match="not found"):
        load_items(BenchmarkSpec(name="b", path=str(tmp_path / "missing.jsonl"), fields=["q"]))
    write_jsonl(tmp_path / "bad.jsonl", [{"q": "fine"}, "{not json"])
    with pytest.raises(BenchmarkError, match=r"bad\.jsonl:2: not JSON"):
        load_items(BenchmarkSpec(name="b", path=str(tmp_path / "bad.jsonl"), fields=["q"]))
    write_jsonl(tmp_path / "wrong.jsonl", [{"q": {"text": "nested"}}])
    with pytest.raises(BenchmarkError, match=r"wrong\.jsonl:1: field 'q': expected text or a list of texts, got dict"):
        load_items(BenchmarkSpec(name="b", path=str(tmp_path / "wrong.jsonl"), fields=["q"]))
    with pytest.raises(ValidationError, match="id_fild"):
        BenchmarkSpec(name="b", path="x.jsonl", fields=["q"], id_fild="id")


def test_best_matches_merges_matchers_keeping_the_best_score_per_item():
    ngram = [Match("b", "1", MatchMethod.NGRAM, 0.2, 3), Match("b", "2", MatchMethod.NGRAM, 1.0, 30)]
    embedding = [Match("b", "1", MatchMethod.EMBEDDING, 0.9, 0)]
    assert best_matches(ngram, embedding) == [ngram[1], embedding[0]]


# --- the real benchmark files ------------------------------------------------------------------

BENCHMARKS = SHARED_DATA / "benchmarks"
POOL = SHARED_DATA / "pool"
needs_shared_data = pytest.mark.skipif(
    not BENCHMARKS.is_dir() or not POOL.is_dir(), reason="../shared/data is not present"
)


@pytest.fixture(scope="module")
def real_items() -> list[BenchmarkItem]:
    specs = [
        BenchmarkSpec(name="gsm8k", path="gsm8k_test.jsonl", fields=["question"]),
        BenchmarkSpec(name="mt_bench", path="mt_bench_questions.jsonl", fields=["turns"], id_field="question_id"),
        BenchmarkSpec(name="humaneval", path="humaneval.jsonl", fields=["prompt"], id_field="task_id"),
    ]
    return [item for spec in specs for item in load_items(spec, base_dir=BENCHMARKS)]


@pytest.fixture(scope="module")
def real_index(real_items) -> NgramIndex:
    return NgramIndex.build(real_items)


@pytest.mark.shared_data
@needs_shared_data
@pytest.mark.parametrize(
    "wrapper",
    [
        "{}",
        "Please solve the following problem step by step:\n{}\nAnswer with a number.",
        "Earlier you helped me a lot. {}\n\nSure! Here is my answer.",
    ],
)
def test_every_real_benchmark_item_matches_itself_verbatim_and_wrapped(real_items, real_index, wrapper):
    assert len(real_items) == 1319 + 160 + 164 and real_index.skipped == []
    missed = [
        (i.benchmark, i.item_id)
        for i in real_items
        if not any(
            (m.benchmark, m.item_id) == (i.benchmark, i.item_id) and m.score == 1.0
            for m in real_index.contaminating(wrapper.format(i.text))
        )
    ]
    assert missed == []


def _pool_texts(pattern: str, fields: list[str]) -> list[str]:
    texts = []
    for path in sorted(POOL.glob(pattern)):
        with path.open(encoding="utf-8") as lines:
            texts += ["\n".join(str(record[f]) for f in fields) for record in map(json.loads, lines)]
    return texts


@pytest.mark.shared_data
@needs_shared_data
def test_few_clean_pool_records_match(real_index):
    records = _pool_texts("gsm8k_train*.jsonl", ["question", "answer"]) + _pool_texts(
        "alpaca_eval_*.alpaca.jsonl", ["instruction", "input", "output"]
    )
    assert len(records) == 7473 + 6 * 805
    flagged = [r for r in records if real_index.contaminating(r)]
    # GSM8K-train questions built on a test question's template, and AlpacaEval's copies of two
    # MT-Bench questions (true contamination), all well under 1%
    assert len(flagged) / len(records) < 0.01


# --- the decontamination stage: n-grams and embeddings over a partition (real PostgreSQL, MiniLM) ---

GSM_ITEM = {
    "id": "3",
    "question": "Josh decides to try flipping a house. He buys a house for $80,000 and then puts in "
    "$50,000 in repairs. This increased the value of the house by 150%. How much profit "
    "did he make?",
}
MT_ITEM = {
    "question_id": 81,
    "turns": [
        "Compose an engaging travel blog post about a recent trip to Hawaii, "
        "highlighting cultural experiences and must-see attractions."
    ],
}
# lightly paraphrased, numbers changed: shares no 13-gram with the item (checked below), cosine ≥ 0.8
PARAPHRASED_GSM = (
    "Josh wants to flip a house. He purchases a home for $92,000 and then spends $35,000 on repairs. "
    "That raised the house's value by 120%. What was his profit?"
)
LINES = [
    {
        "instruction": PARAPHRASED_GSM,
        "input": "",
        "output": "The house is worth 127,000 * 2.2 = 279,400, so he made $152,400.",
    },
    {
        "instruction": "I need help with my homework. " + MT_ITEM["turns"][0],
        "input": "",
        "output": "Aloha from Hawaii! My trip began on Oahu, where I learned to hula at a cultural centre.",
    },
    {
        "instruction": "Suggest a vegetarian recipe for a summer picnic.",
        "input": "",
        "output": "A chickpea salad with cucumber, tomato, feta, lemon juice and olive oil travels well.",
    },
    # a paraphrase too, but the rules stage drops it first: never embedded
    {
        "instruction": "Josh flips a house: bought for $70,000, repairs $40,000, value up 130%. What profit?",
        "input": "",
        "output": "As an AI language model, I cannot do that.",
    },
]


def run_stages(tmp_path, embedding="default", copies: int = 1, between=None) -> tuple[str, list[str], list[dict]]:
    """Ingest `copies` identical files of LINES, then rules and decontamination per partition
    (`between(i)` runs before partition i's stages). Returns run id, partitions, decontam results."""
    from conftest import write_recipe
    from infinstruct import pipeline

    write_jsonl(tmp_path / "gsm.jsonl", [GSM_ITEM])
    write_jsonl(tmp_path / "mt.jsonl", [MT_ITEM])
    for k in range(copies):
        write_jsonl(tmp_path / f"part{k}.jsonl", LINES)
    decontamination = {
        "benchmarks": [
            {"name": "gsm8k_test", "path": "gsm.jsonl", "fields": ["question"], "id_field": "id"},
            {"name": "mt_bench", "path": "mt.jsonl", "fields": ["turns"], "id_field": "question_id"},
        ]
    }
    if embedding != "default":
        decontamination["embedding"] = embedding
    recipe = write_recipe(
        tmp_path,
        f"decontam-{uuid.uuid4().hex[:6]}",
        [{"name": f"s{k}", "path": f"part{k}.jsonl", "format": "alpaca"} for k in range(copies)],
        decontamination=decontamination,
    )
    run_id = f"test-{uuid.uuid4().hex[:8]}"
    pipeline.start_run(run_id, recipe)
    parts = pipeline.plan(run_id)
    results = []
    for i, part in enumerate(parts):
        if between is not None:
            between(i)
        pipeline.ingest_partition(run_id, part)
        pipeline.apply_rules(run_id, part)
        results.append(pipeline.decontaminate(run_id, part))
    return run_id, parts, results


def stage_rows(engine, part: str) -> tuple[dict, dict]:
    """(line -> (stage, reason, detail, duplicate_of, score)) decisions and (line -> {(benchmark, item, method)}) audit."""
    with engine.connect() as conn:
        decided = {
            line: rest
            for line, *rest in conn.execute(
                sa.text(
                    "select line_no, stage, reason, detail, duplicate_of, score from decisions where partition_id = :p"
                ),
                {"p": part},
            )
        }
        audit: dict[int, set] = {}
        for line, benchmark, item, method in conn.execute(
            sa.text("select line_no, benchmark, item_id, method from contamination where partition_id = :p"),
            {"p": part},
        ):
            audit.setdefault(line, set()).add((benchmark, item, method))
    return decided, audit


def cached_ids(engine, part: str) -> set[int]:
    """Lines of the partition whose record has a cached instruction vector."""
    from infinstruct.ml.embeddings import EmbeddingSettings

    with engine.connect() as conn:
        return set(
            conn.execute(
                sa.text(
                    "select r.line_no from records r join embedding_cache e on e.record_id = r.record_id and e.model = :m"
                    " where r.partition_id = :p"
                ),
                {"p": part, "m": EmbeddingSettings().fingerprint},
            ).scalars()
        )


def test_a_paraphrased_item_the_ngrams_miss_is_dropped_by_embedding(engine, tmp_path):
    assert NgramIndex.build([BenchmarkItem("gsm8k_test", "3", GSM_ITEM["question"])]).match(PARAPHRASED_GSM) == []
    run_id, [part], [result] = run_stages(tmp_path)
    assert (result["dropped"], result["embedding_checked"]) == (2, 3)  # the refusal was not embedded
    decided, audit = stage_rows(engine, part)

    stage, reason, detail, duplicate_of, score = decided[1]
    assert (stage, reason, detail, duplicate_of) == (
        "decontam",
        "contaminated:gsm8k_test",
        "embedding match",
        "gsm8k_test:3",
    )
    assert 0.8 <= score <= 1.0
    assert audit[1] == {("gsm8k_test", "3", "embedding")}
    # the wrapped MT-Bench turn: both matchers see it, the n-gram match (score 1.0) is the reason
    assert decided[2][:4] == ["decontam", "contaminated:mt_bench", "ngram match", "mt_bench:81"]
    assert audit[2] == {("mt_bench", "81", "ngram"), ("mt_bench", "81", "embedding")}
    # the clean record is kept; the refusal is the rules stage's, with no embedding evidence
    assert 3 not in decided and 3 not in audit
    assert decided[4][:2] == ["rules", "rule:refusal"] and 4 not in audit
    assert cached_ids(engine, part) == {1, 2, 3}

    from infinstruct import pipeline

    again = pipeline.decontaminate(run_id, part)
    assert again["skipped"] is True and again["dropped"] == 2
    assert stage_rows(engine, part) == (decided, audit)


def test_the_same_records_in_another_file_reuse_the_cached_vectors(engine, tmp_path, monkeypatch):
    from infinstruct.ml import embeddings

    def no_encoding_after_the_first_file(i: int) -> None:
        if i == 1:  # the matcher's item vectors are built once per process, the records' are cached
            monkeypatch.setattr(embeddings, "encode", lambda *a, **k: pytest.fail("encoded again"))

    _, parts, results = run_stages(tmp_path, copies=2, between=no_encoding_after_the_first_file)
    assert [r["dropped"] for r in results] == [2, 2]
    assert stage_rows(engine, parts[1])[0][1][1:4] == stage_rows(engine, parts[0])[0][1][1:4]


def test_embedding_null_turns_the_embedding_matcher_off(engine, tmp_path):
    _, [part], [result] = run_stages(tmp_path, embedding=None)
    assert (result["dropped"], result["embedding_checked"]) == (1, 0)
    decided, audit = stage_rows(engine, part)
    assert 1 not in decided and 1 not in audit  # the paraphrase gets through
    assert decided[2][:3] == ["decontam", "contaminated:mt_bench", "ngram match"]
    assert audit == {2: {("mt_bench", "81", "ngram")}}


HUMANEVAL_0 = '''from typing import List


def has_close_elements(numbers: List[float], threshold: float) -> bool:
    """ Check if in given list of numbers, are any two numbers closer to each other than
    given threshold.
    >>> has_close_elements([1.0, 2.0, 3.0], 0.5)
    False
    >>> has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3)
    True
    """
'''


def test_code_with_its_function_and_arguments_renamed_still_matches_in_full():
    renamed = (
        HUMANEVAL_0.replace("has_close_elements", "helper_17")
        .replace("numbers", "values")
        .replace("threshold", "limit")
    )
    index = NgramIndex.build([BenchmarkItem("humaneval", "HumanEval/0", HUMANEVAL_0)])
    [match] = index.contaminating("Complete this function:\n" + renamed)
    assert (match.item_id, match.score) == ("HumanEval/0", 1.0)
    assert (
        NgramIndex.build(
            [BenchmarkItem("humaneval", "HumanEval/0", HUMANEVAL_0)],
        ).contaminating("def add(a, b):\n    return a + b")
        == []
    )


def test_defined_names_are_functions_classes_and_parameters_in_order():
    from infinstruct.curate.decontam.ngrams import defined_names

    assert defined_names("class Stack:\n    def push(self, item, *rest, limit=3): pass") == [
        "stack",
        "push",
        "item",
        "rest",
        "limit",
    ]
    assert defined_names("Tell me about classes of stars.") == []
