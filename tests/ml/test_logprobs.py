"""IFD from prompt log-probs (`ml.logprobs`).

Specification:
* the response's tokens are found by their character offsets, not by position: a token straddling the header
  and the response is not the response's, a generated token past the prompt is not either, and offsets that
  leave out a leading BOS text (llama-cpp-python) or count it (vLLM) give the same span;
* against the embedded llama.cpp server: the instruction that asked for an answer makes it far easier to
  predict than an unrelated one (lower conditioned loss and IFD); without the model's BOS text its log-probs
  are one token off and the probe says so; asked again, everything comes from the cache (no new llm_calls);
* an endpoint that answers without prompt log-probs, or serves no /completions, gives None for every pair,
  each request sent recorded, retried on 5xx, and an answer cached like any other.
"""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import sqlalchemy as sa

from infinstruct.ml.llm import BASE_URL_ENV, ChatSettings
from infinstruct.ml.llm_server import gguf_path, stop_local_llm
from infinstruct.ml.logprobs import EMBEDDED_BOS, ifd_scores, response_logprobs, supports_prompt_logprobs
from infinstruct.ml.roles import RoleSettings, resolve
from llm_double import JudgeDouble

LEAD = "<|im_start|>"
BODY = "Instruction:\nSay hi.\n\nResponse:\nHi there!"
# (token, offset into BODY, log-prob): "\nHi" straddles the header and the response (which starts at 32);
# the final "\n" is the one token generated (max_tokens 1), past the prompt
TOKENS = [
    ("Instruction", 0, None),
    (":", 11, -5.0),
    ("\n", 12, -1.0),
    ("Say", 13, -7.0),
    (" hi", 16, -4.0),
    (".\n\n", 19, -2.0),
    ("Response", 22, -9.0),
    (":", 30, -0.5),
    ("\nHi", 31, -3.0),
    (" there", 34, -0.25),
    ("!", 40, -0.75),
    ("\n", 41, -0.1),
]


def payload(tokens, shift: int = 0) -> dict:
    return {
        "tokens": [t for t, _, _ in tokens],
        "text_offset": [o + shift for _, o, _ in tokens],
        "token_logprobs": [v for _, _, v in tokens],
        "top_logprobs": [None] * len(tokens),
    }


def student_calls(engine, url: str) -> list[str]:
    with engine.connect() as conn:
        return (
            conn.execute(
                sa.text("select status from llm_calls where base_url = :u and role = 'student' order by id"), {"u": url}
            )
            .scalars()
            .all()
        )


def test_the_response_span_is_found_by_character_offsets():
    prompt, start = LEAD + BODY, len(LEAD) + BODY.index("Hi there")
    assert response_logprobs(payload(TOKENS), prompt, start, LEAD) == [-0.25, -0.75]  # offsets without the BOS
    counted = [(LEAD, -12, None), *((t, o, v if o else -6.0) for t, o, v in TOKENS)]  # vLLM: BOS listed, counted
    assert response_logprobs(payload(counted, shift=len(LEAD)), prompt, start, LEAD) == [-0.25, -0.75]
    plain = [(t, o, v) for t, o, v in TOKENS if o < 41]
    assert response_logprobs(payload(plain), BODY, BODY.index("\nHi"), "") == [-3.0, -0.25, -0.75]
    first = [("Hi", 0, None), (" there", 2, -0.25), ("!", 8, -0.75)]  # the first token has no log-prob
    assert response_logprobs(payload(first), "Hi there!", 0) == [-0.25, -0.75]
    assert response_logprobs(None, prompt, start, LEAD) is None
    assert response_logprobs({"tokens": [], "text_offset": [], "token_logprobs": []}, prompt, start) is None
    with pytest.raises(ValueError, match="do not line up"):
        response_logprobs(payload(TOKENS), "Something else entirely, of the same length as the other.", 5)


def test_the_embedded_model_s_bos_text_is_its_gguf_s():
    from llama_cpp import Llama

    vocab = Llama(str(gguf_path()), vocab_only=True, verbose=False)
    assert vocab.metadata["tokenizer.ggml.add_bos_token"] == "false"  # so llama.cpp would not add it
    assert vocab.detokenize([vocab.token_bos()], special=True).decode() == EMBEDDED_BOS


@pytest.fixture
def embedded(tmp_path, monkeypatch) -> ChatSettings:
    monkeypatch.setenv("INFINSTRUCT_HOME", str(tmp_path))
    monkeypatch.delenv(BASE_URL_ENV, raising=False)
    yield resolve(RoleSettings())
    stop_local_llm()


def test_an_answer_is_easier_after_its_own_instruction_on_the_embedded_model(engine, embedded):
    answer = "The capital of France is Paris."
    pairs = [("What is the capital of France?", answer), ("How many legs does a spider have?", answer)]
    relevant, irrelevant = ifd_scores(embedded, engine, pairs, run_id="ifd-test")
    # measured: conditioned 0.17 vs 2.04 nats per token, unconditioned 2.53 both, IFD 0.07 vs 0.81
    assert relevant.conditioned_loss * 4 < irrelevant.conditioned_loss
    assert relevant.unconditioned_loss == irrelevant.unconditioned_loss  # one request, asked once
    assert relevant.ratio * 4 < irrelevant.ratio < 1.5
    assert relevant.tokens == irrelevant.tokens == 7
    sent = student_calls(engine, embedded.base_url)
    assert sent == ["ok"] * 4  # the probe, two conditioned prompts, one unconditioned

    assert ifd_scores(embedded, engine, pairs) == [relevant, irrelevant]
    assert student_calls(engine, embedded.base_url) == sent  # all from the cache

    # llama-cpp-python without the model's BOS reads each log-prob one token off (~12 nats per token on counting)
    assert supports_prompt_logprobs(embedded, engine) and not supports_prompt_logprobs(embedded, engine, bos="")
    assert ifd_scores(embedded, engine, pairs, bos="") == [None, None]


class NoLogprobs:
    """/v1/completions that ignores echo and logprobs (first answering the statuses it is given)."""

    def __init__(self, *statuses: int):
        self.statuses, self.count = list(statuses), 0
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                double.count += 1
                code = double.statuses.pop(0) if double.statuses else 200
                answer = (
                    {"error": {"message": "try later"}}
                    if code != 200
                    else {
                        "id": "cmpl-1",
                        "object": "text_completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [{"index": 0, "text": "!", "logprobs": None, "finish_reason": "length"}],
                        "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
                    }
                )
                data = json.dumps(answer).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_an_endpoint_without_prompt_logprobs_gives_none(engine):
    pairs = [("What is the capital of France?", "Paris."), ("Name a colour.", "Blue.")]
    double = NoLogprobs(503)
    try:
        settings = ChatSettings(model=f"m-{uuid.uuid4().hex[:6]}", base_url=double.url, backoff_seconds=0.001)
        assert ifd_scores(settings, engine, pairs) == [None, None]
        assert student_calls(engine, double.url) == ["server_error", "ok"]  # the probe, retried; nothing more
        assert ifd_scores(settings, engine, pairs) == [None, None] and double.count == 2  # its answer cached
    finally:
        double.close()

    chat_only = JudgeDouble().then(("status", 404))  # serves chat; /completions is not found
    try:
        settings = ChatSettings(model=f"m-{uuid.uuid4().hex[:6]}", base_url=chat_only.url)
        assert ifd_scores(settings, engine, pairs) == [None, None]
        assert student_calls(engine, chat_only.url) == ["refused"] and chat_only.count() == 1
    finally:
        chat_only.close()
