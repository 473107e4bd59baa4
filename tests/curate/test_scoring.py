"""Scoring: signals are measured once, quality and difficulty are formulas over them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from pydantic import ValidationError

from conftest import SHARED_DATA
from infinstruct.curate.scoring.signals import (
    SIGNALS_VERSION,
    EmbeddingRelevanceScorer,
    ScoringError,
    ScoringSettings,
    difficulty_components,
    difficulty_score,
    measure_signals,
    model_scorer,
    quality_components,
    quality_score,
)
from infinstruct.ml.embeddings import EmbeddingSettings, encode

WORD_PROBLEM = (
    (
        "user",
        "A library has 120 books. It lends out 3/4 of them on Monday and gets 12 back on Tuesday. "
        "How many books are in the library on Tuesday evening?",
    ),
    (
        "assistant",
        "On Monday it lends out 120*3/4 = <<120*3/4=90>>90 books.\n"
        "So 120-90 = <<120-90=30>>30 books stay.\n"
        "On Tuesday 30+12 = <<30+12=42>>42 books are in the library.\n#### 42",
    ),
)
CODE_ANSWER = (
    ("user", "Write a Python function that returns the factorial of n."),
    (
        "assistant",
        "Here is a recursive version:\n\n```python\ndef factorial(n):\n    if n < 2:\n"
        "        return 1\n    return n * factorial(n - 1)\n```\n\nIt calls itself until n reaches 1.",
    ),
)
RECIPE_ANSWER = (  # prose that a loose code detector takes for code: parentheses, "Let's", colons
    ("user", "Give me a simple recipe for banana bread."),
    (
        "assistant",
        "Let's keep it simple.\n\nIngredients:\n* 3 ripe bananas (mashed)\n"
        "* 1 teaspoon vanilla extract (optional)\n* 250 g flour\n\n"
        "Mix everything, pour it into a loaf tin and bake for 60 minutes at 175 °C.",
    ),
)
QUESTION = "How do I get better at public speaking?"
BARE = (("user", QUESTION), ("assistant", "Practice."))
DETAILED = (
    ("user", QUESTION),
    (
        "assistant",
        """## A plan that works

Public speaking improves with deliberate practice, because confidence follows preparation.

1. Step 1: record yourself giving a two-minute talk and watch it back.
2. Step 2: join a group such as Toastmasters, since regular feedback speeds things up.
3. Step 3: rehearse the opening until you know it by heart; therefore the first minute, where nerves peak, runs itself.

**Tips**
- Breathe slowly before you start.
- Speak to one friendly face at a time.
- Pause instead of saying "um".

