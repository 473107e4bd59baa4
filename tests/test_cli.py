"""`infinstruct run`: the same run from the shell, and a second run of a recipe changes nothing."""
from __future__ import annotations

import json

import pandas as pd
import sqlalchemy as sa
from together import run_together

from conftest import SAMPLE_RECIPE
from infinstruct.cli import main


def record_rows(engine) -> tuple[int, int]:
    with engine.connect() as conn:
        return tuple(conn.execute(sa.text("select count(*), count(distinct (partition_id, line_no)) from records")).one())


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
    assert manifest["totals"]["lines"] == manifest["totals"]["kept"] + manifest["totals"]["dropped"] + manifest["totals"]["quarantined"]


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
    assert main(["stages", "--synthesis"]) == 0   # and Phase 2's
    assert capsys.readouterr().out.strip() in (ROOT / "README.md").read_text(), \
        "README's synthesis task table differs: paste `infinstruct stages --synthesis` into it"
    assert main(["stages", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    near = next(r for r in rows if r["task"] == "near_deduplicate")
    assert near == {"task": "near_deduplicate", "kind": "whole dataset", "step": "near_deduplicate",
                    "after": ["deduplicate"], "ledger_stage": "near_dedup", "reasons": ["near_duplicate"],
                    "section": "near_dedup"}


def test_two_first_runs_on_a_fresh_airflow_home_both_migrate_it(tmp_path):
    """Both would run `airflow db migrate` at once ("table connection already exists"): the second waits."""
    airflow = tmp_path / "airflow"
    results = run_together("from infinstruct.cli import ensure_airflow_db", "ensure_airflow_db()", tmp_path, n=2,
                           env={"AIRFLOW_HOME": str(airflow)})
    assert [r.returncode for r in results] == [0, 0], [r.stderr[-3000:] for r in results]
    assert list(airflow.glob(".infinstruct-migrated-*")) and (airflow / "airflow.db").exists()
