"""The steps of the curation pipeline, one function per Airflow task.

Each step takes the run id (and a partition id where it is mapped), reads what it needs from the
metadata store, and returns a small JSON-able summary: ids and counts, never data. The recipe is
snapshotted into `runs` when the run starts, so every task of a run sees the same recipe even if the
file changes meanwhile.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any

import sqlalchemy as sa

from infinstruct.config import Recipe, load_recipe, recipe_hash
from infinstruct.curate.decontam import stage as decontam_stage
from infinstruct.curate.dedup import stage as dedup_stage
from infinstruct.curate.near_dedup import stage as near_dedup_stage
from infinstruct.curate.rules import stage as rules_stage
from infinstruct.curate.scoring import stage as scoring_stage
from infinstruct.curate.selection import stage as selection_stage
from infinstruct.curate.semantic_dedup import stage as semantic_dedup_stage
from infinstruct.errors import DataError
from infinstruct.gates import checks as gates
from infinstruct.preflight import check_inputs
from infinstruct.record.reasons import Stage
from infinstruct.release import assemble, parts
from infinstruct.sources import ingest
from infinstruct.sources.labels import run_partition_labels
from infinstruct.sources.plan import FileState, ScannedFile, other_spellings, plan_recipe
from infinstruct.store import run_lease
from infinstruct.store.db import get_engine, logged_if_store_unreachable
from infinstruct.store.housekeeping import abandon_stale_runs, forget_spellings
from infinstruct.store.stage_counts import counted
from infinstruct.store.vector_probe import vector_support

log = logging.getLogger(__name__)


def run_recipe(run_id: str) -> Recipe:
    """The recipe snapshot a run started with."""
    with get_engine().connect() as conn:
        raw = conn.execute(sa.text("select recipe from runs where run_id = :run"), {"run": run_id}).scalar()
    if raw is None:
        raise LookupError(f"run {run_id!r} was never started (no row in runs); start it with start_run first")
    return Recipe.model_validate(raw)


PARTITION_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,63}$")  # a date, a datetime, a batch name


class PartitionKeyError(DataError, ValueError):
    """A run's partition key that cannot name a folder."""


def start_run(run_id: str, recipe_path: str | os.PathLike, partition: str | None = None) -> dict[str, Any]:
    """Validate the recipe and record the run with a snapshot of it (a retry updates the snapshot). `partition`:
    the run's partition key (the schedule's or a backfill's night), which sources naming `{partition}` are read
    up to; None: every partition."""
    if partition is not None and not PARTITION_KEY.match(partition):
        raise PartitionKeyError(f"partition key {partition!r}: use letters, digits and . _ : + - (e.g. 2026-12-01)")
    recipe, path = load_recipe(recipe_path)
    check_inputs(recipe)  # a missing benchmark or target file fails here, not after hours of work
    if any(s is not None and s.index != "exact" for s in (recipe.semantic_dedup, recipe.selection)):
        vector_support(get_engine())  # first: a pgvector that would crash the server is found before any work
    with get_engine().begin() as conn:
        conn.execute(
            sa.text(
                "insert into runs (run_id, dataset, recipe, recipe_hash, partition_key) values (:run, :d, cast(:r as jsonb), :h, :k)"
                " on conflict (run_id) do update set recipe = excluded.recipe, recipe_hash = excluded.recipe_hash,"
                " partition_key = excluded.partition_key, status = 'running', finished_at = null, end_reason = null"
            ),
            {
                "run": run_id,
                "d": recipe.name,
                "r": json.dumps(recipe.model_dump(mode="json")),
                "h": recipe_hash(recipe),
                "k": partition,
            },
        )
        abandoned = abandon_stale_runs(conn, recipe.name, run_id)
    if abandoned:
        log.warning(
            "run %s: earlier run(s) of %r still recorded as running marked failed (abandoned): %s",
            run_id,
            recipe.name,
            ", ".join(abandoned),
        )
    log.info(
        "run %s: recipe %s (%s), %d sources%s",
        run_id,
        path,
        recipe_hash(recipe),
        len(recipe.sources),
        f", partitions up to {partition}" if partition is not None else "",
    )
    return {"run_id": run_id, "dataset": recipe.name, "recipe_hash": recipe_hash(recipe), "partition": partition}


