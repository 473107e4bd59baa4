"""infinstruct curation: raw instruction sources -> a versioned Infinity-Instruct-shaped release.

start_run -> plan_partitions -> ingest[partition] -> check_ingested -> apply_rules[partition]
          -> decontaminate[partition] & minhash[partition] -> deduplicate -> near_deduplicate -> semantic_deduplicate
          -> score_records[partition] -> select_records -> check_selection -> write_release_part[partition]
          -> check_release -> export_release

Every task is one call into `infinstruct.pipeline`; XCom carries only partition ids and counts.
Data errors (a partition that is mostly malformed, a failed quality gate) fail the task at once
without retries, fail the run and hold back the export.
"""
from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

PROJECT = Path(__file__).resolve().parents[1]
DEFAULT_RECIPE = os.environ.get("INFINSTRUCT_RECIPE", str(PROJECT / "include" / "recipes" / "sample.yaml"))
DEFAULT_OUT = os.environ.get("INFINSTRUCT_OUT", str(PROJECT / "releases"))


def _run_id() -> str:
    return get_current_context()["run_id"]


def _param_path(name: str) -> str:
    """A path param; relative paths are taken from the project folder, whatever the worker's cwd."""
    path = Path(get_current_context()["params"][name]).expanduser()
    return str(path if path.is_absolute() else PROJECT / path)


def _data_errors():
    from infinstruct.ingest import IngestError
    from infinstruct.quality import GateFailed
    from infinstruct.config import RecipeError
    from infinstruct.partitions import SourceError
    from infinstruct.semantic import VectorIndexError
    from infinstruct.selection import SelectionError
    from infinstruct.release_parts import ReleasePartError
    return IngestError, GateFailed, RecipeError, SourceError, VectorIndexError, SelectionError, ReleasePartError


def _call(step, *args):
    """Run a pipeline step; bad data or config fails the task without pointless retries."""
    try:
        return step(*args)
    except _data_errors() as exc:
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc


def _mark_failed(context) -> None:
    from infinstruct.pipeline import mark_failed
    mark_failed(context["run_id"])


@dag(
    dag_id="infinstruct_curation",
    schedule=os.environ.get("INFINSTRUCT_SCHEDULE", "0 2 * * *"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # runs of one dataset share its partitions and decisions
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30), "retry_exponential_backoff": True},
    params={
        "recipe": Param(DEFAULT_RECIPE, type="string", description="Path of the recipe YAML"),
        "out_dir": Param(DEFAULT_OUT, type="string", description="Folder that receives <dataset>/vNNNN releases"),
    },
    on_failure_callback=_mark_failed,
    tags=["infinstruct", "phase1"],
    doc_md=__doc__,
)
def infinstruct_curation():
    @task
    def start_run() -> dict:
        from infinstruct import pipeline
        return _call(pipeline.start_run, _run_id(), _param_path("recipe"))

    @task
    def plan_partitions() -> list[str]:
        from infinstruct import pipeline
        return _call(pipeline.plan, _run_id())

    @task(map_index_template="{{ task.op_kwargs['partition_id'] }}")
    def ingest(partition_id: str) -> dict:
        from infinstruct import pipeline
        return _call(pipeline.ingest_partition, _run_id(), partition_id)

    @task
    def check_ingested() -> dict:
        from infinstruct import pipeline
        return _call(pipeline.check_ingested, _run_id())

    @task(map_index_template="{{ task.op_kwargs['partition_id'] }}")
    def apply_rules(partition_id: str) -> dict:
        from infinstruct import pipeline
        return _call(pipeline.apply_rules, _run_id(), partition_id)

    @task(map_index_template="{{ task.op_kwargs['filtered']['partition_id'] }}")
    def decontaminate(filtered: dict) -> dict:
        from infinstruct import pipeline
        return _call(pipeline.decontaminate, _run_id(), filtered["partition_id"])

    @task(map_index_template="{{ task.op_kwargs['filtered']['partition_id'] }}")
    def minhash(filtered: dict) -> dict:
        from infinstruct import pipeline
        return _call(pipeline.minhash, _run_id(), filtered["partition_id"])

    @task
    def deduplicate() -> dict:
        from infinstruct import pipeline
        return _call(pipeline.deduplicate, _run_id())

    @task
    def near_deduplicate() -> dict:
        from infinstruct import pipeline
        return _call(pipeline.near_deduplicate, _run_id())

    @task
    def semantic_deduplicate() -> dict:
        from infinstruct import pipeline
        return _call(pipeline.semantic_deduplicate, _run_id())

    @task(map_index_template="{{ task.op_kwargs['partition_id'] }}")
    def score_records(partition_id: str) -> dict:
        from infinstruct import pipeline
        return _call(pipeline.score_records, _run_id(), partition_id)

    @task
    def select_records() -> dict:
        from infinstruct import pipeline
        return _call(pipeline.select, _run_id())

    @task
    def check_selection() -> dict:
        from infinstruct import pipeline
        return _call(pipeline.check_selection, _run_id())

    @task(map_index_template="{{ task.op_kwargs['partition_id'] }}")
    def write_release_part(partition_id: str) -> dict:
        from infinstruct import pipeline
        return _call(pipeline.write_release_part, _run_id(), partition_id, _param_path("out_dir"))

    @task
    def check_release() -> dict:
        from infinstruct import pipeline
        return _call(pipeline.check_release, _run_id())

    @task
    def export_release() -> dict:
        from infinstruct import pipeline
        return _call(pipeline.export_release, _run_id(), _param_path("out_dir"))

    partitions = plan_partitions()
    start_run() >> partitions
    filtered = apply_rules.expand(partition_id=partitions)
    ingest.expand(partition_id=partitions) >> check_ingested() >> filtered
    cleaned = decontaminate.expand(filtered=filtered)
    keyed = minhash.expand(filtered=filtered)   # in parallel with decontaminate: keys for near_deduplicate
    # default trigger rule all_success: one failed partition stops dedup, the gate and the export
    scored = score_records.expand(partition_id=partitions)
    [cleaned, keyed] >> deduplicate() >> near_deduplicate() >> semantic_deduplicate() >> scored
    # selection off in the recipe (null): score_records and select_records return at once, check_selection skips
    # each partition's share of the release is written once per content; a nightly release links the rest
    parts = write_release_part.expand(partition_id=partitions)
    scored >> select_records() >> check_selection() >> parts >> check_release() >> export_release()


infinstruct_curation()
