"""The near-duplicate core (infinstruct.curate.near_dedup.minhash), as a spec: what counts as a near-duplicate at the
default settings, how band keys behave in a store, and which records are kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from pydantic import ValidationError

from infinstruct.curate.near_dedup.minhash import (
    KeySet,
    Member,
    NearDupSettings,
    PairJudge,
    band_keys,
    boilerplate_shingles,
    candidate_pairs,
    clusters,
    confirm,
    confirm_pairs,
    differs_in_essential_words,
    jaccard_estimate,
    languages,
    representatives,
    shingle_text,
    signatures,
    text_words,
    without_boilerplate,
)

S = NearDupSettings()

PROMPT = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle, "
    "and explain how the discovery changes the rest of his life on the island."
)
OTHERS = [
    "List three health benefits of drinking green tea every morning.",
    "How do I reverse a linked list in Python without using extra memory?",
    "Summarize the causes of the 2008 financial crisis in two paragraphs.",
    "Give me a recipe for a vegetarian lasagna that serves six people.",
]


def near_pairs(texts: list[str], settings: NearDupSettings = S) -> set[tuple[int, int]]:
    """Confirmed near-duplicate pairs within one batch, the way the stage finds them."""
    sigs = signatures(texts, settings)
    confirmed, _ = confirm_pairs(candidate_pairs(band_keys(sigs, settings)).within, sigs, texts, settings)
    return {tuple(p) for p in confirmed.tolist()}


# --- settings and shingles ---------------------------------------------------------------------------


def test_settings_are_strict_and_bands_must_cover_the_signature():
    with pytest.raises(ValidationError, match="bands \\* rows must equal num_perm"):
        NearDupSettings(num_perm=128, bands=20, rows=4)
    with pytest.raises(ValidationError, match="thresold"):
        NearDupSettings(thresold=0.5)
    assert S.bands * S.rows == S.num_perm


def test_fingerprint_names_everything_that_changes_band_keys():
    assert S.index_fingerprint != NearDupSettings(seed=S.seed + 1).index_fingerprint
    assert S.index_fingerprint != NearDupSettings(shingle=S.shingle + 1).index_fingerprint
    assert S.index_fingerprint == NearDupSettings(threshold=0.9).index_fingerprint  # confirm-only setting


def test_shingles_ignore_case_punctuation_whitespace_and_width():
    assert text_words("Hello,   WORLD!\n(snake_case)") == ["hello", "world", "snake", "case"]
    assert text_words("Ｈｅｌｌｏ，ｗｏｒｌｄ！ Straße") == ["hello", "world", "strasse"]  # NFKC + casefold
    assert shingle_text("one two three four", 3) == ["one two three", "two three four"]


def test_a_text_shorter_than_a_shingle_is_one_shingle():
    assert shingle_text("Hi there!", 3) == ["hi there"]
    assert shingle_text("", 3) == [""]


def test_chinese_characters_are_words_of_their_own():
    assert text_words("请把这句话翻译成英文。") == list("请把这句话翻译成英文")
    assert shingle_text("翻译成英文", 3) == ["翻 译 成", "译 成 英", "成 英 文"]


# --- signatures and band keys ------------------------------------------------------------------------


def test_identical_texts_have_the_same_signature_and_share_every_band_key():
    sigs = signatures([PROMPT, PROMPT, OTHERS[0]], S)
    assert sigs.shape == (3, S.num_perm) and sigs.dtype == np.uint32
    assert np.array_equal(sigs[0], sigs[1])
    keys = band_keys(sigs, S)
    assert keys.shape == (3, S.bands) and keys.dtype == np.int64
    assert np.array_equal(keys[0], keys[1])
    assert not np.isin(keys[2], keys[0]).any()


def test_band_index_lives_in_the_key_so_bands_never_collide():
    keys = band_keys(signatures([PROMPT] + OTHERS, S), S)
    assert (keys >= 0).all()  # fits a Postgres bigint without sign games
    assert np.array_equal(keys >> 56, np.broadcast_to(np.arange(S.bands), keys.shape))


def test_signatures_and_keys_are_deterministic_across_processes():
    code = (
        "import json; from infinstruct.curate.near_dedup.minhash import *; s = NearDupSettings(); "
        f"print(json.dumps(band_keys(signatures({[PROMPT] + OTHERS!r}, s), s).tolist()))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "123"}  # Python's own str hash must not matter
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    here = band_keys(signatures([PROMPT] + OTHERS, S), S)
    assert json.loads(out.stdout) == here.tolist()
    other_seed = NearDupSettings(seed=7)
    assert not np.array_equal(signatures([PROMPT], other_seed), signatures([PROMPT], S))


# --- what is a near-duplicate ------------------------------------------------------------------------


def test_a_whitespace_and_case_variant_is_a_confirmed_pair():
    variant = (
        "  WRITE a short story about a Lighthouse keeper who finds a message in a bottle,\n\nand explain "
        "how the discovery changes the rest of his life on the island!!"
    )
    assert near_pairs([PROMPT, variant] + OTHERS) == {(0, 1)}


def test_a_light_edit_is_a_confirmed_pair():
    edited = PROMPT.replace("short story", "brief story").replace("rest of his life", "rest of his days")
    sigs = signatures([PROMPT, edited], S)
    assert jaccard_estimate(sigs[0], sigs[1]) >= S.threshold
    assert near_pairs([PROMPT, edited]) == {(0, 1)}


def test_unrelated_texts_are_never_paired():
    sigs = signatures([PROMPT] + OTHERS, S)
    assert len(candidate_pairs(band_keys(sigs, S)).within) == 0
    assert near_pairs([PROMPT] + OTHERS) == set()


@pytest.mark.parametrize(
    "a, b",
    [
        ("Translate 'cat' into French.", "Translate 'dog' into French."),
        ("What is the capital of France?", "What is the capital of Spain?"),
        ("What is 12 multiplied by 7?", "What is 15 multiplied by 7?"),
        # a real AlpacaEval pair: ~0.8 Jaccard, so only the essential-word guard keeps them apart
        (
            "I like to host guests at my home from time to time, and I am gathering recipes of different dishes and "
            "drinks to keep things interesting. I am interested in trying some Somali dishes. Can you give me a recipe "
            "for Canjeero?",
            "I like to host guests at my home from time to time, and I am gathering recipes of different dishes and "
            "drinks to keep things interesting. I am interested in trying some Danish dishes. Can you give me a recipe "
            "for Koldskål?",
        ),
    ],
)
def test_templated_prompts_differing_in_a_name_number_or_quoted_word_are_not_duplicates(a, b):
    assert differs_in_essential_words(a, b)
    assert near_pairs([a, b]) == set()


def test_case_and_whitespace_never_trip_the_essential_word_guard():
    assert not differs_in_essential_words("Tell me about Rome and its 7 hills.", "tell me about ROME and its 7 hills")


def test_known_limit_one_plain_word_changed_in_a_long_template_is_still_paired():
    # Jaccard cannot tell a one-word template change from a near-copy with a word or two edited, and a
    # lower-case content word is no signal for the guard; bench/bench_minhash.py measures how often.
    template = (
        "Write a 300-word blog post about the benefits of {} for busy office workers, with three "
        "practical tips they can start using this week and a short encouraging conclusion."
    )
    assert near_pairs([template.format("yoga"), template.format("meditation")]) == {(0, 1)}


# --- candidate search --------------------------------------------------------------------------------


def test_new_rows_are_matched_against_existing_rows():
    existing = OTHERS + [PROMPT]
    new = ["Explain quantum entanglement to a ten-year-old.", PROMPT.upper()]
    sigs_new, sigs_old = signatures(new, S), signatures(existing, S)
    cand = candidate_pairs(band_keys(sigs_new, S), band_keys(sigs_old, S))
    assert cand.within.shape == (0, 2)
    assert cand.across.tolist() == [[1, 4]]  # new row 1 duplicates existing row 4
    confirmed, estimate = confirm_pairs(cand.across, sigs_new, new, S, sigs_old, existing)
    assert confirmed.tolist() == [[1, 4]] and estimate[0] == 1.0


def test_a_key_set_finds_exactly_its_members_among_stored_keys():
    rng = np.random.default_rng(7)
    members = band_keys(signatures([PROMPT, *OTHERS], S), S)
    stored = rng.integers(0, 1 << 62, size=(1_000, S.bands), dtype=np.int64)
    stored[3, 5], stored[900, 0] = members[0, 5], members[4, 0]
    stored[10, 1] = members[1, 1] ^ (1 << 40)  # same low bits as a member, another key: not one
    found = KeySet(members).contains(stored)
    assert found.shape == stored.shape
    assert sorted(zip(*np.nonzero(found))) == [(3, 5), (900, 0)]
    assert not KeySet(members[:0]).contains(stored).any()  # an empty set holds nothing


def test_a_huge_bucket_is_paired_within_a_window_not_all_pairs():
    keys = band_keys(signatures([PROMPT] * 300, S), S)
    within = candidate_pairs(keys, window=8).within
    assert len(within) < 300 * 8 and (within[:, 0] < within[:, 1]).all()
    assert (clusters(300, within) == 0).all()  # still one connected component


def test_an_empty_batch_gives_empty_arrays():
    sigs = signatures([], S)
    assert sigs.shape == (0, S.num_perm)
    cand = candidate_pairs(band_keys(sigs, S), band_keys(signatures([PROMPT], S), S))
    assert cand.within.shape == (0, 2) and cand.across.shape == (0, 2)


# --- clusters and the keep rule ----------------------------------------------------------------------


def test_clusters_are_connected_components_named_by_their_smallest_row():
    pairs = np.array([[3, 4], [1, 3], [5, 6]])
    assert clusters(7, pairs).tolist() == [0, 1, 2, 1, 1, 5, 5]
    assert clusters(3, np.empty((0, 2), dtype=np.int64)).tolist() == [0, 1, 2]


def test_keep_rule_lowest_priority_then_most_complete_then_smallest_id():
    members = [
        Member("r-b", priority=1, completeness=900),  # a worse source, however complete
        Member("r-c", priority=0, completeness=100),
        Member("r-a", priority=0, completeness=400),  # best source, most complete: kept
        Member("r-d", priority=0, completeness=400),  # tie with r-a: larger id loses
        Member("r-e", priority=5, completeness=10),
    ]  # no pair: kept
    pairs = np.array([[0, 2], [1, 2], [2, 3], [0, 1], [0, 3], [1, 3]])
    found = representatives(members, pairs, np.full(len(pairs), 0.9))
    assert [None if r is None else members[r.row].record_id for r in found] == ["r-a", "r-a", None, "r-a", None]


def test_a_chain_of_look_alikes_keeps_every_record_that_resembles_no_accepted_one():
    # a~b and b~c are pairs, a and c are not: a is accepted, b is its duplicate, and c stays (connected
    # components would drop c as a duplicate of a, which it does not resemble)
    members = [Member("a", 0, 300), Member("b", 0, 200), Member("c", 0, 100)]
    found = representatives(members, np.array([[0, 1], [1, 2]]), np.array([0.7, 0.9]))
    assert found == [None, (0, 0.7), None]  # b names a, with the a~b estimate, not the b~c one


def test_a_duplicate_names_its_most_similar_accepted_record_and_that_pairs_estimate():
    members = [Member("a", 0, 300), Member("b", 0, 200), Member("c", 0, 100)]
    found = representatives(members, np.array([[0, 2], [1, 2]]), np.array([0.65, 0.8]))
    assert found == [None, None, (1, 0.8)]


def test_a_record_accepted_by_an_earlier_run_is_never_dropped():
    members = [Member("new", 0, 900), Member("old", 9, 10, accepted=True)]
    assert representatives(members, np.array([[0, 1]]), np.array([0.9])) == [(1, 0.9), None]


def test_a_record_paired_with_no_accepted_record_is_judged_against_its_clusters_accepted_ones():
    # a hot template's bucket pairs each row with a window of neighbours only: row 3 is paired with
    # row 2 alone, a duplicate of row 0; it is judged against row 0 itself, and dropped if it resembles it
    members = [Member(f"r{n}", 0, 100 - n) for n in range(5)]
    pairs = np.array([[0, 1], [0, 2], [2, 3], [3, 4]])
    asked = []

    def similar(row, others):
        asked.append((row, list(others)))
        return [0.75 if row == 3 else None for _ in others]

    found = representatives(members, pairs, np.full(len(pairs), 0.9), similar)
    assert found == [None, (0, 0.9), (0, 0.9), (0, 0.75), None]
    assert asked == [(3, [0]), (4, [0])]  # row 4 resembles row 0 no more than the threshold: kept


def test_a_hot_bucket_keeps_one_record_though_its_pairs_are_windowed():
    texts = [f"{PROMPT} {'Please answer carefully.' if n % 2 else 'Answer carefully.'}" + " " * n for n in range(300)]
    texts = [
        t.replace("lighthouse keeper", "lighthouse keeper" if n % 3 else "lighthouse guard")
        for n, t in enumerate(texts)
    ]
    judge = PairJudge(texts, S)
    within = candidate_pairs(band_keys(judge.sigs, S), window=8).within
    confirmed, estimates = judge.confirm(within)
    members = [Member(f"r{n:03d}", 0, len(t)) for n, t in enumerate(texts)]
    found = representatives(members, confirmed, estimates, judge.similar)
    assert sum(r is None for r in found) == 1


def test_programming_languages_are_essential_words():
    assert languages("Write a C++ function, then port it to C# and C.") == {"lang:cpp", "lang:csharp", "lang:c"}
    assert languages("Use JavaScript (not Java) or golang; python3 is fine") == {
        "lang:javascript",
        "lang:java",
        "lang:go",
        "lang:python",
    }
    assert languages("Let's go to the beach; rust never sleeps.") == set()  # English words, not languages
    factorial = "Write a {} function that computes the factorial of a non-negative integer using recursion."
    assert differs_in_essential_words(factorial.format("C++"), factorial.format("C#"))
    assert differs_in_essential_words(factorial.format("Java"), factorial.format("JavaScript"))
    assert near_pairs([factorial.format("C++"), factorial.format("C#"), factorial.format("C")]) == set()
    assert not differs_in_essential_words(
        factorial.format("C++"), factorial.format("c++").replace("Write", "Please write")
    )


def test_short_instructions_are_never_near_duplicates():
    texts = [
        "How do I make apple juice?",
        "How do I make escargot?",
        "How many minutes are there in a day?",
        "How many minutes are there in one day?",
    ]
    sigs = signatures(texts, S)
    pairs = np.array([[0, 1], [2, 3]])
    confirmed, _ = confirm_pairs(pairs, sigs, texts, NearDupSettings(threshold=0.3))
    assert confirmed.tolist() == [[2, 3]]  # 6 words are under min_words=8; the 8-word pair is confirmed
    confirmed, _ = confirm_pairs(pairs, sigs, texts, NearDupSettings(threshold=0.3, min_words=1))
    assert confirmed.tolist() == [[0, 1], [2, 3]]


def test_template_boilerplate_does_not_make_prompts_duplicates():
    suffix = " Try to explain your answer. Your explanation should take the reader through your reasoning step-by-step."
    fermi = [
        q + suffix
        for q in (
            "How many atoms are in a grain of salt?",
            "How many snowflakes fall during a typical winter?",
            "How many songs have been recorded throughout history?",
            "How many words are spoken daily on Earth?",
            "How many lightning strikes occur on Earth each day?",
            "How many pages are in all the books ever written?",
        )
    ]
    copy = fermi[0].replace("grain of salt?", "grain of table salt?")
    texts = fermi + [copy]
    settings = NearDupSettings(threshold=0.5)
    boilerplate = boilerplate_shingles(texts, settings)
    assert "your reasoning" in boilerplate and "grain of" not in boilerplate
    pairs = np.array([[0, 1], [0, 6]])  # two Fermi questions; a question and its near-copy
    kept, _ = without_boilerplate(pairs, np.array([0.6, 0.9]), texts, settings, boilerplate)
    assert kept.tolist() == [[0, 6]]


def test_confirm_is_signatures_then_confirm_pairs_then_without_boilerplate():
    """`confirm` (what the stage and the release audit call) shingles each text once; same answer as the steps."""
    suffix = " Try to explain your answer. Your explanation should take the reader through your reasoning step-by-step."
    texts = [PROMPT, PROMPT + " Keep it short.", *OTHERS, OTHERS[0] + suffix, OTHERS[1] + suffix, OTHERS[0].upper()]
    pairs = np.array([[i, j] for i in range(len(texts)) for j in range(i + 1, len(texts))])
    sigs = signatures(texts, S)
    step, estimates = confirm_pairs(pairs, sigs, texts, S)
    step, estimates = without_boilerplate(step, estimates, texts, S, boilerplate_shingles(texts, S))
    confirmed, confirmed_estimates = confirm(pairs, texts, S)
    assert confirmed.tolist() == step.tolist() and confirmed_estimates.tolist() == estimates.tolist()
    assert [0, 1] in confirmed.tolist()


def test_the_stores_instruction_text_is_the_user_turns_as_python_joins_them(engine):
    """near_dedup reads instructions with INSTRUCTION_SQL (the answers stay in PostgreSQL); band keys are
    computed from that text, so it must be `instruction_text`'s, character for character."""
    import sqlalchemy as sa

    from infinstruct.curate.near_dedup.stage import INSTRUCTION_SQL
    from infinstruct.record.conversation import instruction_text

    conversations = [
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi."},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Name a prime."},
        ],
        [{"role": "user", "content": 'Quote "this", a \\ backslash,\na tab\t and 中文 ünïcödé 🙂'}],
        [{"role": "user", "content": ""}, {"role": "assistant", "content": "?"}],
        [{"role": "assistant", "content": "no user turn"}],
    ]
    with engine.connect() as conn:
        for conversation in conversations:
            text = conn.execute(
                sa.text(f"select {INSTRUCTION_SQL} from (select cast(:c as json) as conversation) r"),
                {"c": json.dumps(conversation)},
            ).scalar_one()
            assert text == instruction_text((t["role"], t["content"]) for t in conversation)


