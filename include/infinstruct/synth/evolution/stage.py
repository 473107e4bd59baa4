"""The evolution step: a batch of seeds through `evolution.rounds` rounds of Evol-Instruct, with elimination.

Round 1 rewrites each seed once, round r each child kept in round r-1, by one operation drawn per parent and
round with weights from the recipe, seeded by the parent's id (a re-run draws the same, so its requests are
the cached ones). Each answer is cleaned of the evolver's wrapping and checked (`elimination`): by its text,
by MiniLM cosine to its parent, and by the judge's equality check. Every child is stored, kept or dropped
with its reason, parent, root seed, operation, round and prompt version: a re-run replaces the batch's rows.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.engine import Engine

from infinstruct.ml.embeddings import encode
from infinstruct.ml.roles import Role, chat_for
from infinstruct.synth import prompts
from infinstruct.synth.evolution.elimination import Elimination, clean_evolved, similarity_check, text_check
from infinstruct.synth.requests import request_seed, within_budget
from infinstruct.synth.run import SynthesisRun
from infinstruct.synth.settings import EvolutionSettings

log = logging.getLogger(__name__)


class EqualityAnswer(BaseModel):
    same: bool


@dataclass
class Child:
    child_id: str
    root_id: str
    parent_id: str
    round: int
    operation: str
    prompt_version: str
    instruction: str
    reason: str | None = None
    score: float | None = None
    detail: str | None = None


def pick_operation(parent_id: str, round_no: int, settings: EvolutionSettings) -> str:
    """The operation of a parent's evolution in a round: a weighted draw seeded by the parent and round."""
    names = [name for name, weight in settings.operations.items() if weight > 0]
    weights = np.array([settings.operations[name] for name in names], dtype=float)
    draw = request_seed(parent_id, round_no, "operation") / 2**32 * weights.sum()
    return names[min(int(np.searchsorted(np.cumsum(weights), draw, side="right")), len(names) - 1)]


def child_id(parent_id: str, operation: str, round_no: int, text: str) -> str:
    return hashlib.sha256(f"{parent_id}|{operation}|{round_no}|{text}".encode()).hexdigest()[:32]


def evolve_round(run: SynthesisRun, parents: list[tuple[str, str, str]], round_no: int, evolver, judge) -> list[Child]:
    """One round over (root id, parent id, parent text): every child, kept (reason None) or eliminated."""
    settings, overrides = run.settings.evolution, run.settings.prompts
    operations = [pick_operation(parent_id, round_no, settings) for _, parent_id, _ in parents]
    requests = [
        [{"role": "user", "content": prompts.render(f"evolve_{op}", overrides, instruction=text)}]
        for op, (_, _, text) in zip(operations, parents)
    ]
    seeds = [request_seed(parent_id, round_no) for _, parent_id, _ in parents]
    answers = within_budget(evolver.ask_many, requests, "evolve-v1", str, seeds)
    children = []
    for op, (root_id, parent_id, parent_text), answer in zip(operations, parents, answers):
        text = clean_evolved(answer)
        child = Child(
            child_id(parent_id, op, round_no, text),
            root_id,
            parent_id,
            round_no,
            op,
            prompts.version(f"evolve_{op}", overrides),
            text or answer,
        )
        failed = text_check(text, parent_text, settings)
        if failed:
            child.reason, child.detail = failed[0].value, failed[1]
        children.append(child)
    alive = [(c, parent_text) for c, (_, _, parent_text) in zip(children, parents) if c.reason is None]
    if alive:
        vectors = encode([t for c, p in alive for t in (c.instruction, p)], settings.embedding)
        for i, (child, _) in enumerate(alive):
            child.score = float(np.dot(vectors[2 * i], vectors[2 * i + 1]))
            failed = similarity_check(child.score, child.operation, settings)
            if failed:
                child.reason, child.detail = failed[0].value, failed[1]
    if settings.llm_equality_check:
        checked = [(c, p) for c, p in alive if c.reason is None and c.operation != "breadth"]
        if checked:
            requests = [
                [
                    {
                        "role": "user",
                        "content": prompts.render("equality_check", overrides, parent=p, child=c.instruction),
                    }
                ]
                for c, p in checked
            ]
            verdicts = within_budget(
                judge.ask_structured,
                requests,
                "equality-v1",
                EqualityAnswer,
                [request_seed(c.child_id, "equality") for c, _ in checked],
            )
            for (child, _), verdict in zip(checked, verdicts):
                if verdict.value is not None and verdict.value.same:
                    child.reason, child.detail = Elimination.NO_GAIN.value, "the judge: it asks for the same thing"
                elif verdict.value is None:  # recorded, not fatal: the similarity check already passed it
                    child.detail = f"equality check unanswered: {verdict.error}"[:300]
    return children


def evolve_batch(engine: Engine, run: SynthesisRun, batch: int) -> dict[str, Any]:
    """Evolve the batch's seeds for the configured rounds; store every child (replacing a previous try's)."""
    with engine.connect() as conn:
        seeds = conn.execute(
            sa.text("select record_id, instruction from synth_seeds where run_id = :r and batch = :b order by rank"),
            {"r": run.run_id, "b": batch},
        ).all()
    evolver = chat_for(run.recipe.llm, Role.EVOLVER, engine, run_id=run.run_id, free_text=True)
    judge = chat_for(run.recipe.llm, Role.JUDGE, engine, run_id=run.run_id)
    parents = [(record_id, record_id, text) for record_id, text in seeds]
    children: list[Child] = []
    for round_no in range(1, run.settings.evolution.rounds + 1):
        if not parents:
            break
        made = evolve_round(run, parents, round_no, evolver, judge)
        children += made
        parents = [(c.root_id, c.child_id, c.instruction) for c in made if c.reason is None]
    rows = [
        {"run": run.run_id, "batch": batch, **vars(c), "verdict": "dropped" if c.reason else "kept"} for c in children
    ]
    with engine.begin() as conn:
        conn.execute(
            sa.text("delete from synth_children where run_id = :r and batch = :b"), {"r": run.run_id, "b": batch}
        )
        if rows:
            conn.execute(
                sa.text(
                    "insert into synth_children (run_id, child_id, batch, root_id, parent_id, round, operation,"
                    " prompt_version, instruction, verdict, stage, reason, score, detail) values (:run, :child_id, :batch,"
                    " :root_id, :parent_id, :round, :operation, :prompt_version, :instruction, :verdict, 'evolution',"
                    " :reason, :score, :detail) on conflict (run_id, child_id) do nothing"
                ),
                rows,
            )
    by_reason: dict[str, int] = {}
    for c in children:
        by_reason[c.reason or "kept"] = by_reason.get(c.reason or "kept", 0) + 1
    log.info(
        "synthesis %s batch %d: %d seeds, %d children: %s", run.run_id, batch, len(seeds), len(children), by_reason
    )
    return {"batch": batch, "seeds": len(seeds), "children": len(children), "by_reason": by_reason}
