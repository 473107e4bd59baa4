"""The README's example recipe over every file of ../shared/data/pool, decontaminated against
../shared/data/benchmarks (development data: skipped where it is absent, e.g. on a user's machine)."""

from __future__ import annotations

import json
from collections import defaultdict

import pandas as pd
import pytest

from conftest import ROOT, SHARED_DATA
from infinstruct.cli import main
from infinstruct.config import load_recipe
from infinstruct.curate.decontam.ngrams import NgramIndex

pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.skipif(not (SHARED_DATA / "pool").is_dir(), reason="../shared/data/pool is not present"),
]
RECIPE = ROOT / "include" / "recipes" / "shared_pool.yaml"


@pytest.fixture(scope="module")
def release(airflow_home, tmp_path_factory):
    out = tmp_path_factory.mktemp("pool")
    assert main(["run", "--recipe", str(RECIPE), "--out", str(out)]) == 0
    folder = out / "shared-pool" / (out / "shared-pool" / "LATEST").read_text().strip()
    return (
        json.loads((folder / "manifest.json").read_text()),
        pd.read_parquet(folder / "ledger.parquet"),
        pd.read_parquet(folder / "data"),
    )


def test_every_line_is_accounted_for(release):
    manifest, ledger, _ = release
    raw_lines = sum(1 for f in (SHARED_DATA / "pool").iterdir() for _ in f.open("rb"))
    assert manifest["totals"]["lines"] == len(ledger) == raw_lines
    for source, counts in manifest["sources"].items():
        assert counts["lines"] == counts["kept"] + counts["dropped"] + counts["quarantined"], source
    assert ledger[ledger.verdict != "kept"].reason.notna().all()


def test_alpaca_eval_collapses_to_one_record_per_instruction(release):
    _, ledger, _ = release
    instruction = {}
    for path in (SHARED_DATA / "pool").glob("alpaca_eval_*"):
        for line_no, line in enumerate(path.open(), 1):
            row = json.loads(line)
            instruction[(str(path.resolve()), line_no)] = (
                row["instruction"] if "instruction" in row else row["conversations"][0]["value"]
            )
    rows = ledger[ledger.source.str.startswith("alpaca_eval")]
    by_instruction = defaultdict(list)
    for row in rows.itertuples():
        by_instruction[instruction[(row.file, row.line)]].append(row)
    assert len(by_instruction) == 805
    for text, answers in by_instruction.items():
        kept = [a for a in answers if a.verdict == "kept"]
        assert len(kept) <= 1, text
        if not kept:  # every answer failed a rule or leaked a benchmark, or the one left was not selected
            left = [a for a in answers if a.stage not in ("rules", "decontam")]
            assert not left or sum(a.stage == "select" for a in left) == 1, (
                text,
                [(a.stage, a.reason) for a in answers],
            )


def test_no_benchmark_item_survives(release):
    _, ledger, data = release
    recipe, _ = load_recipe(RECIPE)
    index = NgramIndex.from_specs(recipe.decontamination.benchmarks, recipe.decontamination.ngram)
    leaked = [
        (row.id, m)
        for row in data.itertuples()
        for m in index.contaminating("\n".join(t["value"] for t in row.conversations))
    ]
    assert leaked == []
    dropped = ledger[ledger.stage == "decontam"]
    assert set(dropped.reason) >= {"contaminated:mt_bench"}  # AlpacaEval carries MT-Bench questions 81 and 130
    assert dropped.duplicate_of.str.match(r"^(gsm8k_test|mt_bench|humaneval):").all()


def test_self_instruct_seeds_in_two_formats_are_one(release):
    _, ledger, _ = release
    copies = ledger[ledger.source == "self_instruct_messages"]
    assert (copies.reason == "exact_duplicate").sum() >= 170  # the rest were dropped earlier by a rule


def test_the_selection_keeps_the_recipes_mix_and_ledgers_the_rest(release):
    manifest, ledger, data = release
    recipe, _ = load_recipe(RECIPE)
    selection = manifest["composition"]["selection"]
    for domain, entry in selection["domains"].items():
        if domain in recipe.selection.keep_all:
            assert entry["selected"] == entry["available"], domain
        else:
            assert abs(entry["share"] - entry["planned_share"]) <= recipe.selection.tolerance, (domain, entry)
    left_out = ledger[ledger.stage == "select"]
    assert len(left_out) == selection["not_selected"] > 0 and len(data) == selection["selected"]
    assert left_out.reason.str.match(r"^not_selected:(knowledge|math|code)$").all()
    assert left_out.detail.str.match(r"^rank \d+ of \d+ in ").all()
    assert manifest["composition"]["before"]["total"] == selection["pool"]


def test_every_duplicate_resolves_to_the_record_standing_for_it(release):
    """`duplicate_of` is the direct partner; `representative` is where its chain ends: a record that stood
    after deduplication, in the release unless the selection left it out (issue 14, section 2)."""
    _, ledger, data = release
    duplicates = ledger[
        ledger.reason.isin(["exact_duplicate", "duplicate_instruction", "near_duplicate", "semantic_duplicate"])
    ]
    assert len(duplicates) > 0 and duplicates.representative.notna().all()
    kept = set(ledger[ledger.verdict == "kept"].record_id)
    not_selected = set(ledger[ledger.stage == "select"].record_id)
    assert set(duplicates.representative) <= kept | not_selected
    assert set(duplicates.representative) & kept <= set(data.id)
