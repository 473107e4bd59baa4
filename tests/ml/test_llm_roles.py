"""LLM roles: where each role's requests go.

Specification:
* a role the recipe leaves out (and no $INFINSTRUCT_LLM_BASE_URL) goes to the embedded server, one request
  at a time, and a structured request through it ends as a value or a recorded failure, never a crash;
* a role with an endpoint uses it as given; an endpoint without a model, or an unknown role, is an error;
* a recipe without an `llm` section hashes as before the section existed.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from pydantic import BaseModel

from conftest import SAMPLE_RECIPE, write_recipe
from infinstruct.config import RecipeError, load_recipe, recipe_hash
from infinstruct.ml.llm import BASE_URL_ENV
from infinstruct.ml.llm_server import stop_local_llm
from infinstruct.ml.roles import LLMSettings, Role, chat_for, resolve


class Capital(BaseModel):
    city: str


@pytest.fixture
def llm_home(tmp_path, monkeypatch):
    monkeypatch.setenv("INFINSTRUCT_HOME", str(tmp_path))
    monkeypatch.delenv(BASE_URL_ENV, raising=False)
    yield tmp_path
    stop_local_llm()


def test_a_role_left_out_asks_the_embedded_server_one_request_at_a_time(engine, llm_home):
    llm = LLMSettings.model_validate({"roles": {"judge": {"temperature": 0.2, "max_tokens": 40}}})
    settings = resolve(llm.role(Role.TAGGER))
    assert settings.base_url.startswith("http://127.0.0.1:") and settings.concurrency == 1
    client = chat_for(llm, Role.JUDGE, engine)
    assert client.settings.temperature == 0.2 and client.base_url == settings.base_url  # one server, two roles
    [answer] = client.ask_structured(
        [[{"role": "user", "content": 'What is the capital of France? Answer as JSON: {"city": "..."}'}]],
        "roles-test-v1",
        Capital,
    )
    assert (answer.value is None) == (answer.error is not None)  # SmolLM2 may fail; it never crashes the batch
    with engine.connect() as conn:
        assert (
            conn.execute(
                sa.text("select count(*) from llm_calls where base_url = :u and completion_tokens > 0"),
                {"u": client.base_url},
            ).scalar_one()
            >= 1
        )


def test_a_configured_endpoint_is_used_as_given(monkeypatch):
    monkeypatch.delenv(BASE_URL_ENV, raising=False)
    llm = LLMSettings.model_validate(
        {"roles": {"evolver": {"base_url": "http://vllm.example:8000/v1", "model": "qwen", "concurrency": 8}}}
    )
    settings = resolve(llm.role("evolver"))
    assert (settings.base_url, settings.model, settings.concurrency) == ("http://vllm.example:8000/v1", "qwen", 8)
    monkeypatch.setenv(BASE_URL_ENV, "http://127.0.0.1:9/v1")
    with pytest.raises(ValueError, match="needs a model"):
        resolve(llm.role("tagger"))
    assert resolve(LLMSettings.model_validate({"roles": {"tagger": {"model": "m"}}}).role("tagger")).model == "m"


def test_the_recipe_section_is_checked_and_absent_changes_nothing(tmp_path):
    plain, _ = load_recipe(SAMPLE_RECIPE)
    assert recipe_hash(plain) == recipe_hash(plain.model_copy(update={"llm": LLMSettings()}))
    sources = [{"name": "a", "path": "a.jsonl", "format": "alpaca"}]
    with pytest.raises(RecipeError, match="llm.roles.writer"):
        load_recipe(write_recipe(tmp_path, "roles_bad", sources, llm={"roles": {"writer": {}}}))
    with pytest.raises(RecipeError, match="needs a model"):
        load_recipe(
            write_recipe(tmp_path, "roles_nomodel", sources, llm={"roles": {"judge": {"base_url": "http://x/v1"}}})
        )
    good, _ = load_recipe(
        write_recipe(tmp_path, "roles_ok", sources, llm={"roles": {"judge": {"model": "gpt-4o-mini"}}})
    )
    assert good.llm.role("judge").model == "gpt-4o-mini" and recipe_hash(good) != recipe_hash(plain)


def test_the_embedded_server_s_answers_outlive_its_port(engine, llm_home):
    first = resolve(LLMSettings().role(Role.TAGGER))
    stop_local_llm()
    second = resolve(LLMSettings().role(Role.TAGGER))
    assert first.base_url != second.base_url or first == second  # usually a new port
    assert first.endpoint_name == second.endpoint_name == "embedded:SmolLM2-135M-Instruct.Q4_1.gguf"
