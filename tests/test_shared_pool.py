"""The README's example recipe over every file of ../shared/data/pool (development data: skipped where
it is absent, e.g. on a user's machine)."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from conftest import ROOT, SHARED_DATA
from infinstruct.cli import main

pytestmark = [pytest.mark.shared_data,
              pytest.mark.skipif(not (SHARED_DATA / "pool").is_dir(), reason="../shared/data/pool is not present")]


def test_shared_pool_release_adds_up_per_source(airflow_home, tmp_path):
    assert main(["run", "--recipe", str(ROOT / "include" / "recipes" / "shared_pool.yaml"), "--out", str(tmp_path)]) == 0
    release = tmp_path / "shared-pool" / (tmp_path / "shared-pool" / "LATEST").read_text().strip()
    manifest = json.loads((release / "manifest.json").read_text())
    ledger = pd.read_parquet(release / "ledger.parquet")

    raw_lines = sum(1 for f in (SHARED_DATA / "pool").iterdir() for _ in f.open("rb"))
    assert manifest["totals"]["lines"] == len(ledger) == raw_lines
    for source, counts in manifest["sources"].items():
        assert counts["lines"] == counts["kept"] + counts["dropped"] + counts["quarantined"], source
    # the 805 AlpacaEval instructions answered by 7 models collapse to one record each
    alpaca_eval = ledger[ledger.source.str.startswith("alpaca_eval")]
    assert (alpaca_eval.verdict == "kept").sum() == 805
    assert set(alpaca_eval[alpaca_eval.verdict == "dropped"].reason) <= {"duplicate_instruction", "exact_duplicate"}
    # the self-instruct seeds come in two formats: the second copy is an exact duplicate of the first
    assert (ledger[ledger.source == "self_instruct_messages"].reason == "exact_duplicate").all()
