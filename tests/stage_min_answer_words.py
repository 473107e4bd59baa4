"""A stage of one's own, as a user adds one: drop records whose answer is shorter than `min_words` words.

Everything it needs is here: its declaration (STAGE, and AFTER: the task it follows), its settings (the
recipe section `stages.min_answer_words`), its reason code and its decide step. Named in $INFINSTRUCT_STAGES,
it becomes a task of the DAG, a stage of the ledger and a "decided before" of the stages after it.
"""

from __future__ import annotations

import orjson
from pydantic import Field
from sqlalchemy.engine import Connection

from infinstruct.contract import DatasetStage, Decision, Outcome
from infinstruct.pipeline import get_engine, run_recipe
from infinstruct.record.conversation import ASSISTANT
from infinstruct.stages import Kind, StageSpec
from infinstruct.store.stage_state import Scope
from infinstruct.strict import Strict

REASON = "too_few_answer_words"


class MinAnswerWordsSettings(Strict):
    min_words: int = Field(3, ge=1)  # answers with fewer words are dropped


STAGE = StageSpec(
    "min_answer_words",
    Kind.DATASET,
    f"{__name__}:run",
    decides="min_answer_words",
    reasons=(REASON,),
    settings=MinAnswerWordsSettings,
    summary="drops records whose answers have fewer than `min_words` words in all",
)
AFTER = "deduplicate"


class MinAnswerWords(DatasetStage):
    ledger = "min_answer_words"

    def enabled(self) -> bool:
        return self.recipe.stage_settings(STAGE.task) is not None

    def settings(self) -> object:
        return self.recipe.stage_settings(STAGE.task)

    def decide(self, conn: Connection, scope: Scope) -> Outcome:
        minimum, outcome = self.settings().min_words, Outcome()
        for partition_id, line_no, conversation in self.standing(
            conn, "r.partition_id, r.line_no, r.conversation::text"
        ):
            words = sum(len(t["content"].split()) for t in orjson.loads(conversation) if t["role"] == ASSISTANT)
            outcome.decided += 1
            if words < minimum:
                outcome.decisions.append(Decision(partition_id, line_no, REASON, score=words))
        return outcome


def run(run_id: str) -> dict:
    return MinAnswerWords(get_engine(), run_recipe(run_id), run_id).run().as_dict()
