"""The LLM roles of Phase 2 (tagger, evolver, responder, judge, student), each an endpoint, a model and its sampling.

The recipe's `llm.roles.<role>` says where a role's requests go and how it samples (`RoleSettings`: the
fields of `ml.llm.ChatSettings`, the model optional); one endpoint may serve several roles. A role with no
`base_url`, when $INFINSTRUCT_LLM_BASE_URL is not set either, goes to the embedded server
(`ml.llm_server`: SmolLM2 on loopback), which answers one request at a time: its concurrency is 1.
"""

from __future__ import annotations

import os
from enum import StrEnum

from pydantic import Field, model_validator
from sqlalchemy.engine import Engine

from infinstruct.ml.llm import BASE_URL_ENV, ChatSettings, JsonChat
from infinstruct.strict import Strict

EMBEDDED_MAX_TOKENS = 256  # the embedded server's answers, unless the role says otherwise
EMBEDDED_TIMEOUT = 300.0  # seconds per request to the embedded server, unless the role says otherwise


class Role(StrEnum):
    TAGGER = "tagger"  # ability labels of an instruction
    EVOLVER = "evolver"  # Evol-Instruct rewrites of a seed
    RESPONDER = "responder"  # answers to evolved instructions
    JUDGE = "judge"  # scores of an answer
    STUDENT = "student"  # the small model whose losses and failures pick informative seeds


class RoleSettings(ChatSettings):
    """ChatSettings with the model optional: no model and no endpoint means the embedded server's model."""

    model: str | None = None

    @model_validator(mode="after")
    def _model_with_endpoint(self) -> RoleSettings:
        if self.base_url and not self.model:
            raise ValueError(f"base_url {self.base_url!r} needs a model (the name that endpoint serves)")
        return self


class LLMSettings(Strict):
    """Recipe section `llm`: the settings of each role (a role left out: the embedded server, defaults)."""

    roles: dict[Role, RoleSettings] = Field(default_factory=dict)

    def role(self, role: Role | str) -> RoleSettings:
        return self.roles.get(Role(role), RoleSettings())


def _uses_embedded(settings: RoleSettings) -> bool:
    return not (settings.base_url or os.environ.get(BASE_URL_ENV, "").strip())


def planned(settings: RoleSettings) -> ChatSettings:
    """The settings a role's requests use, without starting anything: for the embedded server, all but its
    address (which is all `resolve` adds). What a cache key of the role's answers is made of."""
    if not _uses_embedded(settings):
        if not settings.model:
            raise ValueError(f"${BASE_URL_ENV} is set: the role needs a model (the name that endpoint serves)")
        return ChatSettings.model_validate(settings.model_dump())
    from infinstruct.ml.llm_server import GGUF_NAME, MODEL_ALIAS

    # cached under the model, not the port: a restarted server asks nothing it already answered. Answers are
    # capped: in JSON mode SmolLM2 rarely closes its object and writes until its context is full (~20 s a request)
    return ChatSettings.model_validate(
        {
            **settings.model_dump(),
            "model": MODEL_ALIAS,
            "endpoint_name": f"embedded:{GGUF_NAME}",
            "concurrency": 1,
            "max_tokens": settings.max_tokens or EMBEDDED_MAX_TOKENS,
            "schema_in_response_format": True,  # llama.cpp: a grammar of the schema
            # one request at a time, queued behind other tasks' on 2 cores
            "timeout_seconds": settings.timeout_seconds
            if "timeout_seconds" in settings.model_fields_set
            else EMBEDDED_TIMEOUT,
        }
    )


def resolve(settings: RoleSettings) -> ChatSettings:
    """The endpoint a role's requests go to: its own, $INFINSTRUCT_LLM_BASE_URL, or the embedded server
    (started if none answers)."""
    chosen = planned(settings)
    if not _uses_embedded(settings):
        return chosen
    from infinstruct.ml.llm_server import ensure_local_llm

    server = ensure_local_llm()
    return chosen.model_copy(update={"base_url": server.base_url, "model": server.model})


def chat_for(
    llm: LLMSettings, role: Role | str, engine: Engine, run_id: str | None = None, free_text: bool = False
) -> JsonChat:
    """The client of a role (starting the embedded server when the role has no endpoint); its calls are
    labelled with the role and run in llm_calls. `free_text`: the step asks for prose (a rewrite, an answer),
    not JSON, whatever the role's settings say."""
    settings = resolve(llm.role(role))
    if free_text:
        settings = settings.model_copy(update={"json_answers": False})
    return JsonChat(settings, engine, run_id=run_id, role=str(Role(role)))
