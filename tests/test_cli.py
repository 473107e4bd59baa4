"""`infinstruct run`: the same run from the shell, and a second run of a recipe changes nothing."""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from together import run_together

from conftest import SAMPLE_RECIPE, write_recipe
from infinstruct.cli import main
from infinstruct.stages import STAGES


def record_rows(engine) -> tuple[int, int]:
    with engine.connect() as conn:
        return tuple(
            conn.execute(sa.text("select count(*), count(distinct (partition_id, line_no)) from records")).one()
        )


def test_second_run_of_the_same_recipe_changes_nothing(airflow_home, engine, tmp_path, capsys):
    assert main(["run", "--recipe", str(SAMPLE_RECIPE), "--out", str(tmp_path)]) == 0
    first_version = (tmp_path / "sample" / "LATEST").read_text().strip()
    first = pd.read_parquet(tmp_path / "sample" / first_version / "data")
    rows = record_rows(engine)

    assert main(["run", "--recipe", str(SAMPLE_RECIPE), "--out", str(tmp_path)]) == 0
    assert "release sample v" in capsys.readouterr().out
    assert (tmp_path / "sample" / "LATEST").read_text().strip() == first_version  # no new version minted
    second = pd.read_parquet(tmp_path / "sample" / first_version / "data")
    assert second.id.tolist() == first.id.tolist()
    assert record_rows(engine) == rows and rows[0] == rows[1]  # no duplicate rows after the re-run
    manifest = json.loads((tmp_path / "sample" / first_version / "manifest.json").read_text())
    assert (
        manifest["totals"]["lines"]
        == manifest["totals"]["kept"] + manifest["totals"]["dropped"] + manifest["totals"]["quarantined"]
    )


