"""Call an OpenAI-compatible chat endpoint: bounded concurrency, retried, cached in Postgres, every call recorded.

One client (the `openai` package, its own retries off) for OpenAI, vLLM, llama.cpp or any server that speaks
POST /v1/chat/completions. `JsonChat.ask_many` sends one request per message list, at most `concurrency` at a
time, with the settings' sampling (temperature 0 and `response_format={"type": "json_object"}` by default; a
per-request seed where given), and hands each answer's text to the caller's `parse`, which raises
`InvalidAnswer` for output it cannot use. `ask_structured` validates answers with a pydantic model and
gives an answer that does not fit one repair request, then records it as that request's failure.
Every request sent is a row of `llm_calls` (status, latency, tokens, cost); `roles` picks the endpoint.

Retried (exponential backoff with jitter, at most `max_retries` times): 429 (after Retry-After when the
server sends one), 5xx, timeouts, connection errors, and answers that `parse` rejects. Not retried: any other
status (400, 401, 404 ...): the same request would fail the same way, so it fails at once with the endpoint's
message. Exhausted retries raise `LLMError` with the last failure; nothing is replaced by a default.

Never paid twice: every answer that parsed is kept in `llm_responses` (migration 0012) under `request_hash`,
a hash of (base_url, model, prompt version, the exact messages, the request's parameters), committed in its own
short transaction as soon as it arrives, so a task that dies halfway does not pay again for what it got.
Cached requests are looked up before anything is sent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Generic, Sequence, TypeVar

import orjson
import sqlalchemy as sa
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy.engine import Engine

from infinstruct.errors import DataError
from infinstruct.strict import Strict

log = logging.getLogger(__name__)

BASE_URL_ENV = "INFINSTRUCT_LLM_BASE_URL"
PLACEHOLDER_KEY = "no-key"  # local servers need no key, but the client insists on one
PARAMS = {"temperature": 0, "response_format": {"type": "json_object"}}  # deterministic, JSON only

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
Messages = list[dict[str, str]]
REPAIR = (
    "That answer cannot be used: {error}. Reply again with only a JSON object that fits this JSON schema, "
    "and nothing else:\n{schema}"
)


class LLMConfigError(DataError, ValueError):
    """The endpoint is not configured (no base_url)."""


class LLMError(RuntimeError):
    """The endpoint refused the request, or gave no usable answer within the retries."""


class BudgetExhausted(RuntimeError):
    """A budget cap was reached: no new request was sent. `answered` requests were answered (and are cached)."""

    def __init__(self, message: str, answered: int, total: int):
        super().__init__(message)
        self.answered, self.total = answered, total


class InvalidAnswer(ValueError):
    """Raised by a `parse` function: the model's output is not the JSON asked for (retried)."""


@dataclass(frozen=True)
class Answer(Generic[M]):
    """A structured answer: the validated value, or None and why (the raw text kept either way)."""

    value: M | None
    text: str
    error: str | None = None  # the failure recorded for this request: the output did not fit the schema
    repaired: bool = False  # the value came from the repair request


