"""The curation DAG: it imports cleanly, has the expected shape, runs end to end on the bundled
sample with `dag.test()`, and a failed partition fails the run and holds back the export."""

from __future__ import annotations

import json
import uuid

import pandas as pd
import pytest

from conftest import ROOT, SAMPLE_RECIPE, write_recipe

DAG_ID = "infinstruct_curation"
TASKS = {
    "start_run",
    "plan_partitions",
    "ingest",
    "check_ingested",
    "apply_rules",
    "decontaminate",
    "minhash",
    "deduplicate",
    "near_deduplicate",
    "semantic_deduplicate",
    "score_records",
    "select_records",
    "check_selection",
    "write_release_part",
    "check_release",
    "export_release",
}
MAPPED = {"ingest", "apply_rules", "decontaminate", "minhash", "score_records", "write_release_part"}


@pytest.fixture(scope="module")
def dag(airflow_home):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    return bag.dags[DAG_ID]


def states(dag_run) -> dict[tuple[str, int], str]:
    return {(ti.task_id, ti.map_index): str(ti.state) for ti in dag_run.get_task_instances()}


def test_dag_shape(dag):
    from infinstruct.stages import STAGES, Kind

    for spec in STAGES:  # the DAG is the declared stages: per-partition ones mapped over the plan's partitions
        task = dag.task_dict[spec.task]
        assert task.is_mapped == (spec.kind is Kind.PARTITION)
        assert task.upstream_task_ids == set(spec.after) | ({"plan_partitions"} if task.is_mapped else set())
    declared = [s.task for s in STAGES]  # in the order they run: a stage waits only for stages above it
    assert all(declared.index(up) < declared.index(s.task) for s in STAGES for up in s.after)
    # and the declaration is what the pipeline relies on
    assert set(dag.task_dict) == TASKS
    assert {t.task_id for t in dag.tasks if t.is_mapped} == MAPPED
    assert dag.task_dict["export_release"].upstream_task_ids == {"check_release"}
    assert dag.task_dict["check_ingested"].upstream_task_ids == {"ingest"}
    assert dag.task_dict["apply_rules"].upstream_task_ids == {"check_ingested", "plan_partitions"}
    assert dag.task_dict["deduplicate"].upstream_task_ids == {"decontaminate", "minhash"}
    assert dag.task_dict["minhash"].upstream_task_ids == {"apply_rules", "plan_partitions"}
    assert dag.task_dict["semantic_deduplicate"].upstream_task_ids == {"near_deduplicate"}
    assert dag.task_dict["score_records"].upstream_task_ids == {"semantic_deduplicate", "plan_partitions"}
    assert dag.task_dict["select_records"].upstream_task_ids == {"score_records"}
    assert dag.task_dict["check_selection"].upstream_task_ids == {"select_records"}
    assert dag.task_dict["write_release_part"].upstream_task_ids == {"check_selection", "plan_partitions"}
    assert dag.task_dict["check_release"].upstream_task_ids == {"write_release_part"}
    assert all(t.trigger_rule == "all_success" for t in dag.tasks)
    assert set(dag.params.keys()) == {"recipe", "out_dir", "partition"}


