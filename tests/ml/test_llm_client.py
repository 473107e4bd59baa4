"""The LLM client (`ml.llm.JsonChat`) beyond the judge: every request recorded, sampling in the cache key.

Specification (the network is the OpenAI-compatible double of llm_double.py):
* every request sent is a row of `llm_calls`, one per attempt: how it ended, its tokens and cost from the
  settings' prices; a cached answer sends nothing and adds no row;
* temperature, top_p, max_tokens and a per-request seed are sent and are part of the cache key: changing one
  asks again, the same one is answered from the cache; the default settings keep the judge's old key;
* free-text answers (json_answers: false) are asked for without a JSON response format.
"""

from __future__ import annotations

import json
import uuid

import pytest
import sqlalchemy as sa
from pydantic import BaseModel

from infinstruct.ml.llm import PARAMS, BudgetExhausted, ChatSettings, InvalidAnswer, JsonChat, request_params
from llm_double import JudgeDouble


@pytest.fixture(scope="module")
def double():
    d = JudgeDouble()
    yield d
    d.close()


def chat(engine, double, **settings) -> JsonChat:
    # one request at a time: the double answers in arrival order
    return JsonChat(
        ChatSettings(
            model=f"m-{uuid.uuid4().hex[:6]}",
            base_url=double.url,
            timeout_seconds=0.5,
            concurrency=1,
            backoff_seconds=0.001,
            **settings,
        ),
        engine,
    )


def as_json(text: str) -> dict:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidAnswer(str(exc)) from exc


def calls(engine, model: str) -> list[tuple]:
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "select attempt, status, prompt_tokens, completion_tokens, cost_usd from llm_calls"
                " where model = :m order by id"
            ),
            {"m": model},
        ).all()


def test_every_request_sent_is_recorded_with_its_tokens_and_cost(engine, double):
    client = chat(engine, double, usd_per_million_prompt_tokens=2.0, usd_per_million_completion_tokens=10.0)
    double.then(("status", 500), ("content", "not json"), ("content", '{"ok": 1}'))
    assert client.ask_many([[{"role": "user", "content": "hi"}]], "v1", as_json) == [{"ok": 1}]
    rows = calls(engine, client.settings.model)
    assert [(a, s) for a, s, *_ in rows] == [(1, "server_error"), (2, "invalid_answer"), (3, "ok")]
    assert rows[2][2:] == (50, 5, pytest.approx((50 * 2.0 + 5 * 10.0) / 1e6))
    before = double.count()
    assert client.ask_many([[{"role": "user", "content": "hi"}]], "v1", as_json) == [{"ok": 1}]  # cached
    assert double.count() == before and len(calls(engine, client.settings.model)) == 3


def test_sampling_and_seeds_are_sent_and_keyed(engine, double):
    messages = [[{"role": "user", "content": f"write a poem {uuid.uuid4().hex[:6]}"}]] * 2
    sampled = chat(engine, double, temperature=0.8, top_p=0.9, max_tokens=32)
    double.then(("content", '{"v": 1}'), ("content", '{"v": 2}'))
    before = double.count()
    assert sampled.ask_many(messages, "v1", as_json, seeds=[1, 2]) == [{"v": 1}, {"v": 2}]  # two seeds: two asks
    sent = [r["body"] for r in double.requests[before:]]
    assert {(b["temperature"], b["top_p"], b["max_tokens"], b["seed"]) for b in sent} == {
        (0.8, 0.9, 32, 1),
        (0.8, 0.9, 32, 2),
    }
    before = double.count()
    assert sampled.ask_many(messages, "v1", as_json, seeds=[2, 1]) == [{"v": 2}, {"v": 1}]  # each from the cache
    assert double.count() == before
    hotter = JsonChat(sampled.settings.model_copy(update={"temperature": 1.0}), engine)
    double.then(("content", '{"v": 3}'))
    assert hotter.ask_many(messages[:1], "v1", as_json, seeds=[1]) == [{"v": 3}]  # another temperature: asked
    assert double.count() == before + 1


def test_the_default_settings_keep_the_keys_answers_were_cached_under():
    assert request_params(ChatSettings(model="m")) == PARAMS
    assert request_params(ChatSettings.model_validate({"model": "m", "temperature": 0})) == PARAMS


def test_free_text_answers_are_asked_without_a_json_format(engine, double):
    client = chat(engine, double, json_answers=False)
    double.then(("content", "Once upon a time."))
    before = double.count()
    assert client.ask_many([[{"role": "user", "content": f"tell {uuid.uuid4().hex}"}]], "v1", str) == [
        "Once upon a time."
    ]
    assert "response_format" not in double.requests[before]["body"]


