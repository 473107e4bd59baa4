"""The pure rules of Phase 2: which evolutions are eliminated and why, which operation a parent gets, which
records are seeds, and how a judge's verdict is read.

Specification:
* the evolver's wrapping ("#Rewritten Prompt#:", quotes) is removed before anything is judged;
* a child is eliminated as empty (stop words only), scaffolding (its prompt's words copied), refusal, the
  parent's words again, unrelated (cosine under the floor; lower for in-breadth) or no gain (cosine over the
  ceiling), each with its reason code; a real rewrite passes;
* the operation of a parent in a round is a seeded draw: the same on every run, spread over the operations by
  their weights, never one of weight 0;
* seeds are the candidates with a signal (long-tail label, several categories, hard, weak category), best
  score first, ties in a fixed order; an untagged record is never a seed;
* a judge's 0 is the bottom of the 1-10 scale, other scores off the scale do not fit.
"""

from __future__ import annotations

from collections import Counter

import pytest
from pydantic import ValidationError

from infinstruct.synth.evolution.elimination import Elimination, clean_evolved, similarity_check, text_check
from infinstruct.synth.evolution.stage import pick_operation
from infinstruct.synth.judging.stage import Verdict
from infinstruct.synth.seeds.select import Candidate, label_counts, rank_seeds
from infinstruct.synth.settings import OPERATIONS, EvolutionSettings, SeedSettings

PARENT = "Write a Python function that reverses a linked list."
SETTINGS = EvolutionSettings()


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("#Rewritten Prompt#: Reverse a doubly linked list in place.", "Reverse a doubly linked list in place."),
        ('Rewritten prompt: "Reverse it in O(1) space."', "Reverse it in O(1) space."),
        ("Here is the rewritten prompt: Sort the list first.", "Sort the list first."),
        ("  Reverse the list recursively.  ", "Reverse the list recursively."),
    ],
)
def test_the_evolver_s_wrapping_is_removed(raw, clean):
    assert clean_evolved(raw) == clean


@pytest.mark.parametrize(
    "child, reason",
    [
        ("", Elimination.EMPTY),
        ("Please do it for them, if you can.", Elimination.EMPTY),
        ("Rewrite the given prompt: " + PARENT, Elimination.SCAFFOLDING),
        ("As a prompt rewriter, I add a constraint: reverse it in place.", Elimination.SCAFFOLDING),
        ("I'm sorry, but I can't help with that.", Elimination.REFUSAL),
        ("write a python function that reverses a linked list", Elimination.NO_GAIN),
    ],
)
def test_failed_evolutions_are_eliminated_with_their_reason(child, reason):
    found = text_check(child, PARENT, SETTINGS)
    assert found is not None and found[0] is reason and found[1]


def test_a_real_rewrite_passes_the_text_checks():
    assert (
        text_check(PARENT + " Do it in place, in O(1) extra space, and explain each pointer change.", PARENT, SETTINGS)
        is None
    )


def test_similarity_bounds_depend_on_the_operation():
    assert similarity_check(0.2, "deepen", SETTINGS)[0] is Elimination.UNRELATED
    assert similarity_check(0.2, "breadth", SETTINGS) is None  # a new instruction of the same domain
    assert similarity_check(0.05, "breadth", SETTINGS)[0] is Elimination.UNRELATED
    assert similarity_check(0.99, "deepen", SETTINGS)[0] is Elimination.NO_GAIN
    assert similarity_check(0.8, "deepen", SETTINGS) is None


def test_the_operation_is_a_seeded_weighted_draw():
    assert pick_operation("abc", 1, SETTINGS) == pick_operation("abc", 1, SETTINGS)
    drawn = Counter(pick_operation(f"parent-{i}", 1, SETTINGS) for i in range(3000))
    assert set(drawn) == set(OPERATIONS) and min(drawn.values()) > 3000 / len(OPERATIONS) * 0.8
    only_two = EvolutionSettings(operations={"deepen": 3.0, "breadth": 1.0, "concretise": 0.0})
    drawn = Counter(pick_operation(f"parent-{i}", 2, only_two) for i in range(2000))
    assert set(drawn) == {"deepen", "breadth"} and 2.5 < drawn["deepen"] / drawn["breadth"] < 3.5
    with pytest.raises(ValidationError, match="known operations"):
        EvolutionSettings(operations={"paraphrase": 1.0})


def candidate(record_id: str, labels: tuple[str, ...], categories: tuple[str, ...], hardness: float | None = None):
    return Candidate(record_id, f"instruction {record_id}", labels, categories, hardness, "proxy" if hardness else None)


def test_seeds_are_the_informative_candidates_best_first():
    settings = SeedSettings(rare_label_max_count=1, min_categories=2, hard_proxy=0.5)
    pool = [
        candidate("common", ("python",), ("programming",)),
        candidate("common2", ("python",), ("programming",)),
        candidate("rare", ("python", "haskell"), ("programming",)),
        candidate("multi", ("python",), ("programming", "math")),
        candidate("hard", ("python",), ("programming",), hardness=0.9),
        candidate("all", ("python", "prolog"), ("programming", "logic"), hardness=0.7),
        candidate("untagged", (), ()),
    ]
    counts = label_counts(pool)
    seeds = rank_seeds(pool, counts, settings)
    assert [s.candidate.record_id for s in seeds][0] == "all" and seeds[0].why == (
        "rare_label",
        "multi_ability",
        "hard",
    )
    assert {s.candidate.record_id for s in seeds} == {"all", "rare", "multi", "hard"}  # no signal, no seed
    weak = {s.candidate.record_id: s for s in rank_seeds(pool, counts, settings, weak_categories=frozenset({"math"}))}
    assert weak["multi"].why == ("multi_ability", "weak_category") and weak["multi"].score == 3.0  # 1 + 2
    order = [s.candidate.record_id for s in rank_seeds(pool, counts, settings, weak_categories=frozenset({"math"}))]
    assert order.index("multi") < min(order.index("rare"), order.index("hard"))  # a weak category comes first
    assert [s.candidate.record_id for s in rank_seeds(pool, counts, settings, limit=2)] == [
        s.candidate.record_id for s in seeds[:2]
    ]


def test_a_judge_s_zero_is_the_bottom_of_the_scale_and_other_scores_off_it_do_not_fit():
    base = {"helpfulness": 7, "correctness": 0, "instruction_following": 8, "clarity": 9, "overall": 7.5}
    assert Verdict.model_validate(base).correctness == 1
    with pytest.raises(ValidationError):
        Verdict.model_validate({**base, "correctness": 204})
    with pytest.raises(ValidationError):
        Verdict.model_validate({**base, "overall": 11})


def test_an_evolved_instruction_is_normalised_as_an_ingested_turn_is():
    """LLM output carries what ingested text may carry (ANSI escapes, control characters, chat-template
    tokens): the release must not (issue 14, 3.10)."""
    from infinstruct.synth.evolution.elimination import clean_evolved

    raw = "#Rewritten Prompt#: \x1b[1mExplain\x1b[0m how a\u202e tide\x07 works on a\x0bmoon.<|im_end|>"
    assert clean_evolved(raw) == "Explain how a tide works on a\nmoon."
