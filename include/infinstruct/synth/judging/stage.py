"""The judging step: per-dimension scores, flags and a rationale for every answered child, from the judge.

`reward` is the judge's overall score (1-10). Dropped here:

    judge:invalid_answer  the judge's answer did not fit the rubric, even after its repair request
    judge:low_score       overall < `judging.min_reward`

The same rubric grades the students' answers in diagnosis (`grade`).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, Field, field_validator
from sqlalchemy.engine import Engine

from infinstruct.ml.llm import Answer, JsonChat
from infinstruct.ml.roles import Role, chat_for
from infinstruct.synth import prompts
from infinstruct.synth.requests import request_seed, within_budget
from infinstruct.synth.run import SynthesisRun

log = logging.getLogger(__name__)

DIMENSIONS = ("helpfulness", "correctness", "instruction_following", "clarity")
MAX_RESPONSE_CHARS = 6_000


class Verdict(BaseModel):
    """The judge's answer: the rubric of the `judge` template."""

    helpfulness: int = Field(ge=1, le=10)
    correctness: int = Field(ge=1, le=10)
    instruction_following: int = Field(ge=1, le=10)
    clarity: int = Field(ge=1, le=10)
    overall: float = Field(ge=1, le=10)
    flags: list[str] = []
    rationale: str = ""

    @field_validator(*DIMENSIONS, "overall", mode="before")
    @classmethod
    def _zero_is_the_bottom(cls, value: object) -> object:
        """A 0 is read as the scale's bottom (judges often count from 0); anything else off the scale fails."""
        return 1 if isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0 else value


def grade(judge: JsonChat, run: SynthesisRun, items: list[tuple[str, str, str]], purpose: str) -> list[Answer[Verdict]]:
    """The judge's verdict on each (id, instruction, response); `purpose` keeps a child's and a student's apart."""
    requests = [
        [
            {
                "role": "user",
                "content": prompts.render(
                    "judge", run.settings.prompts, instruction=instruction, response=response[:MAX_RESPONSE_CHARS]
                ),
            }
        ]
        for _, instruction, response in items
    ]
    return within_budget(
        judge.ask_structured, requests, "judge-v1", Verdict, [request_seed(i, purpose) for i, _, _ in items]
    )


def _last_answer(conversation: list[dict[str, str]]) -> tuple[str, str]:
    """(the conversation up to its last answer as the instruction, that answer): what the judge reads."""
    *before, last = conversation
    if len(before) == 1:
        return before[0]["content"], last["content"]
    return "\n\n".join(f"{t['role']}: {t['content']}" for t in before), last["content"]


def judge_batch(engine: Engine, run: SynthesisRun, batch: int) -> dict[str, Any]:
    """Judge the batch's answered children; store verdicts and rewards, drop what fails the rubric."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "update synth_children set verdict = 'kept', stage = 'evolution', reason = null, judge = null, reward = null,"
                " student = null, detail = case when reason like 'judge:%' then null else detail end"
                " where run_id = :r and batch = :b and stage = 'judging'"
            ),
            {"r": run.run_id, "b": batch},
        )
        children = conn.execute(
            sa.text(
                "select child_id, conversation from synth_children where run_id = :r and"
                " batch = :b and verdict = 'kept' order by child_id"
            ),
            {"r": run.run_id, "b": batch},
        ).all()
    judge = chat_for(run.recipe.llm, Role.JUDGE, engine, run_id=run.run_id)
    verdicts = grade(judge, run, [(c.child_id, *_last_answer(c.conversation)) for c in children], "judge")
    rows = []
    for child, verdict in zip(children, verdicts):
        if verdict.value is None:
            rows.append(
                {
                    "c": child.child_id,
                    "j": json.dumps({"raw": verdict.text, "error": verdict.error}),
                    "reward": None,
                    "reason": "judge:invalid_answer",
                    "detail": (verdict.error or "")[:300],
                }
            )
            continue
        reward = float(verdict.value.overall)
        low = reward < run.settings.judging.min_reward
        rows.append(
            {
                "c": child.child_id,
                "j": verdict.value.model_dump_json(),
                "reward": reward,
                "reason": "judge:low_score" if low else None,
                "detail": f"overall {reward:g} < {run.settings.judging.min_reward:g}" if low else None,
            }
        )
    with engine.begin() as conn:
        if rows:
            conn.execute(
                sa.text(
                    "update synth_children set judge = cast(:j as jsonb), reward = :reward, stage = 'judging',"
                    " verdict = case when :reason is null then 'kept' else 'dropped' end, reason = :reason,"
                    " detail = coalesce(:detail, detail) where run_id = :run and child_id = :c"
                ),
                [{**row, "run": run.run_id} for row in rows],
            )
    dropped = sum(1 for row in rows if row["reason"])
    log.info("synthesis %s batch %d: %d judged, %d dropped", run.run_id, batch, len(rows), dropped)
    return {"batch": batch, "judged": len(rows), "kept": len(rows) - dropped, "dropped": dropped}
