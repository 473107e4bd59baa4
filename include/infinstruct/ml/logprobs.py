"""Instruction-Following Difficulty (IFD, Li et al. 2023, "From Quantity to Quality") from prompt log-probs.

IFD(instruction, response) = loss(response | instruction) / loss(response), each the mean negative log-prob per
response token. Low: the instruction makes the answer easy to predict; near 1: it hardly helps (a hard
pair, what Phase 2 looks for in a seed); above 1 it misleads (Li et al. drop such pairs). The losses come from
the student role's OpenAI-compatible POST /v1/completions asked to echo the prompt: {echo: true, logprobs: 1,
max_tokens: 1, temperature: 0}. An endpoint that gives no usable prompt log-probs gets None, and the caller
uses its proxy.

What llama-cpp-python's server (0.3.x, the embedded one) answers, measured:
* choices[0].logprobs holds parallel lists: tokens (str), text_offset (int, characters into the prompt),
  token_logprobs (float, null for the first token) and top_logprobs. Tokens do not map 1:1 to characters (a
  token may straddle the header and the response; special tokens are not listed), so a response's tokens are
  those whose offset is at or after its first character and before the prompt's end.
* max_tokens 0 means "until the context is full" there, so 1 it is; the token it generates may be listed after
  the prompt's (its offset is past the prompt: left out).
* It reads token i's log-prob from the distribution *after* token i (one token off: the tests' France pair
  scored 14.5 nats per token instead of 0.17) unless the prompt starts with the model's BOS token, which it
  then drops from the lists, offsets included (they count from after the BOS text). SmolLM2 adds no BOS
  itself, so prompts to the embedded model start with its BOS text (`default_bos`); the offsets are matched
  against the prompt with and without that text, whichever lines the tokens up, so a server that counts it
  (vLLM) is read right too.
* It sorts the whole vocabulary in Python for every token: about 1.4 s for a 25-token prompt on 2 cores.

`supports_prompt_logprobs` sends one counting prompt ("1, 2, ... 12") and wants its log-probs present and
plausible (mean above -3 nats per token; one token off they are near -12): a server that ignores echo, refuses
it, or shifts the log-probs is told apart from one whose numbers can be trusted.

Never paid twice: each answer is kept in `llm_responses` under `ml.llm.request_hash` of the prompt as
messages=[{"role": "prompt", ...}] (no chat request has that role, so no key collides), looked up before
sending; every request sent is a row of `llm_calls` (role student). 429 (after Retry-After), 5xx, timeouts
and connection errors are retried with backoff; any other status fails at once (`LLMRefused`; to the probe
it means "no prompt log-probs"). The client is a `JsonChat` (its cache, call records, backoff and budget caps)
that asks another endpoint path.
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from infinstruct.ml.llm import BudgetExhausted, ChatSettings, JsonChat, LLMError, request_hash, retry_after
from infinstruct.ml.llm_server import MODEL_ALIAS
from infinstruct.ml.roles import Role

log = logging.getLogger(__name__)

PROMPT_VERSION = "ifd-v1"
PARAMS = {"echo": True, "logprobs": 1, "max_tokens": 1, "temperature": 0}
# Both prompts end in the same header, so the same response tokens (the first included) are scored in each and
# the ratio measures only what the instruction adds.
CONDITIONED = "Instruction:\n{instruction}\n\nResponse:\n"
UNCONDITIONED = "Response:\n"
EMBEDDED_BOS = "<|im_start|>"  # SmolLM2-135M-Instruct's BOS token (id 1; the GGUF says add_bos_token: false)
PROBE_HEAD, PROBE_TAIL = "1, 2, 3, 4, ", "5, 6, 7, 8, 9, 10, 11, 12"  # the tail is scored
PLAUSIBLE_LOSS = 3.0  # nats per token on counting: any aligned LM is far below, one token off is far above
ROLE = str(Role.STUDENT)  # the small model whose losses pick informative seeds


class LLMRefused(LLMError):
    """The endpoint refused the request (a 4xx other than 429): not retried."""


@dataclass(frozen=True)
class IFD:
    """The losses (mean negative log-prob per response token) with and without the instruction, their ratio."""

    conditioned_loss: float
    unconditioned_loss: float
    ratio: float
    tokens: int  # response tokens scored (in the conditioned prompt)


def default_bos(settings: ChatSettings) -> str:
    """The text a prompt starts with: the embedded model's BOS (llama-cpp-python needs it, module docstring)."""
    return EMBEDDED_BOS if settings.model == MODEL_ALIAS else ""