Finally, accept that some nervousness never leaves: it means you care, so use it as energy.""",
    ),
)


def test_signals_are_named_numbers_with_a_version():
    signals = measure_signals(DETAILED)
    assert isinstance(SIGNALS_VERSION, int)
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in signals.values())
    assert {
        "instruction_words",
        "response_words",
        "user_turns",
        "response_ratio",
        "list_items",
        "headings",
        "code_blocks",
        "reasoning_markers",
        "numbered_steps",
        "equations",
        "constraints",
        "has_code",
        "has_math",
    } <= signals.keys()


def test_a_worked_word_problem_is_math_with_equations():
    s = measure_signals(WORD_PROBLEM)
    assert s["equations"] == 3  # "120*3/4 = <<120*3/4=90>>90" is one equation, annotated
    assert s["headings"] == 0  # "#### 42" is GSM8K's answer line
    assert s["numbers"] == 4 and s["questions"] == 1 and s["math_terms"] == 1  # "how many"
    assert (s["has_math"], s["has_code"]) == (1, 0)
    assert s["reasoning_markers"] == 1  # "So"


def test_a_fenced_function_is_code():
    s = measure_signals(CODE_ANSWER)
    assert s["code_blocks"] == 1 and s["code_lines"] == 4
    assert s["code_terms"] == 2  # python, function
    assert (s["has_code"], s["has_math"]) == (1, 0)


def test_prose_with_parentheses_and_lets_is_not_code():
    s = measure_signals(RECIPE_ANSWER)
    assert s["code_lines"] == 0 and s["has_code"] == 0
    assert s["list_items"] == 3


def test_structure_and_reasoning_markers_are_counted():
    s = measure_signals(DETAILED)
    assert s["headings"] == 2  # "## A plan that works", "**Tips**"
    assert s["list_items"] == 6  # three numbered, three bullets
    assert s["numbered_steps"] == 3
    # because, step x3, since, therefore, first (minute), finally, so
    assert s["reasoning_markers"] == 9
    assert s["user_turns"] == 1 and s["response_ratio"] == round(s["response_words"] / 8, 4)


def test_constraints_and_questions_of_the_instruction_are_counted():
    s = measure_signals(
        (
            (
                "user",
                "Write a poem about the sea in exactly four lines. Do not use the word "
                "'blue', make sure it rhymes, and keep it in 20 words. Can you also give it a title? "
                "What rhyme scheme did you use?",
            ),
            ("assistant", "Salt and foam ..."),
        )
    )
    assert s["constraints"] == 4  # exactly, do not, make sure, in 20 words
    assert s["questions"] == 2


def test_several_user_turns_are_one_instruction_and_one_response():
    s = measure_signals(
        (("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!"), ("user", "Name a prime"), ("assistant", "7"))
    )
    assert s["user_turns"] == 2 and s["instruction_words"] == 4 and s["response_words"] == 2


def test_formulas_follow_the_documented_components():
    settings = ScoringSettings()
    signals = {
        **measure_signals(BARE),
        "response_words": 300,
        "response_ratio": 2.0,
        "list_items": 4,
        "headings": 0,
        "code_blocks": 0,
        "reasoning_markers": 0,
        "numbered_steps": 0,
        "equations": 0,
    }
    c = quality_components(signals, settings)
    assert c == pytest.approx({"length": 1.0, "elaboration": 0.5, "structure": 1 - math.exp(-1), "reasoning": 0.0})
    w = settings.quality
    expected = (w.length * 1.0 + w.elaboration * 0.5 + w.structure * (1 - math.exp(-1))) / (
        w.length + w.elaboration + w.structure + w.reasoning
    )
    assert quality_score(signals, settings) == pytest.approx(expected, abs=1e-6)
    d = difficulty_components(signals, settings)
    assert d["answer_length"] == 1.0 and d["multi_part"] == 0.0 and d["constraints"] == 0.0


def test_a_weight_change_rescores_stored_signals_without_remeasuring():
    stored = json.loads(json.dumps(measure_signals(DETAILED)))  # as they come back from the database
    only_structure = ScoringSettings(quality={"length": 0, "elaboration": 0, "structure": 1, "reasoning": 0})
    assert quality_score(stored, only_structure) == pytest.approx(
        quality_components(stored, only_structure)["structure"], abs=1e-6
    )
    assert quality_score(stored, only_structure) != quality_score(stored)


def test_a_detailed_stepwise_answer_scores_higher_than_a_bare_one():
    assert quality_score(measure_signals(DETAILED)) > quality_score(measure_signals(BARE)) + 0.4
    assert difficulty_score(measure_signals(DETAILED)) > difficulty_score(measure_signals(BARE))


def test_a_constrained_multi_part_task_is_harder_than_a_simple_question():
    simple = (("user", "What is the capital of France?"), ("assistant", "Paris."))
    hard = (
        (
            "user",
            "Compare the economic policies of France and Germany since 2000. Use at least three "
            "sources, present the result as a table, and do not exceed 300 words. Which country "
            "grew faster? Why?",
        ),
        ("assistant", "| | France | Germany |\n|---|---|---|\nGermany grew faster because exports ..."),
    )
    assert difficulty_score(measure_signals(hard)) > difficulty_score(measure_signals(simple)) + 0.2


@pytest.mark.parametrize(
    "turns",
    [
        (("user", "?"), ("assistant", "")),
        (("user", "word " * 50_000), ("assistant", ("- step 1 = 2 + 3 therefore\n" * 5_000) + "```\nx;\n```\n" * 500)),
    ],
)
def test_scores_stay_in_the_unit_interval_at_the_extremes(turns):
    s = measure_signals(turns)
    assert 0.0 <= quality_score(s) <= 1.0 and 0.0 <= difficulty_score(s) <= 1.0


def test_settings_are_strict():
    with pytest.raises(ValidationError, match="at least one weight"):
        ScoringSettings(quality={"length": 0, "elaboration": 0, "structure": 0, "reasoning": 0})
    with pytest.raises(ValidationError, match="lenght"):
        ScoringSettings(quality={"lenght": 1})
    with pytest.raises(ValidationError):
        ScoringSettings(reasoning_scale=0)


def test_a_model_weight_needs_a_scorer_and_a_model_score_and_then_counts():
    only_model = {"length": 0, "elaboration": 0, "structure": 0, "reasoning": 0, "model": 1}
    with pytest.raises(ValidationError, match="needs a model to score with"):
        ScoringSettings(quality=only_model)
    settings = ScoringSettings(quality=only_model, scorer={"kind": "embedding"})
    signals = measure_signals(DETAILED)
    with pytest.raises(ScoringError, match="model_score"):
        quality_score(signals, settings)
    assert quality_score({**signals, "model_score": 0.37}, settings) == pytest.approx(0.37)
    assert "model" not in quality_components({**signals, "model_score": 0.37}, ScoringSettings())


def test_the_scorer_is_a_named_model_defaulting_to_the_selections_embedding():
    selection_embedding = EmbeddingSettings(max_chars=500)
    assert model_scorer(ScoringSettings(), selection_embedding) is None
    inherited = model_scorer(ScoringSettings(scorer={"kind": "embedding"}), selection_embedding)
    own = model_scorer(ScoringSettings(scorer={"embedding": {"max_chars": 800}}), selection_embedding)
    assert inherited.name == "relevance:sentence_transformers:all-MiniLM-L6-v2:norm=1:chars=500"
    assert own.name.endswith(":chars=800")  # another model (or its settings): another name, so a re-score
    with pytest.raises(ValidationError, match="kind"):
        ScoringSettings(scorer={"kind": "cross_encoder"})  # no cross-encoder model ships offline


def test_relevance_scorer_prefers_the_answer_to_the_question_asked():
    pairs = [WORD_PROBLEM, CODE_ANSWER, RECIPE_ANSWER, DETAILED]
    questions = [p[0][1] for p in pairs]
    answers = [p[1][1] for p in pairs]
    scorer = EmbeddingRelevanceScorer()
    matched = scorer.score(questions, answers)
    assert scorer.name.startswith("relevance:") and ((matched >= 0) & (matched <= 1)).all()
    for shift in (1, 2, 3):
        assert (matched > scorer.score(questions, answers[shift:] + answers[:shift])).all()
    # with the instructions' vectors at hand (as embedding_cache keeps them), the same scores
    vectors = encode(questions, scorer.settings)
    assert scorer.score_vectors(vectors, answers) == pytest.approx(matched, abs=1e-5)
    with pytest.raises(ValueError, match="3 instructions but 4 responses"):
        scorer.score(questions[:3], answers)


# --- on ../shared/data -------------------------------------------------------------------------


def _alpaca_eval(name: str) -> list[tuple[tuple[str, str], ...]]:
    out = []
    for line in (SHARED_DATA / "pool" / name).open():
        row = json.loads(line)
        if "conversations" in row:
            out.append(
                tuple(("user" if t["from"] == "human" else "assistant", t["value"]) for t in row["conversations"])
            )
        else:
            question = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
            out.append((("user", question), ("assistant", row["output"])))
    return out


shared = pytest.mark.skipif(not (SHARED_DATA / "pool").is_dir(), reason="../shared/data/pool is not present")


@shared
@pytest.mark.shared_data
def test_gpt4_answers_outscore_alpaca_7b_answers_to_the_same_instructions():
    gpt4 = _alpaca_eval("alpaca_eval_gpt4_1106_preview.sharegpt.jsonl")
    alpaca = _alpaca_eval("alpaca_eval_alpaca-7b.alpaca.jsonl")
    assert [g[0][1] for g in gpt4] == [a[0][1] for a in alpaca]
    q_gpt4 = np.array([quality_score(measure_signals(t)) for t in gpt4])
    q_alpaca = np.array([quality_score(measure_signals(t)) for t in alpaca])
    assert (q_gpt4 > q_alpaca).mean() >= 0.9  # measured 0.95


@shared
@pytest.mark.shared_data
def test_code_and_math_detection_on_labelled_sources():
    gsm8k = [json.loads(line) for line in (SHARED_DATA / "pool" / "gsm8k_train.custom.jsonl").open()][:500]
    math_share = np.mean(
        [measure_signals((("user", r["question"]), ("assistant", r["answer"])))["has_math"] for r in gsm8k]
    )
    code = _alpaca_eval("code_alpaca_2k.alpaca.jsonl")[:500]
    code_share = np.mean([measure_signals(t)["has_code"] for t in code])
    general = _alpaca_eval("alpaca_eval_gpt4_1106_preview.sharegpt.jsonl")
    general_code = np.mean([measure_signals(t)["has_code"] for t in general])
    assert math_share >= 0.99  # measured 1.00
    assert code_share >= 0.75  # measured 0.80: the rest answer in prose ("The distinct values are ...")
    assert general_code <= 0.15  # measured 0.09 (AlpacaEval has some coding prompts)
