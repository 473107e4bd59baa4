"""Phase 2 on the embedded defaults: the synthesis DAG over the bundled sample's release, every role answered
by the embedded llama.cpp server with SmolLM2-135M (no endpoint configured, no network).

Specification: the run succeeds although most of what a 135M model writes is eliminated (each child is
accounted for, kept or dropped with a reason); every request sent is a row of `llm_calls` with its role,
tokens and latency; a second run sends no request at all and gives the same synthetic release.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from conftest import ROOT, publish, run_dedup_steps, sample_recipe, write_recipe
from infinstruct.ml.llm import BASE_URL_ENV
from infinstruct.ml.llm_server import stop_local_llm


def test_the_sample_synthesises_end_to_end_on_smollm2(engine, airflow_home, tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("INFINSTRUCT_HOME", str(tmp_path))  # its own embedded LLM server, stopped at the end
    monkeypatch.delenv(BASE_URL_ENV, raising=False)
    recipe = write_recipe(tmp_path, **sample_recipe(f"smol-{uuid.uuid4().hex[:6]}"))
    out = tmp_path / "releases"
    publish(run_dedup_steps(recipe), out)
    dag = DagBag(dag_folder=str(ROOT / "dags")).dags["infinstruct_synthesis"]
    conf = {"recipe": str(recipe), "release": str(out), "out_dir": str(out)}
    try:
        first = dag.test(run_conf=conf)
        assert str(first.state) == "success", {t.task_id: str(t.state) for t in first.get_task_instances()}
        with engine.connect() as conn:
            calls = conn.execute(
                sa.text(
                    "select role, status, prompt_tokens, completion_tokens, latency_ms from llm_calls where run_id = :r"
                ),
                {"r": first.run_id},
            ).all()
            outcomes = conn.execute(
                sa.text("select verdict, reason from synth_children where run_id = :r"), {"r": first.run_id}
            ).all()
            seeds = conn.execute(
                sa.text("select count(*) from synth_seeds where run_id = :r"), {"r": first.run_id}
            ).scalar()
        assert {c.role for c in calls} >= {"tagger", "evolver", "judge"} and seeds == 4
        assert all(
            c.latency_ms >= 0 and (c.status not in ("ok", "invalid_answer") or c.completion_tokens is not None)
            for c in calls
        )
        assert outcomes and all(v == "kept" or r for v, r in outcomes)  # every drop has its reason
        folder = out / recipe.stem / "synthetic" / "v0001"
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["totals"]["children"] == len(outcomes) == len(pd.read_parquet(folder / "ledger.parquet"))

        again = dag.test(run_conf=conf)
        assert str(again.state) == "success"
        with engine.connect() as conn:
            sent = conn.execute(
                sa.text("select count(*) from llm_calls where run_id = :r"), {"r": again.run_id}
            ).scalar()
        assert sent == 0  # every answer came from the cache
        assert not (out / recipe.stem / "synthetic" / "v0002").exists()
        assert Path(folder).is_dir()
    finally:
        stop_local_llm()
