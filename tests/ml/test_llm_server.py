"""The embedded LLM: llama.cpp's OpenAI-compatible server with SmolLM2-135M-Instruct, from the wheels.

Specification:
* with nothing configured it starts on loopback, answers OpenAI chat requests (with token usage), and is
  shared: a second process (or call) finds it running instead of starting another;
* it is stopped on request, and a stopped server is started again when needed.
"""

from __future__ import annotations

import openai
import pytest

from infinstruct.ml.llm_server import _alive, ensure_local_llm, gguf_path, stop_local_llm


@pytest.fixture
def llm_home(tmp_path, monkeypatch):
    monkeypatch.setenv("INFINSTRUCT_HOME", str(tmp_path))
    yield tmp_path
    stop_local_llm()


def test_the_model_ships_in_a_wheel():
    assert gguf_path().stat().st_size > 50_000_000


def test_the_embedded_server_answers_chat_requests_and_is_shared(llm_home):
    server = ensure_local_llm(threads=2, context=2048)
    assert server.base_url.startswith("http://127.0.0.1:")
    assert ensure_local_llm() == server  # found running, not started twice
    client = openai.OpenAI(base_url=server.base_url, api_key="no-key", max_retries=0)
    reply = client.chat.completions.create(
        model=server.model,
        max_tokens=16,
        temperature=0,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
    )
    assert reply.choices[0].message.content.strip()
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0

    assert stop_local_llm() and not _alive(server.pid)
    assert not stop_local_llm()  # nothing left to stop
    restarted = ensure_local_llm(threads=2, context=2048)
    assert restarted.pid != server.pid