def response_logprobs(logprobs: dict | None, prompt: str, start: int, lead: str = "") -> list[float] | None:
    """The log-probs of the tokens of prompt[start:] from an echoed completion's `logprobs`, or None when it has
    none. `prompt` is the text sent, starting with `lead`, which a server may leave out of its offsets."""
    if not logprobs or not logprobs.get("tokens") or logprobs.get("text_offset") is None:
        return None
    tokens, offsets, values = logprobs["tokens"], logprobs["text_offset"], logprobs["token_logprobs"]

    def matching(shift: int) -> int:
        return sum(1 for t, o in zip(tokens, offsets) if t and prompt[o + shift : o + shift + len(t)] == t)

    shift = max({0, len(lead)}, key=lambda s: (matching(s), -s))
    if matching(shift) * 2 < sum(1 for t in tokens if t):
        raise ValueError(
            f"the echoed tokens do not line up with the prompt (first tokens {tokens[:5]!r}, offsets "
            f"{offsets[:5]!r}; prompt {prompt[:80]!r}): is the endpoint echoing another prompt?"
        )
    return [v for o, v in zip(offsets, values) if start <= o + shift < len(prompt) and v is not None]


def supports_prompt_logprobs(
    settings: ChatSettings, engine: Engine, *, bos: str | None = None, run_id: str | None = None
) -> bool:
    """Whether the endpoint gives trustworthy prompt log-probs: one tiny counting request (cached); False when
    it answers without them, refuses echo, or they are implausible (one token off: pass its model's `bos`)."""
    lead = default_bos(settings) if bos is None else bos
    prompt = lead + PROBE_HEAD + PROBE_TAIL
    try:
        answer = _EchoClient(settings, engine, run_id).logprobs_of([prompt])[prompt]
    except LLMRefused as e:
        log.warning("no prompt log-probs from %s: %s", settings.model, e)
        return False
    values = response_logprobs(answer, prompt, len(lead + PROBE_HEAD), lead)
    if not values:
        log.warning("%s answers /completions without prompt log-probs (echo + logprobs)", settings.model)
        return False
    loss = -sum(values) / len(values)
    if loss > PLAUSIBLE_LOSS:
        log.warning(
            "%s's prompt log-probs are implausible (%.1f nats per token on counting): one token off? A "
            "llama-cpp-python server needs the prompt to start with the model's BOS text (bos=...)",
            settings.model,
            loss,
        )
        return False
    return True


def ifd_scores(
    settings: ChatSettings,
    engine: Engine,
    pairs: Sequence[tuple[str, str]],
    *,
    bos: str | None = None,
    run_id: str | None = None,
) -> list[IFD | None]:
    """One IFD per (instruction, response) pair, in order; all None when the endpoint gives no trustworthy
    prompt log-probs (`supports_prompt_logprobs`), one None for a response with no token of its own. A pair
    the endpoint refuses (e.g. longer than its context) raises `LLMRefused` naming it."""
    for i, (_, response) in enumerate(pairs):
        if not response.strip():
            raise ValueError(f"pair {i + 1} of {len(pairs)} has an empty response: its IFD is undefined")
    if not pairs or not supports_prompt_logprobs(settings, engine, bos=bos, run_id=run_id):
        return [None] * len(pairs)
    lead = default_bos(settings) if bos is None else bos
    heads = [(lead + CONDITIONED.format(instruction=instruction), lead + UNCONDITIONED) for instruction, _ in pairs]
    prompts = [(c + r, u + r) for (c, u), (_, r) in zip(heads, pairs)]
    answers = _EchoClient(settings, engine, run_id).logprobs_of([p for both in prompts for p in both])
    out: list[IFD | None] = []
    for (c_head, u_head), (c_prompt, u_prompt) in zip(heads, prompts):
        c = response_logprobs(answers[c_prompt], c_prompt, len(c_head), lead)
        u = response_logprobs(answers[u_prompt], u_prompt, len(u_head), lead)
        if not c or not u:
            out.append(None)
            continue
        c_loss, u_loss = -sum(c) / len(c), -sum(u) / len(u)
        # a response predicted perfectly without its instruction: the instruction cannot help (0/0 is neutral)
        ratio = c_loss / u_loss if u_loss > 0 else (1.0 if c_loss == 0 else math.inf)
        out.append(IFD(c_loss, u_loss, ratio, len(c)))
    return out


