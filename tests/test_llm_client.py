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

from infinstruct.ml.llm import PARAMS, ChatSettings, InvalidAnswer, JsonChat, request_params
from llm_double import JudgeDouble


@pytest.fixture(scope="module")
def double():
    d = JudgeDouble()
    yield d
    d.close()


def chat(engine, double, **settings) -> JsonChat:
    return JsonChat(ChatSettings(model=f"m-{uuid.uuid4().hex[:6]}", base_url=double.url, timeout_seconds=0.5,
                                 backoff_seconds=0.001, **settings), engine)


def as_json(text: str) -> dict:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidAnswer(str(exc)) from exc


def calls(engine, model: str) -> list[tuple]:
    with engine.connect() as conn:
        return conn.execute(sa.text("select attempt, status, prompt_tokens, completion_tokens, cost_usd from llm_calls"
                                    " where model = :m order by id"), {"m": model}).all()


def test_every_request_sent_is_recorded_with_its_tokens_and_cost(engine, double):
    client = chat(engine, double, usd_per_million_prompt_tokens=2.0, usd_per_million_completion_tokens=10.0)
    double.then(("status", 500), ("content", "not json"), ("content", '{"ok": 1}'))
    assert client.ask_many([[{"role": "user", "content": "hi"}]], "v1", as_json) == [{"ok": 1}]
    rows = calls(engine, client.settings.model)
    assert [(a, s) for a, s, *_ in rows] == [(1, "server_error"), (2, "invalid_answer"), (3, "ok")]
    assert rows[2][2:] == (50, 5, pytest.approx((50 * 2.0 + 5 * 10.0) / 1e6))
    before = double.count()
    assert client.ask_many([[{"role": "user", "content": "hi"}]], "v1", as_json) == [{"ok": 1}]   # cached
    assert double.count() == before and len(calls(engine, client.settings.model)) == 3


def test_sampling_and_seeds_are_sent_and_keyed(engine, double):
    messages = [[{"role": "user", "content": f"write a poem {uuid.uuid4().hex[:6]}"}]] * 2
    sampled = chat(engine, double, temperature=0.8, top_p=0.9, max_tokens=32)
    double.then(("content", '{"v": 1}'), ("content", '{"v": 2}'))
    before = double.count()
    assert sampled.ask_many(messages, "v1", as_json, seeds=[1, 2]) == [{"v": 1}, {"v": 2}]   # two seeds: two asks
    sent = [r["body"] for r in double.requests[before:]]
    assert {(b["temperature"], b["top_p"], b["max_tokens"], b["seed"]) for b in sent} == {(0.8, 0.9, 32, 1),
                                                                                          (0.8, 0.9, 32, 2)}
    before = double.count()
    assert sampled.ask_many(messages, "v1", as_json, seeds=[2, 1]) == [{"v": 2}, {"v": 1}]   # each from the cache
    assert double.count() == before
    hotter = JsonChat(sampled.settings.model_copy(update={"temperature": 1.0}), engine)
    double.then(("content", '{"v": 3}'))
    assert hotter.ask_many(messages[:1], "v1", as_json, seeds=[1]) == [{"v": 3}]   # another temperature: asked
    assert double.count() == before + 1


def test_the_default_settings_keep_the_keys_answers_were_cached_under():
    assert request_params(ChatSettings(model="m")) == PARAMS
    assert request_params(ChatSettings.model_validate({"model": "m", "temperature": 0})) == PARAMS


def test_free_text_answers_are_asked_without_a_json_format(engine, double):
    client = chat(engine, double, json_answers=False)
    double.then(("content", "Once upon a time."))
    before = double.count()
    assert client.ask_many([[{"role": "user", "content": f"tell {uuid.uuid4().hex}"}]], "v1", str) == ["Once upon a time."]
    assert "response_format" not in double.requests[before]["body"]
