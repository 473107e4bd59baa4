"""Great Expectations quality gates between stages.

A gate validates a SQL query over the metadata store with a GX 1.x suite, inside PostgreSQL (so a
gate over millions of records never loads them into memory), stores its result in `gate_results`,
and raises GateFailed when any expectation fails, which fails the Airflow task and stops every
downstream task.
"""
from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .config import Recipe
from .conversation import ROLE_PATTERN
from .db import contamination, literal_sql, partitions, record_stats, records
from .ledger import kept_records

log = logging.getLogger(__name__)

RECORD_ID_PATTERN = r"^[0-9a-f]{32}$"


class GateFailed(RuntimeError):
    """A quality gate found data that violates its expectations; see gate_results for details."""


@dataclass
class GateResult:
    gate: str
    scope: str
    success: bool
    statistics: dict[str, Any]
    failures: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> str:
        failed = "; ".join(f"{f['expectation']}({f.get('column') or ''}): {f['unexpected_count']} unexpected, e.g. {f['sample']}"
                           for f in self.failures)
        return f"gate {self.gate} on {self.scope}: {'passed' if self.success else 'FAILED'} " + (
            f"({self.statistics.get('successful_expectations')}/{self.statistics.get('evaluated_expectations')})" + (f" — {failed}" if failed else ""))


def record_expectations(recipe: Recipe) -> list:
    """What every stored conversation must satisfy: schema, ids, role alternation, non-empty turns, lengths."""
    import great_expectations.expectations as gxe

    return [
        *(gxe.ExpectColumnToExist(column=c) for c in ("record_id", "instruction_key", "role_pattern", "min_turn_chars", "total_chars")),
        gxe.ExpectColumnValuesToNotBeNull(column="record_id"),
        gxe.ExpectColumnValuesToMatchRegex(column="record_id", regex=RECORD_ID_PATTERN),
        gxe.ExpectColumnValuesToNotBeNull(column="instruction_key"),
        gxe.ExpectColumnValuesToMatchRegex(column="role_pattern", regex=ROLE_PATTERN),
        gxe.ExpectColumnValuesToBeBetween(column="min_turn_chars", min_value=recipe.gates.min_turn_chars),
        gxe.ExpectColumnValuesToBeBetween(column="total_chars", min_value=1, max_value=recipe.gates.max_record_chars),
    ]


def release_expectations(recipe: Recipe) -> list:
    """The release: every record expectation, no duplicate record or instruction, no contaminated record,
    the language mix within bounds, and not empty."""
    import great_expectations.expectations as gxe

    return [
        *record_expectations(recipe),
        gxe.ExpectColumnValuesToBeUnique(column="record_id"),
        gxe.ExpectColumnValuesToBeUnique(column="instruction_key"),
        gxe.ExpectColumnValuesToBeInSet(column="contaminated", value_set=[False]),
        gxe.ExpectColumnValuesToBeInSet(column="language", value_set=[*recipe.rules.allowed_languages, "und"],
                                        mostly=recipe.gates.min_allowed_language_share),
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
    ]


def validate_query(engine: Engine, query: sa.Select, expectations: list, name: str) -> tuple[bool, dict, list]:
    """Run GX expectations on a query, evaluated by PostgreSQL. Returns (success, statistics, failures)."""
    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # it logs ~200 lines per import
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}
    with warnings.catch_warnings():  # the generic SQL datasource is deliberate: it takes any URL, Unix sockets too
        warnings.simplefilter("ignore")
        datasource = context.data_sources.add_sql("infinstruct", connection_string=engine.url.render_as_string(hide_password=False))
    try:
        batch = datasource.add_query_asset(name, query=literal_sql(query, engine)).add_batch_definition_whole_table("all").get_batch()
        suite = context.suites.add(gx.ExpectationSuite(name=name))
        for expectation in expectations:
            suite.add_expectation(expectation)
        result = batch.validate(suite).to_json_dict()
    finally:
        datasource.get_engine().dispose()  # GX makes an engine per datasource: close its connections now
    failures = [{
        "expectation": r["expectation_config"]["type"],
        "column": r["expectation_config"]["kwargs"].get("column"),
        "unexpected_count": r["result"].get("unexpected_count", r["result"].get("observed_value")),
        "sample": (r["result"].get("partial_unexpected_list") or [])[:5],
        "error": (r.get("exception_info") or {}).get("exception_message"),
    } for r in result["results"] if not r["success"]]
    return bool(result["success"]), result["statistics"], failures


