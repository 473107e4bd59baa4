"""THE declaration of the pipeline's stages, in the order they run.

The DAG's tasks and wiring, the ledger's stage precedence (a line dropped by several stages is reported
under the first), each stage's "decided before me", the DAG-shape test, the README's task table and
`infinstruct stages` all come from `all_stages()`: the core `STAGES`, plus the stages of your own that
modules named in $INFINSTRUCT_STAGES declare (one module with STAGE and AFTER, its test, and a recipe section
under `stages:`). A stage names its Airflow task, how it runs, the function its task calls, the tasks it waits
for, and, when it decides about records, the ledger stage and reason codes it writes.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, replace
from enum import StrEnum

from infinstruct.record.reasons import Drop, Quarantine, Stage


class Kind(StrEnum):
    SETUP = "setup"  # once per run, before any data
    PLAN = "plan"  # returns the partitions the per-partition stages are mapped over (ids, or
    # {"partition_id", "label"}: the label names the mapped instances)
    PARTITION = "per partition"  # a mapped task: one instance per partition, re-run alone when it fails
    BATCH = "per batch"  # a mapped task over the batches a seed step returns (Phase 2's LLM steps)
    DATASET = "whole dataset"  # one task over every partition of the dataset (full or incremental pass)
    GATE = "gate"  # Great Expectations: data that breaks its expectations fails the run
    EXPORT = "export"


@dataclass(frozen=True)
class StageSpec:
    task: str  # the Airflow task id
    kind: Kind
    step: str  # the function the task calls: of infinstruct.pipeline, or "module:function"
    after: tuple[str, ...] = ()  # the tasks it waits for (besides the plan, for a per-partition stage)
    params: tuple[
        str, ...
    ] = ()  # DAG params passed after the run (and partition) id, as paths (`partition`: the run's key)
    decides: str | None = None  # the ledger stage of the decisions it writes (a Stage, or your own name)
    reasons: tuple[str, ...] = ()  # the reason codes it may write (`<prefix>:*`: one per rule/benchmark/domain)
    section: str | None = None  # its recipe section
    summary: str = ""  # what it does, in one line (the README's task table)
    settings: type | None = None  # a stage of your own: the pydantic model of its section `stages.<task>`
    over: str | None = None  # a mapped stage: the task whose returned list it is mapped over (default: the plan)
    pool: str | None = None  # the Airflow pool its instances share (created by setup: AIRFLOW_POOLS)

    @property
    def mapped(self) -> bool:
        return self.kind in (Kind.PARTITION, Kind.BATCH)


LLM_POOL = "infinstruct_llm"
EMBEDDING_POOL = "infinstruct_embedding"  # tasks that load torch and MiniLM: a few at once, not one per mapped shard
# every pool a stage names, with its slots and what it is for: `infinstruct setup-airflow` and docker-compose's
# airflow-init create them (a task whose pool is missing waits forever, with only a scheduler warning)
AIRFLOW_POOLS = {
    LLM_POOL: (
        1,
        "LLM requests of Phase 2: one task at a time per endpoint-bound worker; raise it "
        "when the roles' endpoints serve many requests at once",
    ),
    EMBEDDING_POOL: (
        2,
        "tasks that embed with the sentence-transformers model (torch, MiniLM): each "
        "loads the model and takes a core; raise it with the workers' cores and memory",
    ),
}


STAGES: tuple[StageSpec, ...] = (
    StageSpec(
        "start_run",
        Kind.SETUP,
        "start_run",
        params=("recipe", "partition"),
        summary="validates the recipe, stores a snapshot of it with the run (`runs`) and, where the recipe uses a "
        'vector index, proves once per server start that pgvector works there (see "The embedded server")',
    ),
    StageSpec(
        "plan_partitions",
        Kind.PLAN,
        "plan_partitions",
        after=("start_run",),
        section="sources",
        summary="expands every source's path/glob into files and files into shards (`partitions`); returns partition "
        "ids with their labels (`chat/2 of 3`: what the grid names mapped instances by). A file whose size, "
        "mtime, ctime and inode are unchanged since its last scan (`source_files`) is not read again, as make "
        "and git decide (`touch` a file to have it re-read)",
    ),
    StageSpec(
        "ingest",
        Kind.PARTITION,
        "ingest_partition",
        decides=Stage.INGEST,
        section="ingest",
        reasons=tuple(q.code for q in Quarantine),
        summary="streams one shard, maps each line to the conversation schema, normalises the text, COPYs records and"
        " quarantined lines; skips a shard already ingested with the same checksum",
    ),
    StageSpec(
        "check_ingested",
        Kind.GATE,
        "check_ingested",
        after=("ingest",),
        section="gates",
        summary="Great Expectations gate on the records of every shard this run ingested: ids, role alternation, "
        "non-empty turns, lengths (one validation in PostgreSQL, not one per shard: GX takes seconds to "
        "import; like every gate, over a snapshot table of the checked columns evaluated once, not the query "
        "re-run per GX metric)",
    ),
    StageSpec(
        "apply_rules",
        Kind.PARTITION,
        "apply_rules",
        after=("check_ingested",),
        decides=Stage.RULES,
        reasons=("rule:*",),
        section="rules",
        summary="measures every record once (lengths, refusal phrases, repetition, truncation, text ratio, language) "
        "into `record_stats` and drops those the recipe's thresholds fail",
    ),
    StageSpec(
        "decontaminate",
        Kind.PARTITION,
        "decontaminate",
        after=("apply_rules",),
        decides=Stage.DECONTAM,
        reasons=("contaminated:*",),
        section="decontamination",
        pool=EMBEDDING_POOL,
        summary="drops records that contain a benchmark item (13-gram overlap, short items by containment), plus "
        "MiniLM cosine against every benchmark item (≥ 0.90 alone, or ≥ 0.70 with at least 45% of the item's "
        "word pairs in the record) (the instruction of each record the rules kept, its vector cached per "
        "record in `embedding_cache`); every match goes to the `contamination` audit table",
    ),
    StageSpec(
        "minhash",
        Kind.PARTITION,
        "minhash",
        after=("apply_rules",),
        section="near_dedup",
        summary="MinHash LSH band keys of the partition's instructions into `lsh_keys` (in parallel with "
        "`decontaminate`; skipped when stored for the same content and settings)",
    ),
    StageSpec(
        "deduplicate",
        Kind.DATASET,
        "deduplicate",
        after=("decontaminate", "minhash"),
        decides=Stage.DEDUP,
        reasons=(Drop.EXACT_DUPLICATE.value, Drop.DUPLICATE_INSTRUCTION.value),
        summary="exact duplicates and same-instruction duplicates across all partitions, among the records still "
        "standing",
    ),
    StageSpec(
        "near_deduplicate",
        Kind.DATASET,
        "near_deduplicate",
        after=("deduplicate",),
        decides=Stage.NEAR_DEDUP,
        reasons=(Drop.NEAR_DUPLICATE.value,),
        section="near_dedup",
        summary="MinHash LSH over the instructions still standing (band keys kept per partition in `lsh_keys`, so new"
        " records meet old ones); pairs are confirmed by Jaccard, never on template boilerplate, short "
        "prompts, or swapped names/numbers/quoted words",
    ),
    StageSpec(
        "semantic_deduplicate",
        Kind.DATASET,
        "semantic_deduplicate",
        after=("near_deduplicate",),
        decides=Stage.SEMANTIC_DEDUP,
        reasons=(Drop.SEMANTIC_DUPLICATE.value,),
        section="semantic_dedup",
        pool=EMBEDDING_POOL,
        summary="MiniLM embeddings of the instructions still standing (cached per record in `embedding_cache`), taken"
        " in keep-rule order; a record whose cosine to an accepted one reaches the threshold is dropped, "
        "unless they differ in a number, name or quoted word. The accepted set persists (`semantic_accepted`,"
        " searched with a pgvector HNSW index, or exactly where the server has no pgvector)",
    ),
    StageSpec(
        "score_records",
        Kind.PARTITION,
        "score_records",
        after=("semantic_deduplicate",),
        section="selection",
        pool=EMBEDDING_POOL,
        summary="per standing record, once per content (`record_scores`): cheap signals (lengths, structure, "
        "reasoning markers, code/math detection), quality and difficulty from the recipe's weights "
        "(re-derived from stored signals when a weight changes), and the domain (math, code, knowledge, chat,"
        " or the recipe's own) with its confidence, by keyword rules + MiniLM nearest centroid over the "
        "cached instruction vector. Off (returns at once) without a `selection`",
    ),
    StageSpec(
        "select_records",
        Kind.DATASET,
        "select",
        after=("score_records",),
        decides=Stage.SELECT,
        reasons=("not_selected:*",),
        section="selection",
        pool=EMBEDDING_POOL,
        summary="Phase 1 selection under per-domain quotas: ranks each domain's records by quality (+ difficulty) and"
        " DSIR importance toward the domain's target file, then accepts them DEITA-style while their cosine "
        "to the already selected set stays under the threshold, until the quota is full. Continues from the "
        "persisted `selection`; every record left out is ledgered `not_selected:<domain>` with its rank (see "
        '"Selection")',
    ),
    StageSpec(
        "check_selection",
        Kind.GATE,
        "check_selection",
        after=("select_records",),
        section="selection",
        summary="GX gate on the selection: each quota domain's share within the recipe's tolerance of the planned "
        "mix, no selected record contaminated or duplicated, every record with a known domain, mean quality "
        "at least the standing pool's",
    ),
    StageSpec(
        "write_release_part",
        Kind.PARTITION,
        "write_release_part",
        after=("check_selection",),
        params=("out_dir",),
        summary="the partition's share of the release: its kept records as JSONL and Parquet, its ledger rows, its "
        "counts (`release_parts`); skipped when written before for the same decisions (the part's fingerprint"
        " hashes the partition's content, every stage's completion and every decision on it)",
    ),
    StageSpec(
        "check_release",
        Kind.GATE,
        "check_release",
        after=("write_release_part",),
        section="gates",
        summary="GX gate on the release: for the records of every part not validated before (all of them on a first "
        "release), the record checks of `check_ingested` plus no contaminated record and unique record ids "
        "and instructions across the whole release; for the release as a whole, not empty and the language "
        "mix within bounds; and at most `gates.max_near_duplicate_share` of those records with a "
        "near-duplicate left anywhere in the release (pairs re-derived from the stored LSH band keys, "
        "confirmed as `near_deduplicate` confirms them; the audit, with example pairs, is in "
        "`gate_results.statistics`); and the share of a sample of those records that an independent, "
        "looser contamination check flags (reported with examples; bounded by "
        "`gates.max_contamination_suspect_share` when set)",
    ),
    StageSpec(
        "export_release",
        Kind.EXPORT,
        "export_release",
        after=("check_release",),
        params=("out_dir",),
        summary="puts the versioned release folder together from the validated parts: their record files hard-linked,"
        " their ledgers concatenated, their counts added up",
    ),
)


# Phase 2, the infinstruct_synthesis DAG (scheduled on the release asset the export emits): steps of
# infinstruct.synth.pipeline; ledger stages and reasons of the synthetic ledger (each release's ledger.parquet)
_SYNTH = "infinstruct.synth.pipeline:"
SYNTHESIS_STAGES: tuple[StageSpec, ...] = (
    StageSpec(
        "start_synthesis",
        Kind.SETUP,
        _SYNTH + "start_synthesis",
        params=("recipe", "release"),
        section="synthesis",
        summary="finds the Phase-1 release (the asset event's, the `release` param's, or the dataset's LATEST) and "
        "stores the run with a snapshot of the recipe (`synth_runs`)",
    ),
    StageSpec(
        "plan_release",
        Kind.PLAN,
        _SYNTH + "plan_release",
        after=("start_synthesis",),
        summary="the release's record files (`data/*.parquet`): what tagging is mapped over",
    ),
    StageSpec(
        "tag_records",
        Kind.PARTITION,
        _SYNTH + "tag_release_part",
        section="tagging",
        pool=LLM_POOL,
        summary="ability labels per released record from the tagger role (JSON, repaired once), normalised, merged "
        "onto known wordings by MiniLM cosine and mapped to the recipe's coarse categories (`record_tags`, "
        "once per record and tagger)",
    ),
    StageSpec(
        "check_tags",
        Kind.GATE,
        _SYNTH + "check_tags",
        after=("tag_records",),
        section="synthesis.gates",
        summary="GX gate: every released record has labels or the tagger's error, categories of the recipe's set, "
        "enough of them labelled",
    ),
    StageSpec(
        "select_seeds",
        Kind.DATASET,
        _SYNTH + "select_seeds",
        after=("check_tags",),
        section="synthesis.seeds",
        summary="informative seeds (`synth_seeds`): long-tail labels, several abilities, hard ones (IFD from the "
        "student's prompt log-probs, else Phase 1's difficulty), weak categories of the last diagnosis; "
        "returns the batches the LLM steps are mapped over",
    ),
    StageSpec(
        "evolve",
        Kind.BATCH,
        _SYNTH + "evolve",
        after=("select_seeds",),
        over="select_seeds",
        pool=LLM_POOL,
        decides="evolution",
        reasons=("evolution:*",),
        section="synthesis.evolution",
        summary="Evol-Instruct rounds (in-depth: add constraints, deepen, concretise, reasoning steps, complicate the "
        "input; in-breadth) by the evolver; eliminates empty, scaffolding, refusal, unrelated and no-gain "
        "children (`synth_children`)",
    ),
    StageSpec(
        "check_evolution",
        Kind.GATE,
        _SYNTH + "check_evolution",
        after=("evolve",),
        section="synthesis.gates",
        summary="GX gate: no kept child equals its parent or carries scaffolding; refusal rate bounded",
    ),
    StageSpec(
        "respond",
        Kind.BATCH,
        _SYNTH + "respond",
        after=("check_evolution",),
        over="select_seeds",
        pool=LLM_POOL,
        decides="response",
        reasons=("response:*",),
        section="synthesis.responses",
        summary="the responder answers every kept child (optionally 2-4 turns, writing the follow-ups too)",
    ),
    StageSpec(
        "judge",
        Kind.BATCH,
        _SYNTH + "judge",
        after=("respond",),
        over="select_seeds",
        pool=LLM_POOL,
        decides="judging",
        reasons=("judge:*",),
        section="synthesis.judging",
        summary="the judge scores helpfulness, correctness, instruction following and clarity, with flags and a "
        "rationale; reward = its overall score; low scores and unusable verdicts are dropped",
    ),
    StageSpec(
        "check_judging",
        Kind.GATE,
        _SYNTH + "check_judging",
        after=("judge",),
        section="synthesis.gates",
        summary="GX gate: every kept child has a reward within bounds; enough verdicts fitted the rubric; enough "
        "records kept",
    ),
    StageSpec(
        "diagnose",
        Kind.BATCH,
        _SYNTH + "diagnose",
        after=("check_judging",),
        over="select_seeds",
        pool=LLM_POOL,
        section="synthesis.diagnosis",
        summary="the student answers the kept children; the judge grades those answers",
    ),
    StageSpec(
        "report_diagnosis",
        Kind.DATASET,
        _SYNTH + "report_diagnosis",
        after=("diagnose",),
        section="synthesis.diagnosis",
        summary="per coarse category, how often the student failed (`synth_diagnosis`); weak categories steer the "
        "next run's seeds and become Phase 1's `weak_domains` input",
    ),
    StageSpec(
        "export_synthesis",
        Kind.EXPORT,
        _SYNTH + "export_synthesis",
        after=("report_diagnosis",),
        params=("out_dir",),
        summary="the synthetic release `<dataset>/synthetic/vNNNN`: kept children (source `synthetic:<operation>`, "
        "reward, their seed's labels), the labelled foundational records, the synthetic ledger, the "
        "diagnosis",
    ),
)


EXTRA_STAGES_ENV = "INFINSTRUCT_STAGES"  # comma-separated modules, each declaring one stage of your own


class StageRegistryError(ValueError):
    """A stage of your own does not fit the pipeline (cannot be imported, unknown neighbour, taken name)."""


def _extra_stages() -> list[tuple[StageSpec, str]]:
    """(STAGE, AFTER) of every module named in $INFINSTRUCT_STAGES: its declaration, and the task it follows."""
    found = []
    for name in filter(None, (m.strip() for m in os.environ.get(EXTRA_STAGES_ENV, "").split(","))):
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise StageRegistryError(f"{EXTRA_STAGES_ENV} names {name!r}, which cannot be imported: {exc}") from exc
        if not isinstance(getattr(module, "STAGE", None), StageSpec) or not isinstance(
            getattr(module, "AFTER", None), str
        ):
            raise StageRegistryError(
                f"module {name!r} (from {EXTRA_STAGES_ENV}) must define STAGE = StageSpec(...) "
                "and AFTER = '<the task it follows>'"
            )
        found.append((module.STAGE, module.AFTER))
    return found


def all_stages() -> tuple[StageSpec, ...]:
    """The pipeline's stages in order: STAGES with your own in their places. A stage of your own waits for the
    task it follows (AFTER), and what waited for that task waits for it."""
    stages = list(STAGES)
    for spec, after in _extra_stages():
        tasks = [s.task for s in stages]
        if spec.task in tasks:
            raise StageRegistryError(f"stage {spec.task!r} is already a task of the pipeline")
        if after not in tasks:
            raise StageRegistryError(f"stage {spec.task!r} follows {after!r}, which is not a task: {tasks}")
        at = tasks.index(after) + 1
        rewired = [replace(s, after=tuple(spec.task if a == after else a for a in s.after)) for s in stages[at:]]
        stages = [*stages[:at], replace(spec, after=(after,)), *rewired]
    return tuple(stages)


def stage(task: str) -> StageSpec:
    """The declaration of the stage whose Airflow task is `task`."""
    for spec in all_stages():
        if spec.task == task:
            return spec
    raise KeyError(f"no stage with task {task!r}; stages: {', '.join(s.task for s in all_stages())}")


def ledger_order() -> list[str]:
    """The ledger stages in pipeline order: a line dropped by several is reported under the first."""
    return [str(spec.decides) for spec in all_stages() if spec.decides is not None]


def decided_before(ledger_stage: Stage | str) -> list[str]:
    """The ledger stages that decide before `ledger_stage` (skipping ingest, which quarantines instead)."""
    order = ledger_order()
    return [s for s in order[: order.index(str(ledger_stage))] if s != Stage.INGEST.value]


def fixed_reasons(ledger_stage: Stage | str) -> list[str]:
    """The reason codes declared for a ledger stage, less the patterns (`rule:*`): counted even when 0."""
    return [
        r
        for spec in all_stages()
        if spec.decides is not None and str(spec.decides) == str(ledger_stage)
        for r in spec.reasons
        if not r.endswith(":*")
    ]


def whole_dataset_stages() -> list[str]:
    """The ledger stages decided by whole-dataset passes, in order."""
    return [str(spec.decides) for spec in all_stages() if spec.kind is Kind.DATASET and spec.decides is not None]


def task_table(stages: tuple[StageSpec, ...] | None = None) -> str:
    """The README's task table (Markdown): of the curation stages, or of `stages`."""
    rows = ["| task | kind | ledger stage | what it does |", "|---|---|---|---|"]
    for spec in stages if stages is not None else all_stages():
        rows.append(
            f"| `{spec.task}` | {spec.kind.value} | {f'`{spec.decides}`' if spec.decides else ''} | {spec.summary} |"
        )
    return "\n".join(rows)
