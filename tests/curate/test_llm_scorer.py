"""The LLM judge as the model score (scorer kind `openai`): score_records asks a chat model behind an
OpenAI-compatible endpoint to rate each answer 1-10, on a real PostgreSQL. The network is an
OpenAI-compatible double (`JudgeDouble`, a tiny HTTP server on 127.0.0.1), programmable per request
and counting every request it gets; everything else is the real code.

Specification:
* a judge's score s lands in signals["model_score"] as (s - 1) / 9, with `record_scores.scorer` =
  "judge:<model>:prompt=v<JUDGE_PROMPT_VERSION>:chars=<max_chars>", and counts in quality like any model score;
* the request is temperature 0, `response_format` json_object, the judge prompt and the record's texts;
* 429 (after its Retry-After), 500, a timeout, non-JSON output and a score outside 1..10 are retried and then
  succeed; 401 fails at once with the endpoint's message; retries that never succeed fail with the last error;
* never paid twice: a second run makes no request, and a task that dies halfway pays, when retried, only for
  the records it had not got an answer for (the answers are kept in `llm_responses` as they arrive);
* another prompt version or another model scores every record again;
* no endpoint configured is a clear error saying how to configure one; the key comes from the environment.
"""

from __future__ import annotations

import hashlib
import json
import uuid

import pytest
import sqlalchemy as sa

from conftest import (
    run_dedup_steps,
    run_partitions,
    run_scoring_steps,
    run_selection_steps,
    stored_scores,
    write_jsonl,
    write_recipe,
)
from infinstruct import pipeline
from infinstruct.curate.scoring import signals
from infinstruct.curate.scoring.signals import JUDGE_PROMPT, JUDGE_PROMPT_VERSION, LLMJudgeScorer, ScoringSettings
from infinstruct.ml.llm import LLMConfigError, LLMError
from llm_double import JudgeDouble


@pytest.fixture(scope="module")
def double():
    d = JudgeDouble()
    yield d
    d.close()


def judge(double: JudgeDouble, **overrides) -> dict:
    """Scorer settings on the double, fast: 0.2 s timeout, 1 ms backoff."""
    return {
        "kind": "openai",
        "model": "judge-a",
        "base_url": double.url,
        "timeout_seconds": 0.2,
        "backoff_seconds": 0.001,
        "max_retries": 3,
        **overrides,
    }


def scorer(engine, settings: dict) -> LLMJudgeScorer:
    return LLMJudgeScorer(ScoringSettings(scorer=settings).scorer, engine)


def fresh(text: str) -> str:
    """A text no earlier test has had answered (the cache would answer it)."""
    return f"{text} [{uuid.uuid4().hex[:8]}]"


# --- the client: requests, retries, errors ------------------------------------------------------


def test_a_judge_score_becomes_a_model_score_in_0_1(engine, double):
    questions = [fresh("What is 2 + 2?"), fresh("Name a prime number."), fresh("Spell 'cat'.")]
    double.scores.update({questions[0]: 10, questions[1]: 1, questions[2]: 4})
    before = double.count()
    values = scorer(engine, judge(double)).score(questions, ["4", "9", "c-a-t"])
    assert values.tolist() == pytest.approx([1.0, 0.0, 1 / 3])
    sent = [r["body"] for r in double.requests[before:]]
    assert len(sent) == 3 and {r["model"] for r in sent} == {"judge-a"}
    assert all(r["temperature"] == 0 and r["response_format"] == {"type": "json_object"} for r in sent)
    assert all(r["messages"][0] == {"role": "system", "content": JUDGE_PROMPT} for r in sent)
    assert any("[Response]\nc-a-t" in r["messages"][1]["content"] for r in sent)


@pytest.mark.parametrize(
    "failure",
    [
        ("status", 429, {"Retry-After": "0"}),
        ("status", 500),
        ("status", 503),
        ("hang", 0.6),  # past the 0.2 s timeout
        ("content", "I would give it a 7."),  # not JSON
        ("content", '{"score": 11}'),  # not 1..10
        ("content", '{"score": 6.5}'),
        ("content", '{"rating": 6}'),
    ],
    ids=["429", "500", "503", "timeout", "not-json", "out-of-range", "not-integer", "no-score"],
)
def test_transient_failures_and_invalid_answers_are_retried_then_succeed(engine, double, failure):
    question = fresh("Why is the sea salty?")
    double.scores[question] = 8
    before = double.count()
    double.then(failure, failure)
    assert scorer(engine, judge(double)).score([question], ["Rivers carry dissolved salts."]).tolist() == [7 / 9]
    assert double.count() - before == 3


