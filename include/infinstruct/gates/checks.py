"""Great Expectations quality gates between stages.

A gate evaluates a SQL query over the metadata store once into a narrow snapshot table and validates
that with a GX 1.x suite, inside PostgreSQL (so a gate over millions of records never loads them into
memory), stores its result in `gate_results`, and raises GateFailed when any expectation fails, which
fails the Airflow task and stops every downstream task.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from infinstruct.config import Recipe
from infinstruct.curate.decontam import audit as contamination_audit
from infinstruct.curate.near_dedup import audit as near_duplicate_audit
from infinstruct.errors import DataError
from infinstruct.record.conversation import ROLE_PATTERN
from infinstruct.release.parts import current_parts
from infinstruct.store.db import contamination, literal_sql, partitions, records, refresh_statistics
from infinstruct.store.ledger import dropped, in_run, kept_records

log = logging.getLogger(__name__)

RECORD_ID_PATTERN = r"^[0-9a-f]{32}$"


class GateFailed(DataError, RuntimeError):
    """A quality gate found data that violates its expectations; see gate_results for details."""


@dataclass
class GateResult:
    gate: str
    scope: str
    success: bool
    statistics: dict[str, Any]
    failures: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> str:
        failed = "; ".join(
            f"{f['expectation']}({f.get('column') or ''}): {f['unexpected_count']} unexpected, e.g. {f['sample']}"
            for f in self.failures
        )
        return f"gate {self.gate} on {self.scope}: {'passed' if self.success else 'FAILED'} " + (
            f"({self.statistics.get('successful_expectations')}/{self.statistics.get('evaluated_expectations')})"
            + (f" — {failed}" if failed else "")
        )


def record_expectations(recipe: Recipe) -> list:
    """What every stored conversation must satisfy: schema, ids, role alternation, non-empty turns, lengths."""
    import great_expectations.expectations as gxe

    return [
        *(
            gxe.ExpectColumnToExist(column=c)
            for c in ("record_id", "instruction_key", "role_pattern", "min_turn_chars", "total_chars")
        ),
        gxe.ExpectColumnValuesToNotBeNull(column="record_id"),
        gxe.ExpectColumnValuesToMatchRegex(column="record_id", regex=RECORD_ID_PATTERN),
        gxe.ExpectColumnValuesToNotBeNull(column="instruction_key"),
        gxe.ExpectColumnValuesToMatchRegex(column="role_pattern", regex=ROLE_PATTERN),
        gxe.ExpectColumnValuesToBeBetween(column="min_turn_chars", min_value=recipe.gates.min_turn_chars),
        gxe.ExpectColumnValuesToBeBetween(column="total_chars", min_value=1, max_value=recipe.gates.max_record_chars),
    ]


RELEASE_GATE_VERSION = 3  # bump when the release expectations change: every release part is validated again


def release_gate_key(recipe: Recipe) -> str:
    """What a release part's validation depends on besides its content: the gate's expectations and thresholds.
    A part validated under this key is not validated again (release_parts.checked_key)."""
    blob = json.dumps(
        [RELEASE_GATE_VERSION, recipe.gates.model_dump(mode="json"), sorted(recipe.rules.allowed_languages)],
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def release_level_expectations(recipe: Recipe) -> list:
    """The release as a whole: not empty, the language mix within bounds ("und": no letters to tell), and few
    of the audited records with a near-duplicate left in it (curate.near_dedup.audit), and, when the recipe
    bounds it, few flagged by the independent contamination audit (curate.decontam.audit)."""
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectColumnValuesToBeBetween(column="release_records", min_value=1),
        gxe.ExpectColumnValuesToBeBetween(
            column="allowed_language_share", min_value=recipe.gates.min_allowed_language_share, max_value=1.0
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="near_duplicate_share", min_value=0.0, max_value=recipe.gates.max_near_duplicate_share
        ),
        *(
            [
                gxe.ExpectColumnValuesToBeBetween(
                    column="contamination_suspect_share",
                    min_value=0.0,
                    max_value=recipe.gates.max_contamination_suspect_share,
                )
            ]
            if recipe.gates.max_contamination_suspect_share is not None
            else []
        ),
    ]


def release_record_expectations(recipe: Recipe, whole_release: bool) -> list:
    """Each released record: every record expectation, not contaminated, and unique by id and instruction in
    the release (with the whole release in the query, GX's uniqueness; with only new records in it, each
    record's copies counted across the whole release)."""
    import great_expectations.expectations as gxe

    unique = (
        [
            gxe.ExpectColumnValuesToBeUnique(column="record_id"),
            gxe.ExpectColumnValuesToBeUnique(column="instruction_key"),
        ]
        if whole_release
        else [
            gxe.ExpectColumnValuesToBeBetween(column=c, min_value=1, max_value=1)
            for c in ("record_id_copies", "instruction_key_copies")
        ]
    )
    return [
        *record_expectations(recipe),
        *unique,
        gxe.ExpectColumnValuesToBeInSet(column="contaminated", value_set=[False]),
    ]


def _gate_url(engine: Engine) -> str:
    """The store's URL for GX's own engine, with JIT off: GX sends one query per expectation, and
    PostgreSQL's JIT compiles each of them for ~1 s, more than most of them take to run."""
    options = " ".join(filter(None, [engine.url.query.get("options"), "-c jit=off"]))
    return engine.url.update_query_dict({"options": options}).render_as_string(hide_password=False)


def snapshot_table(gate: str, run_id: str) -> str:
    """The name of a gate's snapshot table for a run: only [a-z0-9_], the run id hashed (never raw input)."""
    if not re.fullmatch(r"[a-z_]+", gate):  # a raise, not an assert: asserts vanish under python -O
        raise ValueError(f"gate name must be lower-case letters and underscores, got {gate!r}")
    return f"gate_rows_{gate}_{hashlib.sha256(run_id.encode()).hexdigest()[:12]}"


def validate_query(
    engine: Engine, query: sa.Select, expectations: list, name: str, run_id: str
) -> tuple[bool, dict, list]:
    """Run GX expectations on a query, evaluated by PostgreSQL. Returns (success, statistics, failures).

    The query is evaluated once, into an unlogged snapshot table of just its columns, and GX validates that:
    GX sends one SQL query per metric (~16 for the release gate), and over the query itself each of them
    re-evaluated it (anti-joins over decisions, per-row copy counts, scans of the wide records table).
    Measured on 199k records: the release gate 3.7-4.0 s -> 2.1 s (a nightly one over one new part of four
    3.3-4.6 s -> 0.8-1.0 s), the ingest gate 1.9-2.9 s -> 1.2-1.5 s. A table asset, not a query asset over
    it: GX runs a query asset's `select *` whole first (~0.15 s here). A regular table, since GX connects
    on its own; dropped afterwards, and a leftover of a crashed try is replaced. ANALYZE on it measured
    no faster."""
    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # it logs ~200 lines per import
    import great_expectations as gx

    table = snapshot_table(name, run_id)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"drop table if exists {table}"))
            conn.execute(sa.text("set local jit = off"))  # one pass: compiling it cost more than it saved (~0.25 s)
            conn.execute(sa.text(f"create unlogged table {table} as {literal_sql(query, engine)}"))
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = {"globally": False}
        with warnings.catch_warnings():  # the generic SQL datasource is deliberate: it takes any URL, Unix sockets too
            warnings.simplefilter("ignore")
            datasource = context.data_sources.add_sql("infinstruct", connection_string=_gate_url(engine))
        try:
            batch = (
                datasource.add_table_asset(name, table_name=table).add_batch_definition_whole_table("all").get_batch()
            )
            suite = context.suites.add(gx.ExpectationSuite(name=name))
            for expectation in expectations:
                suite.add_expectation(expectation)
            result = batch.validate(suite).to_json_dict()
        finally:
            datasource.get_engine().dispose()  # GX makes an engine per datasource: close its connections now
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"drop table if exists {table}"))
    failures = [
        {
            "expectation": r["expectation_config"]["type"],
            "column": r["expectation_config"]["kwargs"].get("column"),
            "unexpected_count": r["result"].get("unexpected_count", r["result"].get("observed_value")),
            "sample": (r["result"].get("partial_unexpected_list") or [])[:5],
            "error": (r.get("exception_info") or {}).get("exception_message"),
        }
        for r in result["results"]
        if not r["success"]
    ]
    return bool(result["success"]), result["statistics"], failures