def _known_files(conn, dataset: str) -> dict[tuple[str, str], ScannedFile]:
    rows = conn.execute(
        sa.text(
            "select source, path, size, mtime_ns, ctime_ns, inode, shard_lines, scanned_at_ns, shards"
            " from source_files where dataset = :d"
        ),
        {"d": dataset},
    )
    return {
        (r.source, r.path): ScannedFile(
            r.source,
            r.path,
            FileState(r.size, r.mtime_ns, r.ctime_ns, r.inode),
            r.shard_lines,
            r.scanned_at_ns,
            tuple(map(tuple, r.shards)),
        )
        for r in rows
    }


def plan(run_id: str) -> list[str]:
    """Partition every source file; record the partitions and the run's scope; return partition ids.

    Files unchanged since the last plan (size, mtime, ctime, inode: partitions.ScannedFile) are not read again."""
    recipe = run_recipe(run_id)
    with get_engine().connect() as conn:
        known = _known_files(conn, recipe.name)
        partition = conn.execute(
            sa.text("select partition_key from runs where run_id = :run"), {"run": run_id}
        ).scalar()
    plans, scans, skipped = plan_recipe(recipe, known, partition)
    for s in skipped:  # nothing to read, so no line to account for: say so where a user looks
        log.warning("run %s: source %r: %s left out of the plan (%s): %s", run_id, s.source, s.path, s.reason, s.detail)
    rescanned = [s for s in scans if known.get((s.source, s.path)) is not s]
    with get_engine().begin() as conn:
        stored = set(known) | {
            tuple(r)
            for r in conn.execute(sa.text("select source, path from partitions where dataset = :d"), {"d": recipe.name})
        }
        forgotten = forget_spellings(conn, recipe.name, other_spellings({(s.source, s.path) for s in scans}, stored))
        if plans:
            conn.execute(
                sa.text(
                    "insert into partitions (partition_id, dataset, source, path, shard, format, start_offset, end_offset,"
                    " first_line, checksum) values (:partition_id, :dataset, :source, :path, :shard, :format, :start_offset,"
                    " :end_offset, :first_line, :checksum)"
                    " on conflict (partition_id) do update set format = excluded.format, start_offset = excluded.start_offset,"
                    " end_offset = excluded.end_offset, first_line = excluded.first_line, checksum = excluded.checksum,"
                    " updated_at = now()"
                ),
                [vars(p) for p in plans],
            )
        if rescanned:
            conn.execute(
                sa.text(
                    "insert into source_files (dataset, source, path, size, mtime_ns, ctime_ns, inode, shard_lines,"
                    " scanned_at_ns, shards) values (:d, :source, :path, :size, :mtime_ns, :ctime_ns, :inode, :shard_lines,"
                    " :scanned_at_ns, cast(:shards as jsonb))"
                    " on conflict (dataset, source, path) do update set size = excluded.size, mtime_ns = excluded.mtime_ns,"
                    " ctime_ns = excluded.ctime_ns, inode = excluded.inode, shard_lines = excluded.shard_lines,"
                    " scanned_at_ns = excluded.scanned_at_ns, shards = excluded.shards"
                ),
                [
                    {
                        "d": recipe.name,
                        "source": s.source,
                        "path": s.path,
                        **vars(s.state),
                        "shard_lines": s.shard_lines,
                        "scanned_at_ns": s.scanned_at_ns,
                        "shards": json.dumps(s.shards),
                    }
                    for s in rescanned
                ],
            )
        conn.execute(sa.text("delete from run_partitions where run_id = :run"), {"run": run_id})
        conn.execute(
            sa.text("insert into run_partitions (run_id, partition_id) values (:run, :p)"),
            [{"run": run_id, "p": p.partition_id} for p in plans],
        )
        conn.execute(sa.text("delete from skipped_files where run_id = :run"), {"run": run_id})
        if skipped:
            conn.execute(
                sa.text(
                    "insert into skipped_files (run_id, source, path, reason, detail)"
                    " values (:run, :source, :path, :reason, :detail)"
                ),
                [{"run": run_id, **vars(s), "reason": s.reason.value} for s in skipped],
            )
    if forgotten:
        log.warning(
            "run %s: %d partition(s) of files planned before under another spelling deleted (their records"
            " were the same files' records again); the whole-dataset stages start over",
            run_id,
            len(forgotten),
        )
    log.info(
        "run %s: %d partitions over %d sources (%d of %d files read, the others unchanged since their last scan;"
        " %d left out)",
        run_id,
        len(plans),
        len(recipe.sources),
        len(rescanned),
        len(scans),
        len(skipped),
    )
    return [p.partition_id for p in plans]


def plan_partitions(run_id: str) -> list[dict[str, str]]:
    """`plan`, each partition id with its label for people (`chat/2 of 3`: Airflow names a mapped instance by it)."""
    ids = plan(run_id)
    labels = run_partition_labels(get_engine(), run_id)
    return [{"partition_id": p, "label": labels.get(p, p)} for p in ids]