def test_a_429_waits_for_its_retry_after(engine, double):
    before = double.count()
    double.then(("status", 429, {"Retry-After": "0.3"}))
    scorer(engine, judge(double)).score([fresh("Why do we sleep?")], ["To rest."])
    first, second = double.requests[before:]
    assert second["at"] - first["at"] >= 0.3  # not the 1 ms backoff


def test_a_401_fails_at_once_with_the_endpoints_message(engine, double):
    before = double.count()
    double.then(("status", 401))
    with pytest.raises(LLMError, match=r"refused model 'judge-a' with 401: .*double says 401.*not retried"):
        scorer(engine, judge(double)).score([fresh("Hello?")], ["Hi."])
    assert double.count() - before == 1


def test_retries_that_never_succeed_fail_with_the_last_error_not_a_default(engine, double):
    before = double.count()
    double.then(*[("content", "not json")] * 3)
    with pytest.raises(
        LLMError,
        match=r"no valid answer after 3 attempts; last: invalid answer \(not JSON\)"
        r".*request 1 of 1: .*Hello\?",
    ):
        scorer(engine, judge(double, max_retries=2)).score([fresh("Hello?")], ["Hi."])
    assert double.count() - before == 3


def test_no_endpoint_is_a_clear_configuration_error(engine, monkeypatch):
    monkeypatch.delenv("INFINSTRUCT_LLM_BASE_URL", raising=False)
    settings = {"kind": "openai", "model": "judge-a"}
    with pytest.raises(
        LLMConfigError, match="set base_url in the recipe .* or the environment variable INFINSTRUCT_LLM_BASE_URL"
    ):
        scorer(engine, settings).score(["Hello?"], ["Hi."])


def test_the_endpoint_and_key_come_from_the_environment(engine, double, monkeypatch):
    monkeypatch.setenv("INFINSTRUCT_LLM_BASE_URL", double.url)
    monkeypatch.setenv("JUDGE_KEY", "secret-123")
    settings = {"kind": "openai", "model": "judge-a", "api_key_env": "JUDGE_KEY", "timeout_seconds": 0.2}
    before = double.count()
    scorer(engine, settings).score([fresh("Hello?")], ["Hi."])
    monkeypatch.delenv("JUDGE_KEY")  # a local server needs no key: a placeholder is sent
    scorer(engine, settings).score([fresh("Hello?")], ["Hi."])
    assert [r["authorization"] for r in double.requests[before:]] == ["Bearer secret-123", "Bearer no-key"]


def test_a_key_is_never_written_in_the_recipe():
    with pytest.raises(ValueError, match="api_key_env"):
        ScoringSettings(scorer={"kind": "openai", "model": "gpt-4o-mini", "api_key_env": "sk-proj-abc123"})
    with pytest.raises(ValueError, match="model"):
        ScoringSettings(scorer={"kind": "openai"})


def test_the_judge_prompt_is_versioned():
    # Changed the prompt? Bump JUDGE_PROMPT_VERSION (every record is then scored again) and this pin with it.
    template = signals._judge_messages("{instruction}", "{response}", 10_000)
    pin = hashlib.sha256(json.dumps(template).encode()).hexdigest()[:12]
    assert (JUDGE_PROMPT_VERSION, pin) == (1, "bb2445009f47")
    assert scorer(None, {"kind": "openai", "model": "m", "max_chars": 500}).name == "judge:m:prompt=v1:chars=500"


# --- the score_records stage -------------------------------------------------------------------

QA = [  # (question, answer, the judge's score)
    ("How far away is the Moon from the Earth?", "About 384,000 kilometres on average.", 10),
    ("What gas do plants take in from the air?", "Carbon dioxide, which they turn into sugar with sunlight.", 9),
    ("Why does a compass point north?", "Its magnetised needle lines up with the Earth's magnetic field.", 8),
    ("What is the boiling point of water at sea level?", "Water boils at 50 degrees Celsius.", 3),
    ("How many legs does a spider have?", "Spiders have six legs, like all insects.", 2),
    ("What is the largest planet in the Solar System?", "I like turtles.", 1),
]
EXEMPLARS = {
    "science": [
        "Why do objects fall to the ground?",
        "How does the heart pump blood?",
        "What causes earthquakes?",
        "How do plants make food from sunlight?",
    ],
    "code": ["Write a Python function that reverses a string.", "Fix the bug in this JavaScript loop."],
}