def test_sample_run_writes_a_release_that_adds_up(dag, tmp_path):
    dag_run = dag.test(run_conf={"recipe": str(SAMPLE_RECIPE), "out_dir": str(tmp_path)})
    assert str(dag_run.state) == "success", states(dag_run)
    # shards of 6 lines: chat 16 lines -> 3, tasks 17 -> 3, the JSON array and the Parquet file -> 1 each
    assert len([k for k in states(dag_run) if k[0] == "ingest"]) == 8
    # the grid names each mapped instance by its source and shard, not by the partition hash
    assert sorted(ti.rendered_map_index for ti in dag_run.get_task_instances() if ti.task_id == "apply_rules") == [
        "chat/1 of 3",
        "chat/2 of 3",
        "chat/3 of 3",
        "qa/1 of 1",
        "support/1 of 1",
        "tasks/1 of 3",
        "tasks/2 of 3",
        "tasks/3 of 3",
    ]
    release = tmp_path / "sample" / (tmp_path / "sample" / "LATEST").read_text().strip()
    manifest = json.loads((release / "manifest.json").read_text())
    ledger = pd.read_parquet(release / "ledger.parquet")
    data = pd.read_parquet(release / "data")  # one Parquet file per partition
    # the export emits the release asset that schedules Phase 2, saying which release it is
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    with create_session() as session:
        events = [e.extra for e in session.query(AssetEvent).filter(AssetEvent.source_run_id == dag_run.run_id)]
    assert events == [
        {"path": str(release), "version": manifest["version"], "recipe": str(SAMPLE_RECIPE), "partition": None}
    ]  # a manual run without a partition key: every partition

    # every input line of every source is in the ledger exactly once, and the verdicts add up
    assert manifest["totals"] == {"lines": 45, "kept": 28, "dropped": 6, "quarantined": 11}
    assert len(ledger) == 45 and not ledger.duplicated(["file", "line"]).any()
    for source, counts in manifest["sources"].items():
        rows = ledger[ledger.source == source]
        assert counts["lines"] == len(rows) == counts["kept"] + counts["dropped"] + counts["quarantined"]
    assert sorted(data.id) == sorted(ledger[ledger.verdict == "kept"].record_id)
    # drops say why and which kept record they duplicate
    dropped = ledger[ledger.verdict == "dropped"]
    assert set(dropped.reason) == {
        "exact_duplicate",
        "duplicate_instruction",
        "near_duplicate",
        "rule:refusal",
        "contaminated:sample_bench",
    }
    duplicates = dropped[dropped.stage.isin(["dedup", "near_dedup"])]
    assert duplicates.duplicate_of.isin(data.id).all()
    [leak] = dropped[dropped.stage == "decontam"].itertuples()
    assert (leak.source, leak.line, leak.duplicate_of) == ("tasks", 5, "sample_bench:bm-1")
    [refusal] = dropped[dropped.stage == "rules"].itertuples()
    assert (refusal.line, refusal.detail) == (10, "i can't help with that")  # the refusal phrase it matched
    assert set(ledger[ledger.verdict == "quarantined"].reason) == {
        "quarantine:invalid_json",
        "quarantine:bad_role",
        "quarantine:empty_turn",
        "quarantine:nul_byte",
        "quarantine:no_response",
        "quarantine:missing_field",
        "quarantine:bad_role_order",
        "quarantine:blank_line",
        "quarantine:wrong_type",
        "quarantine:not_an_object",
    }
    # the public Infinity-Instruct record shape
    jsonl = [json.loads(line) for path in sorted((release / "jsonl").glob("*.jsonl")) for line in path.open()]
    assert sorted(r["id"] for r in jsonl) == sorted(data.id)
    assert set(jsonl[0]) == {"id", "conversations", "label", "langdetect", "source", "reward"}
    assert {t["from"] for record in jsonl for t in record["conversations"]} == {"system", "human", "gpt"}
    # real language identification: the Chinese conversation is zh, nearly all else en (short prompts are hard)
    assert "zh" in set(data.langdetect) and (data.langdetect == "en").mean() > 0.9
    for name, file in manifest["files"].items():  # every file of the release, with its size and checksum
        assert file["bytes"] == (release / name).stat().st_size
    assert sum(f["records"] for name, f in manifest["files"].items() if name.startswith("data/")) == 28
    # the dataset card: Hugging Face's header pointing at the Parquet files, and the numbers of the manifest
    card = (release / "README.md").read_text()
    assert card.startswith("---\nconfigs:\n- config_name: default\n  data_files: data/*.parquet\n")
    assert "**28 records** released of 45 input lines" in card and "| `tasks` | 17 |" in card
    assert "| `near_dedup` | `near_duplicate` | 1 |" in card


