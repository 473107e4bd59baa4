"""The model score of Phase 1 scoring, end to end: score_records with a configured scorer (the real offline
MiniLM, kind `embedding`), a real PostgreSQL, and select_records on hand-made records.

Specification:
* with `selection.scoring.scorer`, every scored record carries signals["model_score"] (relevance of the answer
  to the question) and `record_scores.scorer`, the name of the model that measured it;
* `quality.model > 0` counts it in quality: an answer about something else scores lower, and the selection
  prefers on-topic answers that the cheap signals alone ranked below structured off-topic ones;
* the measurement is kept apart from the weights: a weight change re-derives quality without calling the
  model; a model change (another model, or the same model under other settings) scores every record again.
"""

from __future__ import annotations

import uuid

import pytest

from conftest import run_selection_steps, stored_scores, write_jsonl, write_recipe
from infinstruct import pipeline
from infinstruct.curate.scoring.signals import EmbeddingRelevanceScorer

# Plain prose answers to the question asked ...
ON_TOPIC = [
    (
        "Why do leaves change colour in autumn?",
        "Leaves are green because of chlorophyll, which the tree uses to capture sunlight. In autumn the days get "
        "shorter and colder, so the tree stops making chlorophyll and breaks down what is left. The yellow and orange "
        "pigments that were hidden underneath become visible, and some trees also make red pigments from sugars "
        "trapped in the leaf.",
    ),
    (
        "How does a refrigerator keep food cold?",
        "A refrigerator moves heat from the inside to the outside. A pump compresses a refrigerant gas, which gets "
        "hot and releases its heat through the coils at the back. The refrigerant then expands inside the cabinet, "
        "becomes very cold and absorbs heat from the food, and the cycle repeats as long as the thermostat asks.",
    ),
    (
        "What causes the tides in the ocean?",
        "Tides are caused mainly by the gravity of the Moon. It pulls the ocean on the side of the Earth facing it "
        "a little more than the Earth itself, and the Earth a little more than the ocean on the far side, which "
        "raises two bulges of water. As the Earth rotates, a coast passes through both bulges, giving two high tides "
        "a day.",
    ),
    (
        "Why is the sky blue during the day?",
        "Sunlight contains every colour, but the molecules of the air scatter short wavelengths much more strongly "
        "than long ones. Blue light is therefore scattered across the whole sky and reaches your eyes from every "
        "direction, while most of the red and yellow light travels straight on. At sunset the light crosses more air "
        "and the blue is scattered away, so the sky turns red.",
    ),
    (
        "How do vaccines protect people from disease?",
        "A vaccine shows the immune system a harmless piece or a weakened form of a germ. The body responds by "
        "making antibodies and memory cells that recognise it. If the real germ arrives later, those memory cells "
        "react within days instead of weeks, so the infection is stopped before it can make the person seriously "
        "ill.",
    ),
    (
        "What makes bread dough rise?",
        "Bread dough rises because of yeast, a living fungus mixed into the flour and water. The yeast feeds on "
        "sugars in the flour and releases carbon dioxide gas. The gluten in kneaded dough forms a stretchy network "
        "that traps the gas in small bubbles, so the dough swells, and the heat of the oven expands them further.",
    ),
]

# ... and structured answers (bullets, steps: what the cheap signals reward) to a different question.
OFF_TOPIC = [
    (
        "How do bees make honey?",
        "Here is how to change a flat tyre:\n- Loosen the wheel nuts while the car is on the ground.\n"
        "- Jack the car up until the wheel is off the ground.\n- Remove the nuts and the wheel.\n"
        "- Fit the spare wheel and tighten the nuts by hand.\n- Lower the car, then tighten the nuts firmly in a "
        "star pattern.\nFinally, check the pressure of the spare tyre.",
    ),
    (
        "Why do cats purr?",
        "Tips for writing a good CV:\n1. Put your most recent job first.\n2. Keep it to two pages at most.\n"
        "3. Describe results, not duties, because employers look for impact.\n4. Tailor it to each job advert.\n"
        "5. Check the spelling twice.\nThen ask a friend to read it before you send it.",
    ),
    (
        "How do volcanoes form?",
        "Growing tomatoes at home:\n- Choose a sunny spot with at least six hours of light.\n"
        "- Plant the seedlings deep, since roots grow along the buried stem.\n- Water regularly at the base.\n"
        "- Tie the stems to stakes as they grow.\n- Pinch out side shoots.\nSo you get fewer but larger fruits.",
    ),
    (
        "What does the human liver do?",
        "How to brew coffee with a French press:\n1. Heat water to just below boiling.\n"
        "2. Add one tablespoon of coarse ground coffee per cup.\n3. Pour the water and stir once.\n"
        "4. Wait four minutes, then press the plunger slowly.\n5. Serve at once, because it turns bitter.\n"
        "Finally, rinse the press.",
    ),
    (
        "How do airplanes stay in the air?",
        "Planning a birthday party:\n- Pick a date and book the venue first.\n- Send the invitations three weeks "
        "ahead.\n- Order the cake and the food.\n- Plan two or three games for the children.\n- Buy balloons and "
        "candles.\nThen relax: the guests mostly remember the company.",
    ),
    (
        "Why does ice float on water?",
        "Steps to learn a new language:\n1. Learn the 500 most common words first.\n2. Listen to podcasts every day.\n"
        "3. Speak from the first week, since mistakes teach you.\n4. Read simple books.\n5. Review with flashcards.\n"
        "Therefore progress comes from daily habits.",
    ),
]