def run_gate(engine: Engine, run_id: str, gate: str, scope: str, query: sa.Select, expectations: list) -> GateResult:
    """Validate, store the result, and raise GateFailed if it failed."""
    success, statistics, failures = validate_query(engine, query, expectations, gate)
    result = GateResult(gate, scope, success, statistics, failures)
    with engine.begin() as conn:
        conn.execute(sa.text(
            "insert into gate_results (run_id, gate, scope, success, statistics, failures)"
            " values (:run, :gate, :scope, :success, cast(:statistics as jsonb), cast(:failures as jsonb))"),
            {"run": run_id, "gate": gate, "scope": scope, "success": success,
             "statistics": json.dumps(statistics), "failures": json.dumps(failures, default=str)})
    log.info(result.summary())
    if not success:
        raise GateFailed(result.summary())
    return result


def check_ingested(engine: Engine, recipe: Recipe, run_id: str) -> GateResult:
    """Gate `ingested`: the records of every partition this run ingested (unchanged partitions passed
    when they were ingested). One validation for all of them: GX costs seconds to import per process."""
    query = (sa.select(records.c.record_id, records.c.instruction_key, records.c.role_pattern, records.c.min_turn_chars,
                       records.c.total_chars)
             .join(partitions, partitions.c.partition_id == records.c.partition_id)
             .where(partitions.c.run_id == run_id))
    return run_gate(engine, run_id, "ingested", "partitions ingested by the run", query, record_expectations(recipe))


def check_release(engine: Engine, recipe: Recipe, run_id: str) -> GateResult:
    """Gate `release`: the kept set that export is about to write."""
    contaminated = sa.exists().where(contamination.c.partition_id == records.c.partition_id,
                                     contamination.c.line_no == records.c.line_no)
    query = kept_records(run_id, records.c.record_id, records.c.instruction_key, records.c.role_pattern,
                         records.c.min_turn_chars, records.c.total_chars, contaminated.label("contaminated"),
                         record_stats.c.stats["record_language"].astext.label("language"),
                         ).select_from(records.outerjoin(record_stats, record_stats.c.record_id == records.c.record_id))
    return run_gate(engine, run_id, "release", "release", query, release_expectations(recipe))


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
        summary = conn.execute(sa.text(
            "select s.result from selection_state s join runs r on r.dataset = s.dataset where r.run_id = :r"
            " and s.run_id = :r"), {"r": run_id}).scalar()
    if summary is None:
        raise GateFailed(f"gate selection: run {run_id!r} has no selection summary: run select_records first")
    planned = {d: e["planned_share"] for d, e in summary["domains"].items() if "planned_share" in e}
    scores = sa.table("record_scores", sa.column("record_id"), sa.column("domain"), sa.column("quality"))
    contaminated = sa.exists().where(contamination.c.partition_id == records.c.partition_id,
                                     contamination.c.line_no == records.c.line_no)
    chosen = kept_records(run_id, records.c.record_id, records.c.instruction_key, contaminated.label("contaminated"),
                          scores.c.domain, scores.c.quality,
                          ).select_from(records.outerjoin(scores, scores.c.record_id == records.c.record_id)).subquery()
    in_quota = chosen.c.domain.in_(list(planned)) if planned else sa.false()
    per_domain = sa.func.count().over(partition_by=chosen.c.domain)
    quota_total = sa.func.sum(sa.case((in_quota, 1), else_=0)).over()
    expected = sa.case(*((chosen.c.domain == d, share) for d, share in planned.items()), else_=0.0) if planned else sa.literal(0.0)
    gap = sa.case((in_quota, sa.func.abs(sa.cast(per_domain, sa.Float) / sa.func.nullif(quota_total, 0) - expected)),
                  else_=0.0)
    query = sa.select(chosen.c.record_id, chosen.c.instruction_key, chosen.c.contaminated, chosen.c.domain,
                      chosen.c.quality, gap.label("share_gap"))
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
