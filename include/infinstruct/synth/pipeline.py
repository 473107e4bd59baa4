"""The steps of the synthesis pipeline (Phase 2), one function per Airflow task of `infinstruct_synthesis`.

Like `infinstruct.pipeline`: each takes the run id (and a release part or a seed batch where it is mapped),
reads the run's recipe snapshot and release from `synth_runs`, and returns a small JSON-able summary.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import sqlalchemy as sa

from infinstruct.ml.roles import Role, chat_for
from infinstruct.store.db import get_engine, logged_if_store_unreachable
from infinstruct.synth import gates
from infinstruct.synth.diagnosis import stage as diagnosis
from infinstruct.synth.evolution import stage as evolution
from infinstruct.synth.judging import stage as judging
from infinstruct.synth.responses import stage as responses
from infinstruct.synth.run import SynthesisError, release_parts, released_records, synthesis_run
from infinstruct.synth.run import start_synthesis as _start
from infinstruct.synth.seeds import stage as seeds
from infinstruct.synth.tagging.labels import TaggingSettings
from infinstruct.synth.tagging.stage import tag_records, tagger_of

log = logging.getLogger(__name__)


def start_synthesis(run_id: str, recipe_path: str | os.PathLike, release: str | os.PathLike) -> dict[str, Any]:
    return _start(get_engine(), run_id, recipe_path, release)


def plan_release(run_id: str) -> list[str]:
    """The release's record files: what tagging is mapped over."""
    run = synthesis_run(get_engine(), run_id)
    parts = release_parts(run.release_path)
    if not parts:
        raise SynthesisError(f"release {run.release_path} has no record files (data/*.parquet): nothing to evolve")
    return parts


def tag_release_part(run_id: str, part: str) -> dict[str, Any]:
    """Tag the records of one release file that this tagger has not tagged (and note them as the run's)."""
    engine, run = get_engine(), synthesis_run(get_engine(), run_id)
    records = [(r["id"], r["instruction"]) for r in released_records(run.release_path, [part])]
    with engine.begin() as conn:
        conn.execute(
            sa.text("delete from synth_release_records where run_id = :r and part = :p"), {"r": run_id, "p": part}
        )
        conn.execute(
            sa.text(
                "insert into synth_release_records (run_id, record_id, part)"
                " select :r, unnest(cast(:ids as text[])), :p on conflict do nothing"
            ),
            {"r": run_id, "ids": [i for i, _ in records], "p": part},
        )  # one statement, not one per record
    settings = run.recipe.tagging or TaggingSettings()
    chat = chat_for(run.recipe.llm, Role.TAGGER, engine, run_id=run_id)
    return {"part": part, "records": len(records), **tag_records(engine, settings, chat, run_id, records)}


def check_tags(run_id: str) -> dict[str, Any]:
    run = synthesis_run(get_engine(), run_id)
    result = gates.check_tags(get_engine(), run, tagger_of(run.recipe))
    return {"gate": result.gate, "success": result.success, "statistics": result.statistics}


def select_seeds(run_id: str) -> list[int]:
    """The run's seeds, stored; returns the batch numbers the LLM tasks are mapped over."""
    run = synthesis_run(get_engine(), run_id)
    batches = seeds.select_seeds(get_engine(), run)
    if not batches:
        raise SynthesisError(
            "no informative seed among the release's tagged records (see synth_seeds and the "
            "`synthesis.seeds` thresholds; the tags gate's statistics say how many were labelled)"
        )
    return batches


def evolve(run_id: str, batch: int) -> dict[str, Any]:
    return evolution.evolve_batch(get_engine(), synthesis_run(get_engine(), run_id), batch)


def check_evolution(run_id: str) -> dict[str, Any]:
    result = gates.check_evolution(get_engine(), synthesis_run(get_engine(), run_id))
    return {"gate": result.gate, "success": result.success, "statistics": result.statistics}


def respond(run_id: str, batch: int) -> dict[str, Any]:
    return responses.respond_batch(get_engine(), synthesis_run(get_engine(), run_id), batch)


def judge(run_id: str, batch: int) -> dict[str, Any]:
    return judging.judge_batch(get_engine(), synthesis_run(get_engine(), run_id), batch)


def check_judging(run_id: str) -> dict[str, Any]:
    result = gates.check_judging(get_engine(), synthesis_run(get_engine(), run_id))
    return {"gate": result.gate, "success": result.success, "statistics": result.statistics}


def diagnose(run_id: str, batch: int) -> dict[str, Any]:
    return diagnosis.diagnose_batch(get_engine(), synthesis_run(get_engine(), run_id), batch)


def report_diagnosis(run_id: str) -> dict[str, Any]:
    return diagnosis.report_diagnosis(get_engine(), synthesis_run(get_engine(), run_id))


def export_synthesis(run_id: str, out_dir: str | os.PathLike) -> dict[str, Any]:
    from infinstruct.release.synthetic import export_synthesis as export

    manifest = export(get_engine(), synthesis_run(get_engine(), run_id), out_dir)
    log.info(
        "synthesis %s: release %s v%04d at %s: %s",
        run_id,
        manifest["dataset"],
        manifest["version"],
        manifest["path"],
        manifest["totals"],
    )
    return {"path": manifest["path"], "version": manifest["version"], "totals": manifest["totals"]}


@logged_if_store_unreachable
def mark_failed(run_id: str) -> None:
    from infinstruct.synth.run import finish_synthesis

    finish_synthesis(get_engine(), run_id, "failed")
