"""Adding a stage takes one module (tests/stage_min_answer_words.py), its test, and a recipe section.

Specification: with the module named in $INFINSTRUCT_STAGES,
* `infinstruct stages` and the DAG have its task, right after the task it follows, and the task that
  followed that one now waits for it;
* a recipe configures it under `stages.<task>`; a misspelt section is an error naming it;
* a DAG run drops what it decides, and the ledger says so under its stage and reason; the stages after
  it count its drops as "decided before";
* without its section in the recipe it decides nothing.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from conftest import ROOT, sample_recipe, write_jsonl
from infinstruct.config import RecipeError, load_recipe
from infinstruct.stages import all_stages, decided_before, ledger_order


@pytest.fixture
def extra_stage(monkeypatch):
    monkeypatch.setenv("INFINSTRUCT_STAGES", "stage_min_answer_words")


def _recipe(folder, name: str, section: dict | None):
    recipe = sample_recipe(name)
    terse = write_jsonl(
        folder / "terse.alpaca.jsonl",
        [
            {"instruction": "Is the sky on a clear summer afternoon usually blue?", "input": "", "output": "Yes."},
            {
                "instruction": "Name the largest planet of the solar system and say what it is made of.",
                "input": "",
                "output": "Jupiter, a gas giant made mostly of hydrogen and helium.",
            },
        ],
    )
    recipe["sources"].append({"name": "terse", "path": str(terse), "format": "alpaca"})
    if section is not None:
        recipe["stages"] = {"min_answer_words": section}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_the_stage_takes_its_place_in_the_declaration(extra_stage):
    tasks = [s.task for s in all_stages()]
    assert tasks[tasks.index("deduplicate") + 1] == "min_answer_words"
    near = next(s for s in all_stages() if s.task == "near_deduplicate")
    assert near.after == ("min_answer_words",)
    assert ledger_order().index("min_answer_words") == ledger_order().index("dedup") + 1
    assert "min_answer_words" in decided_before("near_dedup")


def test_its_recipe_section_is_checked(extra_stage, tmp_path):
    assert (
        load_recipe(_recipe(tmp_path, "extra_ok", {"min_words": 2}))[0].stage_settings("min_answer_words").min_words
        == 2
    )
    with pytest.raises(RecipeError, match="stages.min_answer_words.min_wrds"):
        load_recipe(_recipe(tmp_path, "extra_typo", {"min_wrds": 2}))
    with pytest.raises(RecipeError, match="stages.max_answer_words: no stage of your own"):
        path = tmp_path / "other.yaml"
        path.write_text(
            yaml.safe_dump(
                {**yaml.safe_load(_recipe(tmp_path, "x", None).read_text()), "stages": {"max_answer_words": {}}}
            )
        )
        load_recipe(path)


def test_a_dag_run_ledgers_its_drops(extra_stage, airflow_home, tmp_path, capsys):
    from airflow.dag_processing.dagbag import DagBag

    from infinstruct.cli import main

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    dag = bag.dags["infinstruct_curation"]
    assert dag.task_dict["min_answer_words"].upstream_task_ids == {"deduplicate"}
    assert dag.task_dict["near_deduplicate"].upstream_task_ids == {"min_answer_words"}
    assert (
        main(["stages"]) == 0
        and "| `min_answer_words` | whole dataset | `min_answer_words` |" in capsys.readouterr().out
    )

    dag_run = dag.test(
        run_conf={"recipe": str(_recipe(tmp_path, "extra_on", {"min_words": 3})), "out_dir": str(tmp_path)}
    )
    assert str(dag_run.state) == "success"
    release = tmp_path / "extra_on" / (tmp_path / "extra_on" / "LATEST").read_text().strip()
    ledger = pd.read_parquet(release / "ledger.parquet")
    terse = ledger[ledger.reason == "too_few_answer_words"]
    # the sample's one-word answers ("Paris.") and the terse "Yes." go, under the stage's name and reason
    assert sorted(zip(terse.source, terse.line)) == [("chat", 13), ("qa", 3), ("tasks", 2), ("terse", 1)]
    assert set(terse.stage) == {"min_answer_words"} and set(terse.score) == {1.0}
    assert ledger[(ledger.source == "terse") & (ledger.line == 2)].verdict.item() == "kept"
    manifest = json.loads((release / "manifest.json").read_text())
    # the sample's 45 lines (28 kept) and 2 more: 3 of the 28 and 1 of the 2 answer in fewer than 3 words
    assert manifest["totals"] == {"lines": 47, "kept": 26, "dropped": 10, "quarantined": 11}
    # its counts are kept for the run's funnel (the UI, `infinstruct status`) as a built-in stage's are
    from infinstruct.store.db import get_engine
    from infinstruct.store.stage_counts import run_funnels

    funnel = run_funnels(get_engine(), [dag_run.run_id])[dag_run.run_id]
    [ours] = [s for s in funnel["stages"] if s["stage"] == "min_answer_words"]
    assert ours["state"] == "done" and ours["dropped"] == {"too_few_answer_words": 4} and funnel["kept"] == 26

    dag_run = dag.test(run_conf={"recipe": str(_recipe(tmp_path, "extra_off", None)), "out_dir": str(tmp_path)})
    assert str(dag_run.state) == "success"
    off = tmp_path / "extra_off" / (tmp_path / "extra_off" / "LATEST").read_text().strip()
    assert "too_few_answer_words" not in set(pd.read_parquet(off / "ledger.parquet").reason.dropna())