def run_gate(
    engine: Engine,
    run_id: str,
    gate: str,
    scope: str,
    query: sa.Select,
    expectations: list,
    measured: dict | None = None,
) -> GateResult:
    """Validate, store the result (with what the gate `measured` outside GX, beside GX's statistics), and
    raise GateFailed if it failed."""
    success, statistics, failures = validate_query(engine, query, expectations, gate, run_id)
    statistics = {**statistics, **(measured or {})}
    result = GateResult(gate, scope, success, statistics, failures)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "insert into gate_results (run_id, gate, scope, success, statistics, failures)"
                " values (:run, :gate, :scope, :success, cast(:statistics as jsonb), cast(:failures as jsonb))"
            ),
            {
                "run": run_id,
                "gate": gate,
                "scope": scope,
                "success": success,
                "statistics": json.dumps(statistics),
                "failures": json.dumps(failures, default=str),
            },
        )
    log.info(result.summary())
    if not success:
        raise GateFailed(result.summary())
    return result


def check_ingested(engine: Engine, recipe: Recipe, run_id: str) -> GateResult:
    """Gate `ingested`: the records of every partition this run ingested (unchanged partitions passed
    when they were ingested). One validation for all of them: GX costs seconds to import per process.
    The first task after the bulk load of records: it refreshes their statistics for every stage after it."""
    refresh_statistics(engine, "records")
    query = (
        sa.select(
            records.c.record_id,
            records.c.instruction_key,
            records.c.role_pattern,
            records.c.min_turn_chars,
            records.c.total_chars,
        )
        .join(partitions, partitions.c.partition_id == records.c.partition_id)
        .where(partitions.c.run_id == run_id)
    )
    return run_gate(engine, run_id, "ingested", "partitions ingested by the run", query, record_expectations(recipe))