def test_failed_partition_fails_the_run_and_holds_back_the_export(dag, tmp_path):
    (tmp_path / "good.jsonl").write_text(json.dumps({"instruction": "Hi?", "input": "", "output": "Hello."}) + "\n")
    (tmp_path / "broken.json").write_text('{"this is": "not an array"}')
    recipe = write_recipe(
        tmp_path,
        f"broken-{uuid.uuid4().hex[:6]}",
        [
            {"name": "good", "path": "good.jsonl", "format": "alpaca"},
            {"name": "broken", "path": "broken.json", "format": "alpaca"},
        ],
    )
    out = tmp_path / "out"
    dag_run = dag.test(run_conf={"recipe": str(recipe), "out_dir": str(out)})
    result = states(dag_run)
    assert str(dag_run.state) == "failed"
    assert sorted(state for (task, _), state in result.items() if task == "ingest") == ["failed", "success"]
    for task in (
        "check_ingested",
        "deduplicate",
        "near_deduplicate",
        "semantic_deduplicate",
        "score_records",
        "select_records",
        "check_selection",
        "write_release_part",
        "check_release",
        "export_release",
    ):
        assert result[(task, -1)] == "upstream_failed"
    assert not out.exists() or not any(out.rglob("manifest.json"))


def test_sample_run_with_a_selection_ledgers_what_it_leaves_out(dag, tmp_path):
    import yaml

    sample = yaml.safe_load(SAMPLE_RECIPE.read_text())
    sources = [{**s, "path": str((SAMPLE_RECIPE.parent / s["path"]).resolve())} for s in sample["sources"]]
    recipe = write_recipe(
        tmp_path,
        f"sample-sel-{uuid.uuid4().hex[:6]}",
        sources,
        ingest=sample["ingest"],
        selection={
            "counts": {"math": 1, "code": 1},
            "shares": {"knowledge": 1},
            "size": 2,
            "keep_all": ["chat"],
            "tolerance": 1.0,
        },
    )
    dag_run = dag.test(run_conf={"recipe": str(recipe), "out_dir": str(tmp_path / "out")})
    assert str(dag_run.state) == "success", states(dag_run)
    assert len([k for k in states(dag_run) if k[0] == "score_records"]) == 8
    [release] = (tmp_path / "out").glob("*/v0001")
    manifest = json.loads((release / "manifest.json").read_text())
    ledger = pd.read_parquet(release / "ledger.parquet")
    left_out = ledger[ledger.stage == "select"]
    assert len(left_out) > 0 and left_out.reason.str.match(r"^not_selected:(math|code|knowledge)$").all()
    assert left_out.detail.str.match(r"^rank \d+ of \d+ in ").all()
    mix = manifest["composition"]
    assert (
        mix["before"]["total"] == manifest["totals"]["kept"] + len(left_out)
        and mix["after"]["total"] == manifest["totals"]["kept"]
    )
    assert {"math", "code", "knowledge"} >= {d for d, e in mix["after"]["domain"].items() if d != "chat"}
    card = (release / "README.md").read_text()
    assert "## Composition" in card and f"| `chat` | {mix['before']['domain']['chat']['count']} |" in card


def _dag_module():
    import infinstruct_tasks  # beside the DAG files (on sys.path as Airflow's DAG bundle puts it)

    return infinstruct_tasks


def test_every_pool_a_task_uses_is_created_by_setup(airflow_home):
    import subprocess
    import sys

    from airflow.dag_processing.dagbag import DagBag

    from infinstruct.stages import AIRFLOW_POOLS

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    used = {t.pool for dag in bag.dags.values() for t in dag.tasks}
    assert used - {"default_pool"} <= set(AIRFLOW_POOLS) and {"infinstruct_llm", "infinstruct_embedding"} <= used
    # the tasks that load torch and MiniLM share the embedding pool: a few at once, not one per shard
    curation = bag.dags[DAG_ID].task_dict
    assert {task for task, t in curation.items() if t.pool == "infinstruct_embedding"} == {
        "decontaminate",
        "semantic_deduplicate",
        "score_records",
        "select_records",
    }
    listed = subprocess.run(
        [sys.executable, "-m", "airflow", "pools", "list", "-o", "json"], check=True, capture_output=True, text=True
    ).stdout
    assert used <= {p["pool"] for p in json.loads(listed)}  # airflow_home ran the setup: a missing pool waits forever


