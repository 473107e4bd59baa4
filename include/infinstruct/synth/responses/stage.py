"""The response step: the responder answers every child the evolution kept (free text), turn by turn.

With `responses.turns` > 1 the responder also writes the user's follow-up (`follow_up` template) and answers
it, up to that many user turns. Dropped here, with the reason in the synthetic ledger:

    response:empty    an answer with no content word
    response:refusal  an answer that opens with refusal boilerplate (the rules' `refusal` detector)

A re-run first resets the batch's response and judging columns, then asks again: the cache answers.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from infinstruct.curate.rules.filters import refusal_phrase
from infinstruct.ml.roles import Role, chat_for
from infinstruct.record.conversation import ASSISTANT, USER
from infinstruct.record.normalise import normalise_text
from infinstruct.synth import prompts
from infinstruct.synth.evolution.elimination import content_words
from infinstruct.synth.requests import request_seed, within_budget
from infinstruct.synth.run import SynthesisRun

log = logging.getLogger(__name__)

RESET = """update synth_children set verdict = 'kept', stage = 'evolution', reason = null, conversation = null,
  judge = null, reward = null, student = null, detail = case when stage = 'evolution' then detail end
  where run_id = :r and batch = :b and (verdict = 'kept' or stage <> 'evolution')"""


def answer_problem(answer: str) -> tuple[str, str] | None:
    if not content_words(answer):
        return "response:empty", f"{len(answer.strip())} characters"
    refusal = refusal_phrase(answer)
    if refusal:
        return "response:refusal", refusal
    return None


def _transcript(turns: list[dict[str, str]]) -> str:
    return "\n\n".join(f"{'User' if t['role'] == USER else 'Assistant'}: {t['content']}" for t in turns)


def respond_batch(engine: Engine, run: SynthesisRun, batch: int) -> dict[str, Any]:
    """Answer the batch's kept children; store each conversation, or drop the child with its reason."""
    with engine.begin() as conn:
        conn.execute(sa.text(RESET), {"r": run.run_id, "b": batch})
        children = conn.execute(
            sa.text(
                "select child_id, instruction from synth_children where run_id = :r and"
                " batch = :b and verdict = 'kept' order by child_id"
            ),
            {"r": run.run_id, "b": batch},
        ).all()
    responder = chat_for(run.recipe.llm, Role.RESPONDER, engine, run_id=run.run_id, free_text=True)
    overrides = run.settings.prompts
    conversations = {
        c.child_id: [{"role": USER, "content": prompts.render("respond", overrides, instruction=c.instruction)}]
        for c in children
    }
    problems: dict[str, tuple[str, str]] = {}
    for turn in range(run.settings.responses.turns):
        open_ids = [i for i in conversations if i not in problems]
        if turn > 0:  # the responder plays the user: a follow-up question on the conversation so far
            asks = [
                [
                    {
                        "role": USER,
                        "content": prompts.render("follow_up", overrides, conversation=_transcript(conversations[i])),
                    }
                ]
                for i in open_ids
            ]
            follow_ups = within_budget(
                responder.ask_many, asks, "follow-up-v1", str, [request_seed(i, turn, "follow_up") for i in open_ids]
            )
            for i, text in zip(open_ids, follow_ups):
                text = normalise_text(text)  # as an ingested turn: controls, escapes, template tokens go
                if content_words(text):  # an empty follow-up ends the conversation where it is
                    conversations[i].append({"role": USER, "content": text})
            open_ids = [i for i in open_ids if conversations[i][-1]["role"] == USER]
        answers = within_budget(
            responder.ask_many,
            [conversations[i] for i in open_ids],
            "respond-v1",
            str,
            [request_seed(i, turn, "respond") for i in open_ids],
        )
        for i, answer in zip(open_ids, map(normalise_text, answers)):  # as an ingested turn is normalised
            problem = answer_problem(answer)
            if problem:
                problems[i] = problem
            else:
                conversations[i].append({"role": ASSISTANT, "content": answer})
    rows = [
        {
            "r": run.run_id,
            "c": i,
            "conv": orjson.dumps(turns).decode() if i not in problems else None,
            "reason": problems.get(i, (None, None))[0],
            "detail": problems.get(i, (None, None))[1],
        }
        for i, turns in conversations.items()
    ]
    with engine.begin() as conn:
        if rows:
            conn.execute(
                sa.text(
                    "update synth_children set conversation = cast(:conv as jsonb), stage = case when :reason is null"
                    " then stage else 'response' end, verdict = case when :reason is null then verdict else 'dropped' end,"
                    " reason = :reason, detail = coalesce(:detail, detail) where run_id = :r and child_id = :c"
                ),
                rows,
            )
    log.info(
        "synthesis %s batch %d: %d children answered, %d dropped",
        run.run_id,
        batch,
        len(rows) - len(problems),
        len(problems),
    )
    return {"batch": batch, "answered": len(rows) - len(problems), "dropped": len(problems)}
