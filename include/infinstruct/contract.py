"""The stage contract: typed decisions and results, and the two skeletons every deciding stage runs in.

A stage supplies only what is its own: what its decisions depend on (`inputs` / `settings`) and its
`decide` step. The skeletons do the rest, the same way for every stage:

* per partition (`PartitionStage`): fingerprint the partition's content and the stage's inputs -> skip
  when a completion with that fingerprint exists -> decide -> replace the stage's decisions on the
  partition and mark it complete, in one transaction (a retry or a re-run replaces exactly its rows);
* whole dataset (`DatasetStage`): work outside the transaction (`prepare`) -> the scope: a full pass or
  only the new partitions, and why -> decide, with the temp tables `deciding` and `source_priority` ->
  replace the decisions on the deciding partitions and finish the scope, in one transaction.

Decisions are `Decision`s, written by `write_decisions` whoever makes them (a stage that decides in SQL
inserts into `decisions` itself); the result of every stage is a `StageResult`, its counts by reason
read back from what it wrote.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from infinstruct.config import Recipe
from infinstruct.record.reasons import Verdict
from infinstruct.stages import decided_before, fixed_reasons
from infinstruct.store.ledger import standing_sql
from infinstruct.store.stage_state import (
    Scope,
    complete,
    completed,
    deciding_table,
    fingerprint,
    finish_scope,
    forget_decisions,
    insert_decisions,
    whole_dataset_scope,
)


@dataclass(frozen=True, slots=True)
class Decision:
    """One ledger row a stage writes about one record line (the stage and run are the writer's)."""

    partition_id: str
    line_no: int
    reason: str
    score: float | None = None
    duplicate_of: str | None = None
    detail: str | None = None
    verdict: Verdict = Verdict.DROPPED


def write_decisions(conn: Connection, stage: str, run_id: str, decisions: Iterable[Decision]) -> int:
    """Write decisions of `stage` for the run (COPY); returns how many."""
    rows = [
        {
            "partition_id": d.partition_id,
            "line_no": d.line_no,
            "stage": str(stage),
            "verdict": d.verdict.value,
            "reason": d.reason,
            "score": d.score,
            "detail": d.detail,
            "duplicate_of": d.duplicate_of,
            "run_id": run_id,
        }
        for d in decisions
    ]
    insert_decisions(conn, rows)
    return len(rows)


@dataclass
class StageResult:
    """What a stage did in one task: the same shape for every stage (XCom and `stage_completions.result`)."""

    stage: str
    decided: int = 0  # records this pass looked at
    by_reason: dict[str, int] = field(default_factory=dict)
    partition_id: str | None = None
    full_pass: bool | None = None  # whole-dataset stages: every partition re-decided
    why: str | None = None  # ... and why ("first pass", "incremental", ...)
    skipped: bool = False  # nothing to do: the same input was decided before
    numbers: dict[str, Any] = field(default_factory=dict)  # the stage's own measurements

    @property
    def dropped(self) -> int:
        return sum(self.by_reason.values())

    def as_dict(self) -> dict[str, Any]:
        """Flat, JSON-able: the reasons and the stage's numbers beside the common fields."""
        common = {
            "stage": self.stage,
            "decided": self.decided,
            "dropped": self.dropped,
            "by_reason": self.by_reason,
            "skipped": self.skipped,
        }
        common |= {
            k: v
            for k, v in (("partition_id", self.partition_id), ("full_pass", self.full_pass), ("why", self.why))
            if v is not None
        }
        return {**self.by_reason, **self.numbers, **common}

    @classmethod
    def from_dict(cls, stored: dict[str, Any], **changes: Any) -> StageResult:
        known = {"stage", "decided", "dropped", "by_reason", "skipped", "partition_id", "full_pass", "why"}
        by_reason = stored.get("by_reason")
        if by_reason is None:  # stored before StageResult: the reasons were top-level keys
            by_reason = {
                k: v
                for k, v in stored.items()
                if k not in known and isinstance(v, int) and (":" in k or k in fixed_reasons(stored["stage"]))
            }
        numbers = {k: v for k, v in stored.items() if k not in known and k not in by_reason}
        result = cls(
            stored["stage"],
            stored.get("decided", 0),
            dict(by_reason),
            stored.get("partition_id"),
            stored.get("full_pass"),
            stored.get("why"),
            stored.get("skipped", False),
            numbers,
        )
        for name, value in changes.items():
            setattr(result, name, value)
        return result


@dataclass
class Outcome:
    """What a decide step found: its decisions (unless it wrote them in SQL), how many records it looked
    at, and its own numbers."""

    decisions: list[Decision] = field(default_factory=list)
    decided: int = 0
    numbers: dict[str, Any] = field(default_factory=dict)


def _by_reason(counts: dict[str, int], stage: str) -> dict[str, int]:
    """Counts per reason, the stage's declared reasons first (0 when none)."""
    return {**{reason: 0 for reason in fixed_reasons(stage)}, **dict(sorted(counts.items()))}


def _counts(conn: Connection, stage: str, partitions: list[str]) -> dict[str, int]:
    rows = conn.execute(
        sa.text(
            "select reason, count(*) from decisions where stage = :s and partition_id = any(:ps) and verdict = :v"
            " group by reason"
        ),
        {"s": str(stage), "ps": partitions, "v": Verdict.DROPPED.value},
    )
    return _by_reason(dict(rows.all()), stage)


class PartitionStage(ABC):
    """A stage that decides one partition at a time (a mapped task)."""

    ledger: ClassVar[str]  # its ledger stage: a Stage, or the name a registered stage declares

    def __init__(self, engine: Engine, recipe: Recipe, run_id: str, partition_id: str):
        self.engine, self.recipe, self.run_id, self.partition_id = engine, recipe, run_id, partition_id

    @abstractmethod
    def inputs(self, conn: Connection) -> list[Any]:
        """What the decisions depend on besides the partition's content (settings, versions, files)."""

    @abstractmethod
    def decide(self) -> Outcome:
        """Decide the partition's records (reading through the engine, in batches)."""

    def write(self, conn: Connection, outcome: Outcome) -> None:
        """Rows of the stage's own tables, replaced in the transaction that writes its decisions."""

    def run(self) -> StageResult:
        with self.engine.connect() as conn:
            print_ = fingerprint(conn, self.partition_id, *self.inputs(conn))
            done = completed(conn, self.partition_id, self.ledger, print_)
        if done is not None:
            return StageResult.from_dict({"stage": str(self.ledger), **done}, skipped=True)
        outcome = self.decide()
        by_reason = Counter(d.reason for d in outcome.decisions if d.verdict is Verdict.DROPPED)
        result = StageResult(
            str(self.ledger),
            outcome.decided,
            _by_reason(by_reason, self.ledger),
            partition_id=self.partition_id,
            numbers=outcome.numbers,
        )
        with self.engine.begin() as conn:
            self.write(conn, outcome)
            conn.execute(
                sa.text("delete from decisions where partition_id = :p and stage = :s"),
                {"p": self.partition_id, "s": str(self.ledger)},
            )
            write_decisions(conn, self.ledger, self.run_id, outcome.decisions)
            complete(conn, self.partition_id, self.ledger, print_, self.run_id, result.as_dict())
        return result


class DatasetStage(ABC):
    """A stage that decides across every partition of the dataset (one task), fully or incrementally."""

    ledger: ClassVar[str]  # its ledger stage: a Stage, or the name a registered stage declares

    def __init__(self, engine: Engine, recipe: Recipe, run_id: str):
        self.engine, self.recipe, self.run_id = engine, recipe, run_id

    @abstractmethod
    def settings(self) -> object:
        """What the decisions depend on besides the records (a changed value means a full pass)."""

    def upstream(self) -> list[str]:
        """Stages whose completions the scope's fingerprints include: by default the ones deciding before."""
        return decided_before(self.ledger)

    def prepare(self) -> dict[str, Any]:
        """Work outside the transaction (computing keys, embedding); returns numbers for the result."""
        return {}

    @abstractmethod
    def decide(self, conn: Connection, scope: Scope) -> Outcome:
        """Decide the records of `scope.new` (temp table `deciding`) against the standing ones, in `conn`'s
        transaction; decisions either returned or inserted into `decisions` directly."""

    def enabled(self) -> bool:
        """False when the recipe turns the stage off: then none of its decisions stand."""
        return True

    def forget(self, conn: Connection, dataset: str) -> None:
        """Turned off: drop the stage's own state beyond its decisions (they go anyway)."""

    def scope(self, conn: Connection) -> Scope:
        return whole_dataset_scope(conn, self.run_id, self.ledger, self.settings(), self.upstream())

    def standing(self, conn: Connection, columns: str = "r.partition_id, r.line_no, r.conversation") -> sa.Result:
        """The records this pass decides (`deciding`) that no stage before this one dropped, by line."""
        return conn.execute(
            sa.text(
                f"select {columns} from records r join deciding dp on dp.partition_id = r.partition_id"
                f" where {standing_sql('r')}"
                " order by r.partition_id, r.line_no"
            ),
            {"earlier": decided_before(self.ledger)},
        )

    def run(self) -> StageResult:
        if not self.enabled():
            with self.engine.begin() as conn:
                dataset = forget_decisions(conn, self.run_id, self.ledger)
                conn.execute(
                    sa.text("delete from dataset_stages where dataset = :d and stage = :s"),
                    {"d": dataset, "s": str(self.ledger)},
                )
                self.forget(conn, dataset)
            return StageResult(str(self.ledger), numbers={"disabled": True})
        numbers = self.prepare()
        with self.engine.begin() as conn:
            scope = self.scope(conn)
            deciding_table(conn, scope, self.recipe.priorities)
            conn.execute(
                sa.text(
                    "delete from decisions d using deciding dp where d.partition_id = dp.partition_id and d.stage = :s"
                ),
                {"s": str(self.ledger)},
            )
            outcome = self.decide(conn, scope)
            write_decisions(conn, self.ledger, self.run_id, outcome.decisions)
            result = StageResult(
                str(self.ledger),
                outcome.decided,
                _counts(conn, self.ledger, scope.new),
                full_pass=scope.full,
                why=scope.why,
                numbers={**numbers, **outcome.numbers},
            )
            finish_scope(conn, self.run_id, scope, result.as_dict())
        return result