def recipe(folder, scorer_settings: dict) -> str:
    # judged quality alone ranks the records; the selection keeps the better half
    selection = {
        "domains": {"builtin": False, "domains": {d: {"exemplars": e} for d, e in EXEMPLARS.items()}},
        "shares": {"science": 1.0},
        "counts": {"code": 0},
        "size": 0.5,
        "tolerance": 0.05,
        "rank": {"quality": 1.0, "difficulty": 0.0, "importance": 0.0},
        "diversity_threshold": 0.99,
        "scoring": {
            "scorer": scorer_settings,
            "quality": {"length": 0, "elaboration": 0, "structure": 0, "reasoning": 0, "model": 1.0},
        },
    }
    return write_recipe(
        folder,
        f"judge_{uuid.uuid4().hex[:6]}",
        [{"name": "qa", "path": "qa.jsonl", "format": "alpaca"}],
        semantic_dedup=None,
        selection=selection,
    )


@pytest.fixture(scope="module")
def story(engine, double, tmp_path_factory):
    """Runs over the same six records; what each stored and how many requests each sent."""
    folder = tmp_path_factory.mktemp("llm_scorer")
    write_jsonl(folder / "qa.jsonl", [{"instruction": q, "input": "", "output": a} for q, a, _ in QA])
    double.scores.update({q: s for q, _, s in QA})
    out, calls = {}, {}

    def measured(name, action):
        before = double.count()
        out[name] = action()
        calls[name] = double.count() - before

    measured("first", lambda: stored_scores(engine, run_scoring_steps(recipe(folder, judge(double)))))
    measured("second", lambda: stored_scores(engine, run_scoring_steps(recipe(folder, judge(double)))))
    out["selected"] = selected(engine, recipe(folder, judge(double)))

    # another model, one request at a time; the third is refused: the task dies with two answers paid for
    dying = recipe(folder, judge(double, model="judge-c", concurrency=1))
    run_id = run_dedup_steps(dying)
    parts = run_partitions(run_id)
    before = double.count()
    double.then(("score", 10), ("score", 10), ("status", 401))
    with pytest.raises(LLMError, match="401") as failure:
        for part in parts:
            pipeline.score_records(run_id, part)
    out["failure"], calls["dying"] = str(failure.value), double.count() - before
    measured("retried", lambda: [pipeline.score_records(run_id, p) for p in parts] and stored_scores(engine, run_id))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(signals, "JUDGE_PROMPT_VERSION", 2)
        measured(
            "new_prompt",
            lambda: stored_scores(engine, run_scoring_steps(recipe(folder, judge(double, model="judge-c")))),
        )
    return out, calls


def selected(engine, recipe_path) -> set[str]:
    """The instructions the selection keeps, after its gate passed."""
    run_id = run_selection_steps(recipe_path)
    assert pipeline.check_selection(run_id)["success"]
    return {q for q, r in stored_scores(engine, run_id).items() if r["selected"]}


def test_score_records_stores_the_judges_score_and_name(story):
    out, calls = story
    assert calls["first"] == len(QA)
    assert {q: r["model_score"] for q, r in out["first"].items()} == pytest.approx({q: (s - 1) / 9 for q, _, s in QA})
    assert {r["scorer"] for r in out["first"].values()} == {"judge:judge-a:prompt=v1:chars=4000"}
    assert all(r["quality"] == pytest.approx(r["model_score"]) for r in out["first"].values())  # model weight only


def test_the_selection_keeps_the_answers_the_judge_rated_best(story):
    out, _ = story
    assert out["selected"] == {q for q, _, s in QA if s >= 8}


def test_a_second_run_sends_no_request(story):
    out, calls = story
    assert calls["second"] == 0 and out["second"] == out["first"]


def test_a_task_that_died_halfway_pays_on_retry_only_for_what_it_had_not_got(story):
    out, calls = story
    # the third request was refused; the next, if already in flight, was answered and kept too
    assert calls["dying"] in (3, 4) and "refused model 'judge-c' with 401" in out["failure"]
    answered = calls["dying"] - 1
    assert calls["retried"] == len(QA) - answered  # the answers it got are in llm_responses
    assert {r["scorer"] for r in out["retried"].values()} == {"judge:judge-c:prompt=v1:chars=4000"}
    assert sorted(r["model_score"] for r in out["retried"].values()).count(1.0) >= 2  # the two 10s kept


def test_another_model_or_prompt_version_scores_every_record_again(story):
    out, calls = story
    assert calls["dying"] - 1 + calls["retried"] == len(QA)  # judge-a's scores were not reused for judge-c
    assert calls["new_prompt"] == len(QA)
    assert {r["scorer"] for r in out["new_prompt"].values()} == {"judge:judge-c:prompt=v2:chars=4000"}


def test_answers_are_kept_with_their_usage(engine, story):
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "select model, usage, response->'choices'->0->'message'->>'content'"
                " from llm_responses where model = 'judge-c'"
            )
        ).all()
    assert len(rows) == 2 * len(QA)  # prompt v1 and v2
    assert all(
        usage["total_tokens"] == 55 and json.loads(content)["score"] in range(1, 11) for _, usage, content in rows
    )