def test_a_bad_recipe_fails_before_airflow_starts(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsources: [{name: a, path: a.jsonl, format: alpaca, fromat: alpaca}]\n")
    try:
        main(["run", "--recipe", str(bad), "--out", str(tmp_path)])
    except Exception as exc:  # RecipeError names the bad key
        assert "fromat" in str(exc)
    else:
        raise AssertionError("a recipe with an unknown key must be rejected")


def test_the_stage_table_is_printed_from_the_declaration_and_is_the_readme_s(capsys):
    from conftest import ROOT
    from infinstruct.stages import STAGES

    assert main(["stages"]) == 0
    table = capsys.readouterr().out.strip()
    assert table in (ROOT / "README.md").read_text(), "README's task table differs: paste `infinstruct stages` into it"
    assert [line.split("`")[1] for line in table.splitlines()[2:]] == [s.task for s in STAGES]
    assert main(["stages", "--synthesis"]) == 0  # and Phase 2's
    assert capsys.readouterr().out.strip() in (ROOT / "README.md").read_text(), (
        "README's synthesis task table differs: paste `infinstruct stages --synthesis` into it"
    )
    assert main(["stages", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    near = next(r for r in rows if r["task"] == "near_deduplicate")
    assert near == {
        "task": "near_deduplicate",
        "kind": "whole dataset",
        "step": "near_deduplicate",
        "after": ["deduplicate"],
        "ledger_stage": "near_dedup",
        "reasons": ["near_duplicate"],
        "section": "near_dedup",
    }


def test_two_first_runs_on_a_fresh_airflow_home_both_migrate_it(tmp_path):
    """Both would run `airflow db migrate` at once ("table connection already exists"): the second waits."""
    airflow = tmp_path / "airflow"
    results = run_together(
        "from infinstruct.cli import ensure_airflow_db",
        "ensure_airflow_db()",
        tmp_path,
        n=2,
        env={"AIRFLOW_HOME": str(airflow)},
    )
    assert [r.returncode for r in results] == [0, 0], [r.stderr[-3000:] for r in results]
    assert list(airflow.glob(".infinstruct-migrated-*")) and (airflow / "airflow.db").exists()


# --- what a person sees: progress, a summary, the logs in a file; status, explain, diff ------------------------

STAGE_TASKS = [spec.task for spec in STAGES]  # progress lines come in the declared order


def _cli(*args: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "infinstruct.cli", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def sample_copy(tmp_path_factory):
    """The bundled sample under a dataset name of its own, its files copied (so a test may change them)."""
    import shutil
    import uuid

    import yaml

    from conftest import sample_recipe

    folder = tmp_path_factory.mktemp("cli-sample")
    recipe = sample_recipe(f"cli-{uuid.uuid4().hex[:6]}")
    for source in recipe["sources"]:
        source["path"] = shutil.copy(source["path"], folder)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path, recipe["name"], folder / "releases"


@pytest.fixture(scope="module")
def first_run(airflow_home, engine, sample_copy):
    recipe, _, out = sample_copy
    return _cli("run", "--recipe", str(recipe), "--out", str(out))


@pytest.fixture(scope="module")
def second_release(first_run, sample_copy):
    """v0002 of the dataset: tasks line 2 rewritten (its record leaves, a new one comes), a copy of line 4
    appended (one more exact duplicate) and a new line appended."""
    recipe, name, out = sample_copy
    tasks = recipe.parent / "tasks.alpaca.jsonl"
    lines = tasks.read_text().splitlines()
    lines[1] = json.dumps(
        {
            "instruction": "Classify the sentiment of the sentence.",
            "input": "The soup was lovely.",
            "output": "Positive.",
        }
    )
    lines += [
        lines[3],
        json.dumps(
            {"instruction": "Name the three primary colours of light.", "input": "", "output": "Red, green and blue."}
        ),
    ]
    tasks.write_text("\n".join(lines) + "\n")
    assert main(["run", "--recipe", str(recipe), "--out", str(out)]) == 0
    return out / name


def test_run_shows_a_line_per_stage_and_a_summary_while_airflow_s_logs_go_to_a_file(first_run, sample_copy):
    _, name, out = sample_copy
    assert first_run.returncode == 0, first_run.stderr[-3000:]
    # a stage still working after 30 s says so ("running"), before its own line: not what this test is about
    shown = [line for line in first_run.stdout.splitlines() if line.split()[1:2] != ["running"]]
    assert len(shown) < 30  # not thousands of Airflow log lines
    # first, where the logs go; then a line per stage, in the declared order, as each finishes
    log = Path(shown[0].split(" logs go to ")[1])
    assert [line.split()[0] for line in shown[1 : 1 + len(STAGE_TASKS)]] == STAGE_TASKS
    stage = {line.split()[0]: line for line in shown[1 : 1 + len(STAGE_TASKS)]}
    assert "8/8 ok" in stage["ingest"] and "lines 45, records 34, quarantined 11" in stage["ingest"]
    assert "dropped 1 (rule:refusal 1)" in stage["apply_rules"]
    assert "gate ingested: passed" in stage["check_ingested"] and "gate release: passed" in stage["check_release"]
    assert re.search(r"\d+\.\ds", stage["decontaminate"])  # elapsed
    # then the summary: the release, its totals, drops by stage, the gates, the log file again
    assert f"release {name} v0001: {out.resolve() / name / 'v0001'}" in shown
    assert "  45 lines: 28 kept, 6 dropped (rules 1, decontam 1, dedup 3, near_dedup 1), 11 quarantined" in shown
    assert "  gates: ingested passed, release passed" in shown
    assert re.fullmatch(rf"done in \d+s; logs: {re.escape(str(log))}", shown[-1])
    assert log.parent == Path(os.environ["INFINSTRUCT_HOME"]) / "logs"
    logged = log.read_text()
    assert len(logged.splitlines()) > 100 and "export_release" in logged and "DagBag" in logged


def test_a_failed_run_names_the_failed_shard_and_its_error_and_verbose_shows_the_raw_logs(airflow_home, tmp_path):
    (tmp_path / "good.jsonl").write_text(json.dumps({"instruction": "Hi?", "input": "", "output": "Hello."}) + "\n")
    (tmp_path / "broken.json").write_text('{"this is": "not an array"}')
    recipe = write_recipe(
        tmp_path,
        f"cli-broken-{uuid.uuid4().hex[:6]}",
        [
            {"name": "good", "path": "good.jsonl", "format": "alpaca"},
            {"name": "broken", "path": "broken.json", "format": "alpaca"},
        ],
    )
    result = _cli("run", "--recipe", str(recipe), "--out", str(tmp_path / "out"), "--verbose")
    assert result.returncode == 1
    summary = result.stdout[result.stdout.index("\nrun ") :].splitlines()
    assert re.match(
        r"  ingest +FAILED broken/1 of 1",
        next(line for line in result.stdout.splitlines() if line.startswith("  ingest ")),
    )
    assert "  failed: ingest [broken/1 of 1]" in summary
    assert any("IngestError:" in line and "broken.json" in line for line in summary)
    assert "not run (an upstream task failed): check_ingested, apply_rules" in result.stdout
    assert len(result.stdout.splitlines()) > 100  # --verbose: Airflow's own lines on the terminal too


def test_status_shows_the_last_runs_with_their_funnels_and_releases(second_release, sample_copy, capsys):
    _, name, _ = sample_copy
    assert main(["status", "--dataset", name, "--runs", "2"]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert len(shown) == 4  # two runs, newest first: a heading and a funnel each
    assert f"  {name}  succeeded  " in shown[0] and f"release v0002 ({second_release / 'v0002'})" in shown[0]
    assert shown[1] == "  47 lines: 29 kept, 7 dropped (rules 1, decontam 1, dedup 4, near_dedup 1), 11 quarantined"
    assert "release v0001" in shown[2]
    assert shown[3] == "  45 lines: 28 kept, 6 dropped (rules 1, decontam 1, dedup 3, near_dedup 1), 11 quarantined"


def test_explain_a_line_gives_every_decision_the_gates_of_its_run_and_the_releases_that_hold_it(
    second_release, sample_copy, capsys
):
    recipe, _, _ = sample_copy
    assert main(["explain", f"{recipe.parent / 'tasks.alpaca.jsonl'}:5"]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert shown[0].startswith(f"tasks {recipe.parent / 'tasks.alpaca.jsonl'}:5 ")
    [decision] = [line for line in shown if line.startswith("  decontam ")]
    assert decision.split()[:3] == ["decontam", "dropped", "contaminated:sample_bench"]
    assert "duplicate_of sample_bench:bm-1" in decision
    assert any(line.startswith("  newest run: ") and "gates: ingested passed, release passed" in line for line in shown)
    assert "  releases: v0001 dropped (contaminated:sample_bench), v0002 dropped (contaminated:sample_bench)" in shown


def test_explain_a_record_id_follows_every_copy_to_its_representative(second_release, sample_copy, engine, capsys):
    from infinstruct.store.explain import explain

    recipe, name, _ = sample_copy
    ledger = pd.read_parquet(second_release / "v0002" / "ledger.parquet")
    record_id = ledger[(ledger.source == "tasks") & (ledger.line == 4)].record_id.item()
    copies = [line for line in explain(engine, record_id) if line["dataset"] == name]
    assert [c["line_no"] for c in copies] == [4, 18]  # the appended exact copy shares the content hash
    fates = {c["line_no"]: c["decisions"] for c in copies}
    kept, dropped = (4, 18) if not any(d["verdict"] == "dropped" for d in fates[4]) else (18, 4)
    [drop] = [d for d in fates[dropped] if d["verdict"] == "dropped"]
    assert (drop["stage"], drop["reason"], drop["duplicate_of"], drop["representative"]) == (
        "dedup",
        "exact_duplicate",
        record_id,
        record_id,
    )
    releases = {c["line_no"]: [(r["version"], r["verdict"]) for r in c["releases"]] for c in copies}
    assert releases[kept][-1] == (2, "kept") and releases[dropped] == [(2, "dropped")]
    assert main(["explain", "no-such-record"]) == 1
    assert "no input line answers to 'no-such-record'" in capsys.readouterr().err


def test_diff_counts_records_added_removed_and_unchanged_per_source_and_reason(second_release, sample_copy, capsys):
    from infinstruct.release.diff import diff_releases

    _, name, _ = sample_copy
    diff = diff_releases(second_release / "v0001", second_release / "v0002")
    # line 2 rewritten: its record left and a new one came; the new line came; the copy of line 4 is a duplicate
    assert (diff["added"], diff["removed"], diff["unchanged"]) == (2, 1, 27)
    assert diff["sources"]["tasks"] == {"before": 9, "after": 10, "added": 2, "removed": 1}
    assert diff["sources"]["chat"] == {"before": 10, "after": 10, "added": 0, "removed": 0}
    assert diff["reasons"] == {"dedup/exact_duplicate": {"before": 1, "after": 2}}
    assert diff["removed_because"] == {"no longer in its sources": 1}
    # from the shell: two folders, or dataset@version as the store numbers them
    assert main(["diff", f"{name}@1", f"{name}@v0002"]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert shown[0] == f"{name} v0001 -> {name} v0002: +2 added, -1 removed, 27 unchanged"
    assert any(line.split() == ["tasks", "9", "->", "10", "+2", "-1"] for line in shown)
    assert main(["diff", str(second_release / "v0001"), f"{name}@7"]) == 1
    assert f"release {name}@7: not in the store" in capsys.readouterr().err