@counted(Stage.INGEST)
def ingest_partition(run_id: str, partition_id: str) -> dict[str, Any]:
    return ingest.ingest_partition(get_engine(), run_recipe(run_id), run_id, partition_id).as_dict()


def check_ingested(run_id: str) -> dict[str, Any]:
    result = gates.check_ingested(get_engine(), run_recipe(run_id), run_id)
    return {"gate": result.gate, "success": result.success, "statistics": result.statistics}


@counted(Stage.RULES)
def apply_rules(run_id: str, partition_id: str) -> dict[str, Any]:
    return rules_stage.apply_rules(get_engine(), run_recipe(run_id), run_id, partition_id).as_dict()


@counted(Stage.DECONTAM)
def decontaminate(run_id: str, partition_id: str) -> dict[str, Any]:
    return decontam_stage.decontaminate(get_engine(), run_recipe(run_id), run_id, partition_id).as_dict()


def minhash(run_id: str, partition_id: str) -> dict[str, Any]:
    """MinHash LSH band keys of the partition's instructions, for near_deduplicate (skipped when stored)."""
    computed = near_dedup_stage.store_keys(get_engine(), run_recipe(run_id), run_id, partition_id)
    return {"partition_id": partition_id, "computed": computed}


@counted(Stage.DEDUP)
def deduplicate(run_id: str) -> dict[str, Any]:
    result = dedup_stage.exact_dedup(get_engine(), run_recipe(run_id), run_id)
    log.info("run %s: dedup dropped %s (%s)", run_id, result.by_reason, result.why)
    return result.as_dict()


@counted(Stage.NEAR_DEDUP)
def near_deduplicate(run_id: str) -> dict[str, Any]:
    return near_dedup_stage.near_dedup(get_engine(), run_recipe(run_id), run_id).as_dict()


@counted(Stage.SEMANTIC_DEDUP)
def semantic_deduplicate(run_id: str) -> dict[str, Any]:
    return semantic_dedup_stage.semantic_dedup(get_engine(), run_recipe(run_id), run_id).as_dict()


def score_records(run_id: str, partition_id: str) -> dict[str, Any]:
    return scoring_stage.score_partition(get_engine(), run_recipe(run_id), run_id, partition_id)


@counted(Stage.SELECT)
def select(run_id: str) -> dict[str, Any]:
    result = selection_stage.select_records(get_engine(), run_recipe(run_id), run_id)
    # XCom gets the counts; the per-domain summary is in selection_state and the release manifest
    return {key: value for key, value in result.items() if key != "domains"}


def check_selection(run_id: str) -> dict[str, Any]:
    result = gates.check_selection(get_engine(), run_recipe(run_id), run_id)
    if result is None:
        return {"gate": "selection", "skipped": "no selection in the recipe"}
    return {"gate": result.gate, "success": result.success, "statistics": result.statistics}


def write_release_part(run_id: str, partition_id: str, out_dir: str | os.PathLike) -> dict[str, Any]:
    """The partition's share of the release (records, ledger rows, counts), unless written for this content."""
    part = parts.write_part(get_engine(), run_recipe(run_id), run_id, partition_id, out_dir)
    return {"partition_id": partition_id, "written": part["written"], **part["counts"]}


def check_release(run_id: str) -> dict[str, Any]:
    result = gates.check_release(get_engine(), run_recipe(run_id), run_id)
    return {"gate": result.gate, "scope": result.scope, "success": result.success, "statistics": result.statistics}


def export_release(run_id: str, out_dir: str | os.PathLike) -> dict[str, Any]:
    manifest = assemble.export_release(get_engine(), run_recipe(run_id), run_id, out_dir)
    log.info(
        "run %s: release %s v%04d at %s: %s",
        run_id,
        manifest["dataset"],
        manifest["version"],
        manifest["path"],
        manifest["totals"],
    )
    return {"path": manifest["path"], "version": manifest["version"], "totals": manifest["totals"]}


@logged_if_store_unreachable
def mark_failed(run_id: str) -> None:
    """Record that a run ended without a release (called from the DAG's failure callback and the CLI), and let
    the next run of its dataset have the dataset (store/run_lease.py)."""
    with get_engine().begin() as conn:
        conn.execute(
            sa.text(
                "update runs set status = 'failed', finished_at = now() where run_id = :run and status <> 'succeeded'"
            ),
            {"run": run_id},
        )
        run_lease.release(conn, run_id, "curation")