def test_every_task_has_an_execution_timeout(airflow_home):
    """A hung task fails (and is retried) instead of hanging the night."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    missing = [(dag.dag_id, t.task_id) for dag in bag.dags.values() for t in dag.tasks if not t.execution_timeout]
    assert bag.dags and not missing


@pytest.mark.parametrize(
    "error",
    [
        "BenchmarkError",
        "EmbeddingError",
        "LLMConfigError",
        "ScoringError",
        "AccountingError",
        "GateFailed",
        "RecipeError",
        "IngestError",
        "SynthesisError",
        "BudgetReached",
    ],
)
def test_a_data_error_fails_its_task_without_retries(airflow_home, error):
    from airflow.sdk.exceptions import AirflowFailException

    from infinstruct.errors import DataError

    found = [cls for cls in _subclasses(DataError) if cls.__name__ == error]
    assert found, f"{error} is not a DataError"

    def step():
        raise found[0]("bad input")

    with pytest.raises(AirflowFailException, match=f"{error}: bad input"):
        _dag_module()._call(step)


def test_other_errors_are_left_to_airflow_s_retries(airflow_home):
    def step():
        raise ConnectionError("server closed the connection unexpectedly")

    with pytest.raises(ConnectionError):
        _dag_module()._call(step)


def _subclasses(cls) -> list[type]:
    import infinstruct.config  # noqa: F401  (import every module that defines one)
    import infinstruct.curate.decontam.ngrams  # noqa: F401
    import infinstruct.curate.scoring.signals  # noqa: F401
    import infinstruct.gates.checks  # noqa: F401
    import infinstruct.ml.embeddings  # noqa: F401
    import infinstruct.ml.llm  # noqa: F401
    import infinstruct.sources.ingest  # noqa: F401
    import infinstruct.store.ledger  # noqa: F401
    import infinstruct.synth.requests  # noqa: F401
    import infinstruct.synth.run  # noqa: F401

    out, todo = [], [cls]
    while todo:
        for sub in todo.pop().__subclasses__():
            out.append(sub)
            todo.append(sub)
    return out


def test_a_misspelt_conf_key_fails_the_run_instead_of_running_the_default(dag, tmp_path):
    dag_run = dag.test(run_conf={"recipes": str(SAMPLE_RECIPE), "out_dir": str(tmp_path)})
    assert str(dag_run.state) == "failed" and states(dag_run)[("start_run", -1)] == "failed"
    assert not (tmp_path / "sample").exists()  # nothing ran on the default recipe


def test_a_release_asset_event_names_the_release_and_recipe_a_synthesis_run_works_on():
    from types import SimpleNamespace

    tasks = _dag_module()
    older = SimpleNamespace(extra={"path": "/r/sample/v0001", "version": 1, "recipe": "/recipes/a.yaml"})
    newer = SimpleNamespace(extra={"path": "/r/sample/v0002", "version": 2, "recipe": "/recipes/a.yaml"})
    context = {"triggering_asset_events": {tasks.RELEASE_ASSET: [older, newer]}}
    assert tasks._from_release_event(context, "release") == "/r/sample/v0002"  # the newest event's
    assert tasks._from_release_event(context, "recipe") == "/recipes/a.yaml"
    assert tasks._from_release_event(context, "out_dir") is None  # not said by the event: the param
    assert tasks._from_release_event({}, "release") is None  # triggered by hand
