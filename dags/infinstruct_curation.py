"""infinstruct curation: raw instruction sources -> a versioned Infinity-Instruct-shaped release.

The tasks and their order are declared once, in `infinstruct.stages` (`infinstruct stages` prints
them; $INFINSTRUCT_STAGES adds your own): a per-partition stage is a mapped task over the partition ids
`plan_partitions` returns, every other stage one task (`infinstruct_tasks.wire`). Every task is one call
into `infinstruct.pipeline`; XCom carries only partition ids and counts. The export emits the release
asset that Phase 2 (`infinstruct_synthesis`) is scheduled on.
Data errors (a partition that is mostly malformed, a failed quality gate) fail the task at once
without retries, fail the run and hold back the export.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import CronPartitionTimetable, Param, dag
from infinstruct_tasks import DEFAULT_OUT, DEFAULT_RECIPE, RELEASE_ASSET, wire

from infinstruct.stages import all_stages


def _mark_failed(context) -> None:
    from infinstruct.pipeline import mark_failed

    mark_failed(context["run_id"])


@dag(
    dag_id="infinstruct_curation",
    # nightly at 02:00 UTC for the night before: each scheduled (or backfilled) run carries that night's date as
    # its partition key, and sources whose path names `{partition}` are read up to it (sources/plan.py)
    schedule=CronPartitionTimetable(
        os.environ.get("INFINSTRUCT_SCHEDULE", "0 2 * * *"), timezone="UTC", run_offset=-1, key_format="%Y-%m-%d"
    ),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # runs of one dataset share its partitions and decisions; a backfill runs up to its own
    # --max-active-runs at once, so each task also holds the run lease of its dataset
    # (infinstruct_tasks._run_lease): the second run of a dataset waits for the first
    default_args={
        "retries": 2,
        "retry_delay": timedelta(seconds=30),
        "retry_exponential_backoff": True,
        "execution_timeout": timedelta(hours=6),
    },  # a hung task fails (and is retried), never hangs the night
    params={
        "recipe": Param(DEFAULT_RECIPE, type="string", description="Path of the recipe YAML"),
        "out_dir": Param(DEFAULT_OUT, type="string", description="Folder that receives <dataset>/vNNNN releases"),
        "partition": Param(
            None,
            type=["null", "string"],
            description="Partition key for a manual run (e.g. 2026-12-01): sources naming {partition} "
            "are read up to it; scheduled and backfilled runs carry their night's key",
        ),
    },
    on_failure_callback=_mark_failed,
    tags=["infinstruct", "phase1"],
    doc_md=__doc__,
)
def infinstruct_curation():
    # the export emits the release asset: Phase 2 (infinstruct_synthesis) is scheduled on it
    wire(all_stages(), outlets={"export_release": [RELEASE_ASSET]})


infinstruct_curation()
