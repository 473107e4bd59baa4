"""Shared by the infinstruct DAGs (not a DAG itself): the Airflow task of a declared stage.

A stage (`infinstruct.stages.StageSpec`) becomes a task that makes one call into the library: its step,
with the run id, the partition or batch it is mapped over, and the DAG params it names, as paths. Bad
data or configuration (a `DataError`) fails the task at once, without pointless retries.
"""

from __future__ import annotations

import os
from pathlib import Path

from airflow.sdk import Asset, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from infinstruct.stages import Kind, StageSpec

PROJECT = Path(__file__).resolve().parents[1]
DEFAULT_RECIPE = os.environ.get("INFINSTRUCT_RECIPE", str(PROJECT / "include" / "recipes" / "sample.yaml"))
DEFAULT_OUT = os.environ.get("INFINSTRUCT_OUT", str(PROJECT / "releases"))
# emitted by the curation DAG's export (extra: the release's path and version, and the recipe it was made with);
# the synthesis DAG is scheduled on it
RELEASE_ASSET = Asset(name="infinstruct_release", uri="infinstruct://release")


_FROM_RELEASE_EVENT = {"release": "path", "recipe": "recipe"}  # param -> the release asset event's extra key


def _from_release_event(context, name: str) -> str | None:
    """The value the newest release asset event that triggered this run gives the param, if any."""
    key = _FROM_RELEASE_EVENT.get(name)
    events = [e for events in (context.get("triggering_asset_events") or {}).values() for e in events]
    values = [e.extra.get(key) for e in events if key and e.extra and e.extra.get(key)]
    return values[-1] if values else None


def _param_path(name: str) -> str:
    """A path param (or what a triggering release event says instead); relative paths are taken from the
    project folder, whatever the worker's cwd."""
    context = get_current_context()
    path = Path(_from_release_event(context, name) or context["params"][name]).expanduser()
    return str(path if path.is_absolute() else PROJECT / path)


def _run_partition(context) -> str | None:
    """The run's partition key: the schedule's or a backfill's (CronPartitionTimetable), else the `partition`
    param (a manual trigger, `infinstruct run --partition`), else None (every partition)."""
    return context.get("partition_key") or context["params"].get("partition") or None


def _param(name: str) -> str | None:
    """A step's param: the run's partition key, or a path param."""
    return _run_partition(get_current_context()) if name == "partition" else _param_path(name)


def _call(step, *args):
    from infinstruct.errors import DataError

    try:
        return step(*args)
    except DataError as exc:
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc


def _check_conf(context) -> None:
    """A run's conf may only set the DAG's params: a misspelt key (`recipes`) would silently run the default."""
    conf = getattr(context.get("dag_run"), "conf", None) or {}
    declared = set(context["dag"].params)  # the task's `params` already hold the conf's keys, known or not
    unknown = sorted(set(conf) - declared)
    if unknown:
        raise AirflowFailException(f"unknown conf key(s) {unknown}: this DAG's params are {sorted(declared)}")


def _run_lease(phase: str, run_id: str, first: bool):
    """The run's lease of its dataset, held around the step (store/run_lease.py): runs of one dataset never
    overlap, whatever started them (schedule, trigger, backfill, `infinstruct run`). The first task names the
    dataset from the recipe param, the others find it from the run's row; a task waits while another run has it."""
    from infinstruct.config import load_recipe
    from infinstruct.store.db import get_engine
    from infinstruct.store.run_lease import task_lease

    dataset = _call(lambda: load_recipe(_param_path("recipe"))[0].name) if first else None
    return task_lease(get_engine(), run_id, phase, dataset)


def stage_task(spec: StageSpec, outlets: list | None = None, phase: str = "curation"):
    """The Airflow task of a declared stage: one call into the library (`spec.step`), under the run's lease of
    its dataset (`phase`: whose runs these are, curation or synthesis)."""

    # `label` only names the mapped instance in the grid (map_index_template), from the plan's item
    def run(partition_id: str | None = None, batch: int | None = None, label: str | None = None):  # no **kwargs
        import importlib

        module, _, function = spec.step.rpartition(":")
        step = getattr(importlib.import_module(module or "infinstruct.pipeline"), function)
        if phase == "curation" and spec.decides is not None and not hasattr(step, "counts"):
            # a curation stage of your own: its counts are kept too (Phase 2's outcomes are in synth_children)
            from infinstruct.store.stage_counts import counted

            step = counted(spec.decides)(step)
        if spec.kind is Kind.SETUP:
            _check_conf(get_current_context())
        mapped = [batch if spec.kind is Kind.BATCH else partition_id] if spec.mapped else []
        args = [get_current_context()["run_id"], *mapped, *(_param(name) for name in spec.params)]
        with _run_lease(phase, args[0], first=spec.kind is Kind.SETUP):
            result = _call(step, *args)
        if outlets and isinstance(result, dict):  # the asset event: which release, of which recipe and night
            context = get_current_context()
            for outlet in outlets:
                context["outlet_events"][outlet].extra = {
                    "path": result.get("path"),
                    "version": result.get("version"),
                    "recipe": _param_path("recipe"),
                    "partition": _run_partition(context),
                }
        return result

    run.__doc__ = spec.summary
    shown = (
        "task.op_kwargs['batch']"
        if spec.kind is Kind.BATCH
        else "task.op_kwargs['label'] or task.op_kwargs['partition_id']"
    )
    return task(
        run,
        task_id=spec.task,
        pool=spec.pool or "default_pool",
        outlets=outlets or [],
        map_index_template="{{ %s }}" % shown if spec.mapped else None,
    )


def _as_partition(item) -> dict:
    """A plan's item as a mapped instance's arguments: the partition and its label (`chat/2 of 3`)."""
    return item if isinstance(item, dict) else {"partition_id": item, "label": str(item)}


def wire(stages: tuple[StageSpec, ...], outlets: dict[str, list] | None = None, phase: str = "curation") -> dict:
    """The tasks of `stages`, mapped ones expanded over the list their `over` task (else the plan) returns, and
    each waiting for its `after` tasks. Default trigger rule all_success: a failed instance stops what follows."""
    tasks, plan = {}, None
    for spec in stages:
        operator = stage_task(spec, (outlets or {}).get(spec.task), phase)
        if spec.mapped:
            if spec.over:
                argument = "batch" if spec.kind is Kind.BATCH else "partition_id"
                tasks[spec.task] = operator.expand(**{argument: tasks[spec.over]})
            else:  # over the plan's partitions, each with its label
                tasks[spec.task] = operator.expand_kwargs(plan.map(_as_partition))
        else:
            tasks[spec.task] = operator()
            if spec.kind is Kind.PLAN:
                plan = tasks[spec.task]
        for upstream in spec.after:
            tasks[upstream] >> tasks[spec.task]
    return tasks