class ChatSettings(Strict):
    """An OpenAI-compatible chat endpoint and how patiently to call it. The key is never in the recipe:
    `api_key_env` names the environment variable that holds it."""

    model: str = Field(min_length=1)
    base_url: str | None = None  # else $INFINSTRUCT_LLM_BASE_URL, e.g. http://127.0.0.1:8080/v1
    # what answers are cached under instead of base_url: one name for replicas behind several URLs, or for a
    # server whose port changes between starts (the embedded one)
    endpoint_name: str | None = None
    api_key_env: str = Field("OPENAI_API_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")  # a name, not a key
    timeout_seconds: float = Field(60.0, gt=0)
    max_retries: int = Field(5, ge=0)
    backoff_seconds: float = Field(1.0, ge=0)  # first wait; doubles per retry, +-50% jitter
    max_backoff_seconds: float = Field(60.0, ge=0)  # cap of a wait, Retry-After included
    concurrency: int = Field(4, ge=1, le=64)
    # sampling: part of every request and of its cache key (a changed value is a new request, never a stale answer)
    temperature: float = Field(0.0, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    json_answers: bool = True  # ask for a JSON object (response_format); False: free text
    # structured answers: send their JSON schema as response_format.schema, which llama.cpp (and Anyscale-style
    # servers) turn into a grammar the output must follow; OpenAI's API would reject the extra key
    schema_in_response_format: bool = False
    # prices, for the cost of each call in llm_calls (null: not counted)
    usd_per_million_prompt_tokens: float | None = Field(None, ge=0)
    usd_per_million_completion_tokens: float | None = Field(None, ge=0)
    # budget caps: past one, no new request is sent (what was answered stays cached for the next run)
    max_tokens_per_step: int | None = Field(None, ge=1)
    max_usd_per_step: float | None = Field(None, gt=0)
    max_tokens_per_run: int | None = Field(None, ge=1)
    max_usd_per_run: float | None = Field(None, gt=0)


def base_url(settings: ChatSettings) -> str:
    """The endpoint's base URL: the settings', else $INFINSTRUCT_LLM_BASE_URL, else a `LLMConfigError`."""
    url = settings.base_url or os.environ.get(BASE_URL_ENV, "").strip()
    if not url:
        raise LLMConfigError(
            f"no LLM endpoint for model {settings.model!r}: set base_url in the recipe (e.g. base_url: "
            f"http://127.0.0.1:8080/v1 or https://api.openai.com/v1) or the environment variable {BASE_URL_ENV}; "
            f"the API key, if the server needs one, goes in ${settings.api_key_env}"
        )
    return url.rstrip("/")


_GRAMMAR_KEYS = frozenset({"type", "properties", "items", "required", "enum", "anyOf", "$defs", "$ref"})


def grammar_schema(schema: object) -> object:
    """The JSON schema as the endpoint's grammar gets it: the shape only (types, keys, enums). Bounds such as
    minimum/maximum become grammars llama.cpp samples at seconds per token, or never finishes (measured:
    the judge's rubric, 1-10 bounds on five fields, hung the embedded server); pydantic checks them after."""
    if isinstance(schema, dict):
        return {
            k: (
                dict((name, grammar_schema(v)) for name, v in value.items())
                if k in ("properties", "$defs")
                else grammar_schema(value)
            )
            for k, value in schema.items()
            if k in _GRAMMAR_KEYS
        }
    if isinstance(schema, list):
        return [grammar_schema(item) for item in schema]
    return schema


def request_params(settings: ChatSettings, seed: int | None = None, schema: dict | None = None) -> dict:
    """The request's parameters besides model and messages: its sampling, the JSON format when asked for
    (with the answer's schema where the endpoint enforces one), and the record's seed (what a sampled answer
    depends on). The defaults give PARAMS."""
    t = settings.temperature
    params: dict = {"temperature": int(t) if t == int(t) else t}  # 0, not 0.0: the key answers were cached under
    if settings.json_answers:
        params["response_format"] = {"type": "json_object"}
        if schema is not None and settings.schema_in_response_format:
            params["response_format"]["schema"] = grammar_schema(schema)
    params |= {
        k: v
        for k, v in (("top_p", settings.top_p), ("max_tokens", settings.max_tokens), ("seed", seed))
        if v is not None
    }
    return params


def request_hash(url: str, model: str, prompt_version: str, messages: Messages, params: dict = PARAMS) -> str:
    """The cache key of a request: what decides its answer."""
    key = [url, model, prompt_version, messages, params]
    return hashlib.sha256(json.dumps(key, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def retry_after(error: Exception) -> float | None:
    """Seconds from a Retry-After header (the seconds form; an HTTP date is ignored)."""
    response = getattr(error, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class JsonChat:
    """JSON answers from one model behind one endpoint, retried and cached (module docstring)."""

    def __init__(self, settings: ChatSettings, engine: Engine, *, run_id: str | None = None, role: str | None = None):
        """`run_id` and `role` label the calls in llm_calls (and scope the per-run budget)."""

        import openai

        self.settings, self.engine, self.run_id, self.role = settings, engine, run_id, role
        self.spent_tokens, self.spent_usd, self._lock = 0, 0.0, threading.Lock()  # this step's calls
        self.base_url = base_url(settings)
        key = os.environ.get(settings.api_key_env)
        if not key:
            log.info(
                "$%s is not set: sending a placeholder key to %s (enough for a local server)",
                settings.api_key_env,
                self.base_url,
            )
        self.client = openai.OpenAI(
            base_url=self.base_url, api_key=key or PLACEHOLDER_KEY, timeout=settings.timeout_seconds, max_retries=0
        )  # retries: ours, below

    def ask_many(
        self,
        requests: Sequence[Messages],
        prompt_version: str,
        parse: Callable[[str], T],
        seeds: Sequence[int] | None = None,
        schema: dict | None = None,
    ) -> list[T]:
        """parse(answer) for each message list, in order: cached answers first, the rest from the endpoint.
        `seeds`: one per request (e.g. from the record id), so a sampled answer is asked for, and cached, per record.
        `schema`: the JSON schema of the answer (sent where the settings say the endpoint enforces it)."""
        params = [
            request_params(self.settings, seed, schema)
            for seed in (seeds if seeds is not None else [None] * len(requests))
        ]
        endpoint = self.settings.endpoint_name or self.base_url
        hashes = [request_hash(endpoint, self.settings.model, prompt_version, m, p) for m, p in zip(requests, params)]
        cached = self._cached(set(hashes))
        out: list = [None] * len(requests)
        todo, copies = [], {}  # copies: request i is the same request as todo's j (sent, and paid, once)
        for i, h in enumerate(hashes):
            if h in cached:
                out[i] = parse(cached[h])  # it parsed when stored (a parse made stricter since fails loudly)
            elif h in copies:
                copies[h].append(i)
            else:
                todo.append(i)
                copies[h] = []
        pool = ThreadPoolExecutor(max_workers=self.settings.concurrency)
        try:
            futures = {i: pool.submit(self._ask, requests[i], hashes[i], params[i], parse) for i in todo}
            for i, future in futures.items():
                try:
                    out[i] = future.result()
                    for j in copies[hashes[i]]:
                        out[j] = out[i]
                except BudgetExhausted as e:  # let what is in flight land in the cache, then say how far we got
                    pool.shutdown(wait=True, cancel_futures=True)
                    answered = (
                        sum(
                            1 + len(copies[hashes[j]])
                            for j, f in futures.items()
                            if f.done() and not f.cancelled() and f.exception() is None
                        )
                        + len(requests)
                        - len(todo)
                        - sum(map(len, copies.values()))
                    )
                    raise BudgetExhausted(
                        f"{e}; {answered} of {len(requests)} requests answered (cached: the next "
                        "run continues from there)",
                        answered,
                        len(requests),
                    ) from None
                except LLMError as e:  # say which request: the caller's record is in its last message
                    raise LLMError(
                        f"{e}; request {i + 1} of {len(requests)}: {requests[i][-1]['content'][:160]!r}"
                    ) from e
        finally:  # on a failure, start nothing more; what is in flight still lands in the cache
            pool.shutdown(wait=True, cancel_futures=True)
        return out

    def ask_structured(
        self, requests: Sequence[Messages], prompt_version: str, schema: type[M], seeds: Sequence[int] | None = None
    ) -> list[Answer[M]]:
        """One Answer per request: the model's JSON validated by `schema`. An answer that does not fit gets one
        repair request (its output and the error sent back); one that still does not fit is a failure of that
        request (`Answer.error`, `invalid_answer` in llm_calls), never an exception for the batch. Invalid
        answers are cached like valid ones, so a re-run asks nothing again and repairs the same way."""

        def parse(text: str) -> Answer[M]:
            try:
                return Answer(schema.model_validate_json(text), text)
            except ValidationError as exc:
                problem = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'the answer'}: {e['msg']}" for e in exc.errors())
                return Answer(None, text, problem[:500])

        answers = self.ask_many(requests, prompt_version, parse, seeds, schema.model_json_schema())
        broken = [i for i, a in enumerate(answers) if a.error]
        if broken:
            repair = REPAIR.replace("{schema}", json.dumps(schema.model_json_schema(), sort_keys=True))
            followups = [
                [
                    *requests[i],
                    {"role": "assistant", "content": answers[i].text},
                    {"role": "user", "content": repair.replace("{error}", answers[i].error)},
                ]
                for i in broken
            ]
            try:
                again = self.ask_many(
                    followups,
                    prompt_version,
                    parse,
                    [seeds[i] for i in broken] if seeds else None,
                    schema.model_json_schema(),
                )
            except BudgetExhausted as e:  # count the caller's requests: those that fitted, and the repaired ones
                answered = len(requests) - len(broken) + e.answered
                raise BudgetExhausted(
                    f"{str(e).split('; ')[0]}; {answered} of {len(requests)} requests answered "
                    "(cached: the next run continues from there)",
                    answered,
                    len(requests),
                ) from None
            for i, answer in zip(broken, again):
                answers[i] = Answer(answer.value, answer.text, answer.error, repaired=True)
        return answers

    def _cached(self, hashes: set[str]) -> dict[str, str]:
        if not hashes:
            return {}
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "select request_hash, response->'choices'->0->'message'->>'content'"
                    " from llm_responses where request_hash = any(:h)"
                ),
                {"h": list(hashes)},
            )
            return dict(rows.all())

    def _store(self, h: str, response: dict) -> None:
        """Keep an answer (the endpoint's response, as JSON) under its request hash."""
        with self.engine.begin() as conn:  # its own short transaction: kept even if the task dies next
            conn.execute(
                sa.text(
                    "insert into llm_responses (request_hash, model, response, usage)"
                    " values (:h, :m, cast(:r as jsonb), cast(:u as jsonb)) on conflict (request_hash) do nothing"
                ),
                {
                    "h": h,
                    "m": self.settings.model,
                    "r": orjson.dumps(response).decode(),
                    "u": orjson.dumps(response.get("usage")).decode(),
                },
            )

    def _wait(self, attempt: int, retry_after: float | None = None) -> None:
        s = self.settings
        delay = s.backoff_seconds * 2**attempt * random.uniform(0.5, 1.5)
        if retry_after is not None:  # the server knows when it will take us again
            delay = max(delay, retry_after)
        time.sleep(min(delay, s.max_backoff_seconds))

    def _record(
        self, h: str, attempt: int, status: str, started: float, error: str | None = None, usage: dict | None = None
    ) -> None:
        """One row of llm_calls per request sent (its own transaction: kept whatever happens next)."""
        s, usage = self.settings, usage or {}
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        cost = None
        if s.usd_per_million_prompt_tokens is not None and s.usd_per_million_completion_tokens is not None:
            cost = (
                (prompt or 0) * s.usd_per_million_prompt_tokens
                + (completion or 0) * s.usd_per_million_completion_tokens
            ) / 1e6
        with self._lock:
            self.spent_tokens += (prompt or 0) + (completion or 0)
            self.spent_usd += cost or 0.0
        with self.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "insert into llm_calls (request_hash, run_id, role, model, base_url, attempt, status, error, latency_ms,"
                    " prompt_tokens, completion_tokens, cost_usd)"
                    " values (:h, :run, :role, :m, :u, :a, :s, :e, :l, :p, :c, :cost)"
                ),
                {
                    "h": h,
                    "run": self.run_id,
                    "role": self.role,
                    "m": s.model,
                    "u": self.base_url,
                    "a": attempt,
                    "s": status,
                    "e": error,
                    "l": int((time.monotonic() - started) * 1000),
                    "p": prompt,
                    "c": completion,
                    "cost": cost,
                },
            )

    def _check_budget(self) -> None:
        """Raise BudgetExhausted when this step, or the run (every step's calls in llm_calls), spent its cap."""
        s = self.settings
        over = [
            f"{what} {spent:,.6g} of {cap:,.6g}"
            for what, spent, cap in (
                ("step tokens", self.spent_tokens, s.max_tokens_per_step),
                ("step USD", self.spent_usd, s.max_usd_per_step),
            )
            if cap is not None and spent >= cap
        ]
        if not over and self.run_id is not None and (s.max_tokens_per_run or s.max_usd_per_run):
            with self.engine.connect() as conn:
                tokens, usd = conn.execute(
                    sa.text(
                        "select coalesce(sum(coalesce(prompt_tokens, 0) + coalesce(completion_tokens, 0)), 0),"
                        " coalesce(sum(cost_usd), 0) from llm_calls where run_id = :r"
                    ),
                    {"r": self.run_id},
                ).one()
            over = [
                f"{what} {spent:,.6g} of {cap:,.6g}"
                for what, spent, cap in (
                    ("run tokens", tokens, s.max_tokens_per_run),
                    ("run USD", usd, s.max_usd_per_run),
                )
                if cap is not None and spent >= cap
            ]
        if over:
            raise BudgetExhausted(f"LLM budget reached for model {s.model!r}: {', '.join(over)}", 0, 0)

    def _ask(self, messages: Messages, h: str, params: dict, parse: Callable[[str], T]) -> T:
        import openai

        s, last, wait = self.settings, "", None
        for attempt in range(s.max_retries + 1):
            if attempt:
                self._wait(attempt - 1, wait)
                wait = None
            self._check_budget()
            started = time.monotonic()
            try:
                completion = self.client.chat.completions.create(model=s.model, messages=messages, **params)
            except openai.RateLimitError as e:
                last, wait = f"429 rate limited: {e.message}", retry_after(e)
                self._record(h, attempt + 1, "rate_limited", started, last)
                continue
            except openai.APIStatusError as e:
                if e.status_code >= 500:
                    last = f"{e.status_code} server error: {e.message}"
                    self._record(h, attempt + 1, "server_error", started, last)
                    continue
                self._record(h, attempt + 1, "refused", started, f"{e.status_code}: {e.message}")
                raise LLMError(
                    f"{self.base_url} refused model {s.model!r} with {e.status_code}: {e.message} (not retried)"
                ) from e
            except openai.APIConnectionError as e:  # timeouts included
                last = f"{type(e).__name__}: {e}"
                self._record(h, attempt + 1, "connection_error", started, last)
                continue
            usage = completion.usage.model_dump() if completion.usage is not None else None
            content = completion.choices[0].message.content if completion.choices else None
            try:
                value = parse(content or "")
            except InvalidAnswer as e:
                last = f"invalid answer ({e}): {(content or '')[:200]!r}"
                self._record(h, attempt + 1, "invalid_answer", started, last, usage)  # paid for, though useless
                continue
            failed = getattr(value, "error", None)  # a structured answer that did not fit: kept, not retried
            self._record(h, attempt + 1, "invalid_answer" if failed else "ok", started, failed, usage)
            self._store(h, completion.model_dump(mode="json"))
            return value
        raise LLMError(
            f"{self.base_url} model {s.model!r}: no valid answer after {s.max_retries + 1} attempts; last: {last}"
        )