class Labels(BaseModel):
    abilities: list[str]


def test_a_structured_answer_that_does_not_fit_gets_one_repair_then_is_a_recorded_failure(engine, double):
    client = chat(engine, double)
    asks = [[{"role": "user", "content": f"label {uuid.uuid4().hex[:6]} #{n}"}] for n in range(3)]
    double.then(
        ("content", '{"abilities": ["math"]}'),
        ("content", '{"skills": 1}'),
        ("content", "oops"),
        ("content", '{"abilities": ["coding"]}'),
        ("content", '{"abilities": "not a list"}'),
    )
    answers = client.ask_structured(asks, "v1", Labels)
    assert [a.value for a in answers] == [Labels(abilities=["math"]), Labels(abilities=["coding"]), None]
    assert [a.repaired for a in answers] == [False, True, True]
    assert "abilities" in answers[2].error and answers[2].text == '{"abilities": "not a list"}'
    repair = double.requests[-1]["body"]["messages"]  # the request's own turns, its output, then the error
    assert repair[0] == asks[2][0] and repair[1] == {"role": "assistant", "content": "oops"}
    assert "cannot be used" in repair[2]["content"] and '"abilities"' in repair[2]["content"]
    statuses = [s for _, s, *_ in calls(engine, client.settings.model)]
    assert sorted(statuses) == ["invalid_answer"] * 3 + ["ok"] * 2
    before = double.count()
    assert [a.value for a in client.ask_structured(asks, "v1", Labels)] == [a.value for a in answers]  # cached
    assert double.count() == before


def test_a_budget_cap_stops_sending_and_the_next_run_continues_from_the_cache(engine, double):
    asks = [[{"role": "user", "content": f"budget {uuid.uuid4().hex[:6]} #{n}"}] for n in range(3)]
    capped = chat(engine, double, max_tokens_per_step=100)  # each answer of the double costs 55 tokens
    double.then(*[("content", f'{{"n": {n}}}') for n in range(3)])
    with pytest.raises(BudgetExhausted, match=r"step tokens 110 of 100.*2 of 3 requests answered") as stop:
        capped.ask_many(asks, "v1", as_json)
    assert (stop.value.answered, stop.value.total) == (2, 3)
    before = double.count()
    again = JsonChat(capped.settings, engine)  # the next run: two answers from the cache, one request sent
    assert again.ask_many(asks, "v1", as_json) == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert double.count() == before + 1


def test_a_run_budget_counts_every_step_of_the_run(engine, double):
    run_id = f"budget-{uuid.uuid4().hex[:6]}"
    settings = dict(usd_per_million_prompt_tokens=2.0, usd_per_million_completion_tokens=10.0, max_usd_per_run=0.0002)
    first = JsonChat(chat(engine, double, **settings).settings, engine, run_id=run_id, role="tagger")
    double.then(("content", "a"), ("content", "b"))
    first.ask_many([[{"role": "user", "content": f"run budget {uuid.uuid4().hex}"}]], "v1", str)  # 0.00015 USD
    second = JsonChat(first.settings, engine, run_id=run_id, role="evolver")  # another step of the same run
    second.ask_many([[{"role": "user", "content": f"run budget {uuid.uuid4().hex}"}]], "v1", str)  # 0.0003 now
    before = double.count()
    with pytest.raises(BudgetExhausted, match="run USD"):
        second.ask_many([[{"role": "user", "content": f"run budget {uuid.uuid4().hex}"}]], "v1", str)
    assert double.count() == before  # stopped before sending
    with engine.connect() as conn:
        roles = conn.execute(
            sa.text("select role from llm_calls where run_id = :r order by id"), {"r": run_id}
        ).scalars()
        assert list(roles) == ["tagger", "evolver"]


def test_answers_are_cached_under_the_endpoint_name_when_one_is_given(engine, double):
    """The embedded server gets a new port at each start: named, its answers outlive the port."""
    question = [[{"role": "user", "content": f"named {uuid.uuid4().hex}"}]]
    first = chat(engine, double, endpoint_name="replicas")
    double.then(("content", '{"a": 1}'))
    assert first.ask_many(question, "v1", as_json) == [{"a": 1}]
    moved = JsonChat(
        first.settings.model_copy(update={"base_url": double.url.replace("127.0.0.1", "localhost")}), engine
    )  # the same server under another URL
    before = double.count()
    assert moved.ask_many(question, "v1", as_json) == [{"a": 1}]
    assert double.count() == before