def _copies(run_id: str, column: str) -> sa.ScalarSelect:
    """How many kept records of the run's release share this record's `column` (by index: records_<column>)."""
    other = records.alias("other")
    return (
        sa.select(sa.func.count())
        .select_from(other)
        .where(other.c[column] == records.c[column], in_run(run_id, other.c.partition_id), ~dropped(other))
        .scalar_subquery()
    )


def check_release(engine: Engine, recipe: Recipe, run_id: str) -> GateResult:
    """Gate `release`: the release export is about to put together from the run's release parts.

    The records of every part the gate has not validated before (under the same expectations) are checked:
    all of them on a first release, on a nightly one only the new or changed partitions' records, each
    counted against the whole release by id and by instruction. The release as a whole (not empty, the
    language mix) is checked from the parts' counts. A part that passes is marked validated."""
    key = release_gate_key(recipe)
    refresh_statistics(engine, "decisions")  # every stage added some: plan the anti-joins on real counts
    with engine.connect() as conn:
        parts = current_parts(conn, recipe, run_id)
    to_check = [p["partition_id"] for p in parts if p["checked_key"] != key]
    after = [row for p in parts for row in p["summary"]["composition"] if not row[3]]  # released: not not_selected
    released = sum(row[4] for row in after)
    allowed = {*recipe.rules.allowed_languages, "und"}
    share = sum(row[4] for row in after if row[2] in allowed) / released if released else 0.0
    near = near_duplicate_audit.audit(engine, recipe, run_id, to_check)
    suspects = contamination_audit.audit(engine, recipe, run_id, to_check)
    release_columns = (
        sa.literal(released, sa.BigInteger).label("release_records"),
        sa.literal(share, sa.Float).label("allowed_language_share"),
        sa.literal(near.share, sa.Float).label("near_duplicate_share"),
        sa.literal(suspects.share, sa.Float).label("contamination_suspect_share"),
    )
    expectations = release_level_expectations(recipe)
    if to_check and released:
        whole = len(to_check) == len(parts)
        contaminated = sa.exists().where(
            contamination.c.partition_id == records.c.partition_id, contamination.c.line_no == records.c.line_no
        )
        copies = (
            ()
            if whole
            else (
                _copies(run_id, "record_id").label("record_id_copies"),
                _copies(run_id, "instruction_key").label("instruction_key_copies"),
            )
        )
        query = kept_records(
            run_id,
            records.c.record_id,
            records.c.instruction_key,
            records.c.role_pattern,
            records.c.min_turn_chars,
            records.c.total_chars,
            contaminated.label("contaminated"),
            *copies,
            *release_columns,
        )
        if not whole:
            query = query.where(records.c.partition_id.in_(to_check))
        expectations += release_record_expectations(recipe, whole)
        scope = "release" if whole else f"release: {len(to_check)} new or changed of {len(parts)} parts"
    else:  # one row of the release's own measures: an empty release fails `release_records >= 1` (not vacuously)
        query = sa.select(*release_columns)
        scope = f"release: all {len(parts)} parts validated before" if released else "release: no record released"
    result = run_gate(
        engine,
        run_id,
        "release",
        scope,
        query,
        expectations,
        {"near_duplicates": near.as_dict(), "contamination_suspects": suspects.as_dict()},
    )
    if suspects.suspects:
        log.warning(
            "release gate of run %s: the independent contamination audit flags %d of %d sampled released"
            " records (e.g. %s)",
            run_id,
            suspects.suspects,
            suspects.sampled,
            suspects.examples[:2],
        )
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "update release_parts set checked_key = :k where dataset = :d and partition_id = any(:ps)"
                " and fingerprint = any(:fs)"
            ),
            {
                "k": key,
                "d": recipe.name,
                "ps": to_check,
                "fs": [p["fingerprint"] for p in parts if p["partition_id"] in to_check],
            },
        )
    return result


