"""infinstruct synthesis (Phase 2): a Phase-1 release -> tagged, evolved, answered, judged, diagnosed -> a
synthetic release.

Scheduled on the release asset that the curation DAG's export emits (the event names the release and its
recipe); triggered by hand, the `release` param names a release folder (default: the dataset's LATEST). The
tasks are declared in `infinstruct.stages.SYNTHESIS_STAGES` (`infinstruct stages --synthesis`): tagging is
mapped over the release's record files, the LLM steps over the seed batches `select_seeds` returns, all of
them in the `infinstruct_llm` pool (created by `infinstruct setup-airflow` / docker-compose's airflow-init).
A failed gate or a data error fails the run without retries and holds back the export.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag
from infinstruct_tasks import DEFAULT_OUT, DEFAULT_RECIPE, RELEASE_ASSET, wire

from infinstruct.stages import SYNTHESIS_STAGES


def _mark_failed(context) -> None:
    from infinstruct.synth.pipeline import mark_failed

    mark_failed(context["run_id"])


@dag(
    dag_id="infinstruct_synthesis",
    schedule=[RELEASE_ASSET],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # runs share the LLM endpoints and the dataset's synthetic versions (a backfill ignores
    # this: the run lease keeps its runs of one dataset apart, see infinstruct_tasks)
    default_args={
        "retries": 2,
        "retry_delay": timedelta(seconds=30),
        "retry_exponential_backoff": True,
        "execution_timeout": timedelta(hours=6),
    },
    params={
        "recipe": Param(
            DEFAULT_RECIPE,
            type="string",
            description="Path of the recipe YAML (with a `synthesis` section); an asset event's recipe comes first",
        ),
        "release": Param(
            DEFAULT_OUT,
            type="string",
            description="A release folder, or the folder holding "
            "<dataset>/LATEST; an asset event's release comes first",
        ),
        "out_dir": Param(DEFAULT_OUT, type="string", description="Folder that receives <dataset>/synthetic/vNNNN"),
    },
    on_failure_callback=_mark_failed,
    tags=["infinstruct", "phase2"],
    doc_md=__doc__,
)
def infinstruct_synthesis():
    wire(SYNTHESIS_STAGES, phase="synthesis")  # its runs hold the lease of <dataset>/synthetic, not the dataset's


infinstruct_synthesis()