SCIENCE_EXEMPLARS = [
    "Why do objects fall to the ground?",
    "How does the heart pump blood?",
    "What causes earthquakes?",
    "How do plants make food from sunlight?",
]
CODE_EXEMPLARS = [
    "Write a Python function that reverses a string.",
    "Fix the bug in this JavaScript loop.",
    "Write an SQL query that counts orders per customer.",
]


def recipe(folder, name: str, scoring: dict) -> str:
    # one domain to select from (half of it, by quality alone), one that no record should land in
    selection = {
        "domains": {
            "builtin": False,
            "domains": {"science": {"exemplars": SCIENCE_EXEMPLARS}, "code": {"exemplars": CODE_EXEMPLARS}},
        },
        "shares": {"science": 1.0},
        "counts": {"code": 0},
        "size": 0.5,
        "tolerance": 0.05,
        "rank": {"quality": 1.0, "difficulty": 0.0, "importance": 0.0},
        "diversity_threshold": 0.99,
        "scoring": scoring,
    }
    return write_recipe(
        folder, name, [{"name": "qa", "path": "qa.jsonl", "format": "alpaca"}], semantic_dedup=None, selection=selection
    )


def run(recipe_path) -> str:
    run_id = run_selection_steps(recipe_path)
    assert pipeline.check_selection(run_id)["success"]
    return run_id


@pytest.fixture(scope="module")
def runs(engine, tmp_path_factory):
    """Four runs over the same twelve records; the number of responses the model scored in each."""
    folder = tmp_path_factory.mktemp("model_score")
    write_jsonl(folder / "qa.jsonl", [{"instruction": q, "input": "", "output": a} for q, a in ON_TOPIC + OFF_TOPIC])
    scorer = {"kind": "embedding"}  # the selection's embedding: the bundled MiniLM
    plans = {
        "signals_only": {},
        "with_model": {"scorer": scorer, "quality": {"model": 2.0}},
        "new_weight": {"scorer": scorer, "quality": {"model": 4.0}},
        "new_model": {"scorer": {"kind": "embedding", "embedding": {"max_chars": 1000}}, "quality": {"model": 4.0}},
    }
    out, calls = {}, {}
    original = EmbeddingRelevanceScorer.score_vectors
    for name, scoring in plans.items():
        scored: list[int] = []

        def counting(self, vectors, responses, scored=scored):
            scored.append(len(responses))
            return original(self, vectors, responses)

        with pytest.MonkeyPatch.context() as mp:  # counts the calls, the real model still answers
            mp.setattr(EmbeddingRelevanceScorer, "score_vectors", counting)
            out[name] = stored_scores(engine, run(recipe(folder, f"model_{name}_{uuid.uuid4().hex[:6]}", scoring)))
        calls[name] = sum(scored)
    return out, calls


ON = [q for q, _ in ON_TOPIC]
OFF = [q for q, _ in OFF_TOPIC]


def test_every_record_is_scored_and_in_the_domain_selected_from(runs):
    out, _ = runs
    for name, rows in out.items():
        assert sorted(rows) == sorted(ON + OFF), name
        assert {r["domain"] for r in rows.values()} == {"science"}, name


def test_the_scorer_stores_a_relevance_score_and_its_name(runs):
    out, _ = runs
    with_model = out["with_model"]
    assert {r["scorer"] for r in with_model.values()} == {
        "relevance:sentence_transformers:all-MiniLM-L6-v2:norm=1:chars=2000"
    }
    # an answer about something else is less relevant than every answer to the question asked
    assert max(with_model[q]["model_score"] for q in OFF) < min(with_model[q]["model_score"] for q in ON)


def test_the_cheap_signals_alone_prefer_the_structured_off_topic_answers(runs):
    out, _ = runs
    signals_only = out["signals_only"]
    assert min(signals_only[q]["quality"] for q in OFF) > max(signals_only[q]["quality"] for q in ON)
    assert {q for q, r in signals_only.items() if r["selected"]} == set(OFF)


def test_a_model_weight_lowers_off_topic_quality_and_the_selection_turns_to_on_topic_answers(runs):
    out, _ = runs
    before, after = out["signals_only"], out["with_model"]
    assert all(after[q]["quality"] < before[q]["quality"] for q in OFF)
    assert min(after[q]["quality"] for q in ON) > max(after[q]["quality"] for q in OFF)
    assert {q for q, r in after.items() if r["selected"]} == set(ON)


def test_a_weight_change_re_derives_quality_without_calling_the_model(runs):
    out, calls = runs
    assert calls["signals_only"] == 0 and calls["with_model"] == len(ON + OFF)
    assert calls["new_weight"] == 0
    for q in ON + OFF:
        assert out["new_weight"][q]["model_score"] == out["with_model"][q]["model_score"]
    assert any(out["new_weight"][q]["quality"] != out["with_model"][q]["quality"] for q in ON + OFF)


def test_a_model_change_scores_every_record_again(runs):
    out, calls = runs
    assert calls["new_model"] == len(ON + OFF)
    assert {r["scorer"] for r in out["new_model"].values()} == {
        "relevance:sentence_transformers:all-MiniLM-L6-v2:norm=1:chars=1000"
    }