def check_selection(engine: Engine, recipe: Recipe, run_id: str) -> GateResult | None:
    """Gate `selection`: the selected records (the kept set after select_records). Each quota domain's share
    within `selection.tolerance` of the planned mix, no selected record contaminated or duplicated (id or
    instruction), every record scored with a known domain, and the selection's mean quality at least the
    standing pool's (+ `min_quality_margin`). None when the recipe has no selection."""
    import great_expectations.expectations as gxe

    settings = recipe.selection
    if settings is None:
        return None
    with engine.connect() as conn:
        summary = conn.execute(
            sa.text(
                "select s.result from selection_state s join runs r on r.dataset = s.dataset where r.run_id = :r"
                " and s.run_id = :r"
            ),
            {"r": run_id},
        ).scalar()
    if summary is None:
        raise GateFailed(f"gate selection: run {run_id!r} has no selection summary: run select_records first")
    planned = {d: e["planned_share"] for d, e in summary["domains"].items() if "planned_share" in e}
    scores = sa.table("record_scores", sa.column("record_id"), sa.column("domain"), sa.column("quality"))
    contaminated = sa.exists().where(
        contamination.c.partition_id == records.c.partition_id, contamination.c.line_no == records.c.line_no
    )
    chosen = (
        kept_records(
            run_id,
            records.c.record_id,
            records.c.instruction_key,
            contaminated.label("contaminated"),
            scores.c.domain,
            scores.c.quality,
        )
        .select_from(records.outerjoin(scores, scores.c.record_id == records.c.record_id))
        .subquery()
    )
    in_quota = chosen.c.domain.in_(list(planned)) if planned else sa.false()
    per_domain = sa.func.count().over(partition_by=chosen.c.domain)
    quota_total = sa.func.sum(sa.case((in_quota, 1), else_=0)).over()
    expected = (
        sa.case(*((chosen.c.domain == d, share) for d, share in planned.items()), else_=0.0)
        if planned
        else sa.literal(0.0)
    )
    gap = sa.case(
        (in_quota, sa.func.abs(sa.cast(per_domain, sa.Float) / sa.func.nullif(quota_total, 0) - expected)), else_=0.0
    )
    query = sa.select(
        chosen.c.record_id,
        chosen.c.instruction_key,
        chosen.c.contaminated,
        chosen.c.domain,
        chosen.c.quality,
        gap.label("share_gap"),
    )
    minimum = (summary["pool_mean_quality"] or 0.0) + settings.min_quality_margin
    expectations = [
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectColumnValuesToBeUnique(column="record_id"),
        gxe.ExpectColumnValuesToBeUnique(column="instruction_key"),
        gxe.ExpectColumnValuesToBeInSet(column="contaminated", value_set=[False]),
        gxe.ExpectColumnValuesToNotBeNull(column="domain"),
        gxe.ExpectColumnValuesToBeInSet(column="domain", value_set=list(settings.domains.resolved())),
        gxe.ExpectColumnValuesToBeBetween(column="share_gap", min_value=0, max_value=settings.tolerance),
        gxe.ExpectColumnMeanToBeBetween(column="quality", min_value=minimum - 1e-9),
    ]
    return run_gate(engine, run_id, "selection", "selected records", query, expectations)