class _EchoClient(JsonChat):
    """Echoed completions of prompts: JsonChat's cache, call records, backoff and budget, another endpoint path."""

    def __init__(self, settings: ChatSettings, engine: Engine, run_id: str | None):
        super().__init__(settings, engine, run_id=run_id, role=ROLE)
        self.endpoint = settings.endpoint_name or self.base_url  # the cache key's, as JsonChat's

    def logprobs_of(self, prompts: Sequence[str]) -> dict[str, dict | None]:
        """choices[0].logprobs of each distinct prompt's echoed completion: cached ones first, the rest asked."""
        hashes = {
            p: request_hash(
                self.endpoint, self.settings.model, PROMPT_VERSION, [{"role": "prompt", "content": p}], PARAMS
            )
            for p in dict.fromkeys(prompts)
        }
        with self.engine.connect() as conn:
            cached = dict(
                conn.execute(
                    sa.text(
                        "select request_hash, response->'choices'->0->'logprobs' from llm_responses"
                        " where request_hash = any(:h)"
                    ),
                    {"h": list(hashes.values())},
                ).all()
            )
        out = {p: cached[h] for p, h in hashes.items() if h in cached}
        todo = [p for p in hashes if p not in out]
        with ThreadPoolExecutor(max_workers=self.settings.concurrency) as pool:
            try:
                for p, answer in zip(todo, pool.map(lambda p: self._echo(p, hashes[p]), todo)):
                    out[p] = answer
            except (LLMError, BudgetExhausted):  # what is in flight still lands in the cache; start nothing more
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        return out

    def _echo(self, prompt: str, h: str) -> dict | None:
        import openai

        s, last, wait = self.settings, "", None
        for attempt in range(1, s.max_retries + 2):
            if attempt > 1:
                self._wait(attempt - 2, wait)
                wait = None
            self._check_budget()
            started = time.monotonic()
            try:
                completion = self.client.completions.create(model=s.model, prompt=prompt, **PARAMS)
            except openai.RateLimitError as e:
                last, wait = f"429 rate limited: {e.message}", retry_after(e)
                self._record(h, attempt, "rate_limited", started, last)
            except openai.APIStatusError as e:
                if e.status_code < 500:
                    self._record(h, attempt, "refused", started, f"{e.status_code}: {e.message}")
                    raise LLMRefused(
                        f"{self.base_url} refused an echoed completion from model {s.model!r} with "
                        f"{e.status_code}: {e.message} (not retried); prompt {prompt[:160]!r}"
                    ) from e
                last = f"{e.status_code} server error: {e.message}"
                self._record(h, attempt, "server_error", started, last)
            except openai.APIConnectionError as e:  # timeouts included
                last = f"{type(e).__name__}: {e}"
                self._record(h, attempt, "connection_error", started, last)
            else:
                response = completion.model_dump(mode="json")
                self._record(h, attempt, "ok", started, usage=response.get("usage"))
                self._store(h, response)
                return response["choices"][0].get("logprobs") if response.get("choices") else None
        raise LLMError(
            f"{self.base_url} model {s.model!r}: no echoed completion after {s.max_retries + 1} attempts;"
            f" last: {last}; prompt {prompt[:160]!r}"
        )
