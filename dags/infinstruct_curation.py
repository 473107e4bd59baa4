"""infinstruct curation: raw instruction sources -> a versioned Infinity-Instruct-shaped release.

The tasks and their order are declared once, in `infinstruct.stages` (`infinstruct stages` prints
them; $INFINSTRUCT_STAGES adds your own): a per-partition stage is a mapped task over the partition ids `plan_partitions` returns, every
other stage one task. Every task is one call into `infinstruct.pipeline`; XCom carries only partition
ids and counts.
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

from infinstruct.stages import Kind, StageSpec, all_stages

PROJECT = Path(__file__).resolve().parents[1]
DEFAULT_RECIPE = os.environ.get("INFINSTRUCT_RECIPE", str(PROJECT / "include" / "recipes" / "sample.yaml"))
DEFAULT_OUT = os.environ.get("INFINSTRUCT_OUT", str(PROJECT / "releases"))


def _run_id() -> str:
    return get_current_context()["run_id"]


def _param_path(name: str) -> str:
    """A path param; relative paths are taken from the project folder, whatever the worker's cwd."""
    path = Path(get_current_context()["params"][name]).expanduser()
    return str(path if path.is_absolute() else PROJECT / path)


def _call(step, *args):
    """Run a pipeline step; bad data or config (a DataError) fails the task without pointless retries."""
    from infinstruct.errors import DataError
    try:
        return step(*args)
    except DataError as exc:
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc


def _mark_failed(context) -> None:
    from infinstruct.pipeline import mark_failed
    mark_failed(context["run_id"])


def _stage_task(spec: StageSpec):
    """The Airflow task of a declared stage: one call into infinstruct.pipeline (`spec.step`)."""
    mapped = spec.kind is Kind.PARTITION

    def run(partition_id: str | None = None):
        import importlib
        module, _, function = spec.step.rpartition(":")
        step = getattr(importlib.import_module(module or "infinstruct.pipeline"), function)
        args = [_run_id(), *([partition_id] if mapped else []), *(_param_path(name) for name in spec.params)]
        return _call(step, *args)

    run.__doc__ = spec.summary
    return task(run, task_id=spec.task,
                map_index_template="{{ task.op_kwargs['partition_id'] }}" if mapped else None)


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
    tasks, partitions = {}, None
    for spec in all_stages():
        if spec.kind is Kind.PARTITION:
            tasks[spec.task] = _stage_task(spec).expand(partition_id=partitions)
        else:
            tasks[spec.task] = _stage_task(spec)()
            if spec.kind is Kind.PLAN:
                partitions = tasks[spec.task]
        for upstream in spec.after:
            tasks[upstream] >> tasks[spec.task]
    # default trigger rule all_success: one failed partition stops the stages after it, the gates and the export


infinstruct_curation()