# --- the stage: decided against accepted records, explained by the pair that decided --------------------


def test_the_stage_drops_a_record_only_as_a_duplicate_of_an_accepted_record_it_resembles(engine, tmp_path):
    """Look-alike prompts in several languages do not chain: each language keeps one prompt, and every
    near_duplicate row names a kept record of its own language, with that pair's Jaccard estimate."""
    import uuid

    import sqlalchemy as sa

    from conftest import run_partition_steps, write_jsonl, write_recipe
    from infinstruct import pipeline

    variants = [
        "Write a {} function that computes the factorial of a non-negative integer.",
        "Write a {} function that computes the factorial of a given non-negative integer.",
        "Write a {} function which computes the factorial of a non-negative integer n.",
        "Please write a {} function that computes the factorial of a non-negative integer.",
        "Write a {} function that computes the factorial of a non-negative integer recursively.",
    ]
    prompts = {
        (lang, n): v.format(lang)
        for lang in ("C++", "C#", "C", "Java", "JavaScript", "Python")
        for n, v in enumerate(variants)
    }
    lines = list(prompts.items())
    write_jsonl(
        tmp_path / "code.jsonl",
        [{"instruction": text, "input": "", "output": f"An answer, {n}."} for n, (_, text) in enumerate(lines)],
    )
    recipe = write_recipe(
        tmp_path, f"chains-{uuid.uuid4().hex[:6]}", [{"name": "code", "path": "code.jsonl", "format": "alpaca"}]
    )
    run_id = run_partition_steps(recipe)
    pipeline.deduplicate(run_id)
    pipeline.near_deduplicate(run_id)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "select r.line_no, r.record_id, d.reason, d.duplicate_of, d.score from records r"
                " join run_partitions rp on rp.partition_id = r.partition_id and rp.run_id = :r"
                " left join decisions d on d.partition_id = r.partition_id and d.line_no = r.line_no"
                " order by r.line_no"
            ),
            {"r": run_id},
        ).all()
    language = {record_id: lines[line_no - 1][0][0] for line_no, record_id, *_ in rows}
    text = {record_id: lines[line_no - 1][1] for line_no, record_id, *_ in rows}
    kept = {record_id for _, record_id, reason, *_ in rows if reason is None}
    assert sorted(language[r] for r in kept) == sorted({lang for lang, _ in prompts})  # one per language
    judge = PairJudge(list(text.values()), S)
    index = {record_id: n for n, record_id in enumerate(text)}
    for _, record_id, reason, duplicate_of, score in rows:
        if reason is not None:
            assert reason == "near_duplicate" and duplicate_of in kept
            assert language[duplicate_of] == language[record_id]
            assert score == judge.similar(index[record_id], [index[duplicate_of]])[0]
