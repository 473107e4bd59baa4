"""Phase 1 selection end to end: score_records, select_records and the selection gate, with the real
MiniLM and a real PostgreSQL, on slices of ../shared/data/pool (GSM8K train, Code Alpaca, AlpacaEval).

Specification:
* the selection's quota domains come out in the recipe's mix (within tolerance), keep_all domains whole;
  every standing record not selected has a `select` decision `not_selected:<domain>` with its rank score
  and "rank R of N in <domain> ..." — in the database and in the release's ledger; the manifest shows the
  composition before and after;
* the same pool, recipe and seed give the same selection;
* an added file changes the selection only as the quotas require: what was selected stays selected;
* a weak-domain report raises its domain's quota on the next run, on top of the existing selection;
* re-running the stage replaces its decisions (nothing twice);
* a nightly run searches its candidates against the stored selection (the persistent index: pgvector HNSW
  tables where the server has pgvector, exact otherwise) and adds only its newly accepted records to it;
  records let go leave it; a change of what ranks rebuilds it;
* the summary reports the selection's diversity (nearest-neighbour cosines) per domain and overall.
"""

from __future__ import annotations

import json
import uuid
from itertools import islice

import pandas as pd
import pytest
import sqlalchemy as sa

from conftest import SHARED_DATA, kept_record_ids, publish, run_selection_steps, write_recipe
from infinstruct import pipeline
from infinstruct.curate.selection.stage import _table_prefix

pytestmark = pytest.mark.skipif(not (SHARED_DATA / "pool").is_dir(), reason="../shared/data/pool is not present")
POOL = SHARED_DATA / "pool"


def lines(name: str, start: int, n: int) -> list[str]:
    with open(POOL / name) as fh:
        return list(islice(fh, start, start + n))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("selection")
    (folder / "math.jsonl").write_text("".join(lines("gsm8k_train.custom.jsonl", 0, 40)))
    (folder / "code.jsonl").write_text("".join(lines("code_alpaca_2k.alpaca.jsonl", 0, 40)))
    (folder / "general.jsonl").write_text("".join(lines("alpaca_eval_gpt4_1106_preview.sharegpt.jsonl", 0, 60)))
    (folder / "more_math.jsonl").write_text("".join(lines("gsm8k_train.custom.jsonl", 40, 20)))
    # the math target: other GSM8K *train* questions (never a benchmark's test items)
    (folder / "math_target.jsonl").write_text("".join(lines("gsm8k_train.custom.jsonl", 3000, 200)))
    return folder


def sources(*names: str) -> list[dict]:
    formats = {
        "math": {"format": "custom", "fields": {"user": "question", "assistant": "answer"}},
        "more_math": {"format": "custom", "fields": {"user": "question", "assistant": "answer"}},
        "code": {"format": "alpaca"},
        "general": {"format": "sharegpt"},
    }
    return [{"name": n, "path": f"{n}.jsonl", **formats[n]} for n in names]


def selection(**overrides) -> dict:
    return {
        "shares": {"knowledge": 0.44, "math": 0.19, "code": 0.19},
        "keep_all": ["chat"],
        "size": 0.6,
        "tolerance": 0.05,
        "targets": {"math": {"path": "math_target.jsonl", "fields": ["question"]}},
        "diversity_threshold": 0.95,
        "seed": 7,
        **overrides,
    }


def recipe(folder, names=("math", "code", "general"), name=None, **overrides):
    return write_recipe(
        folder,
        name or f"sel_{uuid.uuid4().hex[:6]}",
        sources(*names),
        semantic_dedup=None,
        selection=selection(**overrides),
    )


def run(recipe_path, out=None, gate=True) -> tuple[str, dict]:
    run_id = run_selection_steps(recipe_path)
    assert pipeline.check_selection(run_id)["success"] or not gate
    if out is not None:
        publish(run_id, out)
    return run_id, summary(run_id)


def summary(run_id: str) -> dict:
    with pipeline.get_engine().connect() as conn:
        return conn.execute(sa.text("select result from selection_state where run_id = :r"), {"r": run_id}).scalar_one()


def select_decisions(engine, run_id: str) -> list[tuple]:
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "select d.reason, d.score, d.detail, d.duplicate_of, s.domain from decisions d"
                " join run_partitions rp on rp.partition_id = d.partition_id and rp.run_id = :r"
                " join records r on r.partition_id = d.partition_id and r.line_no = d.line_no"
                " join record_scores s on s.record_id = r.record_id where d.stage = 'select'"
            ),
            {"r": run_id},
        ).all()


@pytest.fixture(scope="module")
def first(files, engine, tmp_path_factory):
    out = tmp_path_factory.mktemp("releases")
    run_id, result = run(recipe(files, name="sel_main"), out)
    return run_id, result, out


def test_the_selection_matches_the_quotas_and_every_left_out_record_is_ledgered(first, engine):
    run_id, result, out = first
    domains = result["domains"]
    assert result["pool"] == sum(d["available"] for d in domains.values()) > 100
    for name, entry in domains.items():
        if entry.get("keep_all"):
            assert entry["selected"] == entry["available"], name  # chat/subjective stays whole
        else:
            assert abs(entry["share"] - entry["planned_share"]) <= 0.05, (name, entry)
            assert entry["selected"] <= entry["quota"] <= entry["requested"]
    assert domains["math"]["selected"] > 0 and domains["code"]["selected"] > 0
    shift = domains["math"]["dsir"]  # KL(target ‖ pool) before, (target ‖ selection) after, a random draw of that size
    assert set(shift) == {"kl_before", "kl_after", "kl_reduction", "kl_random_same_size"} and min(shift.values()) > -1
    assert result["selected"] + result["not_selected"] == result["pool"]

    rows = select_decisions(engine, run_id)
    assert len(rows) == result["not_selected"] > 0
    for reason, score, detail, duplicate_of, domain in rows:
        assert reason == f"not_selected:{domain}"
        assert 0 <= score <= 1
        assert detail.startswith("rank ") and f" in {domain} (quota " in detail, detail
        assert detail.endswith(("quota full", "quota shrank")) or ("too similar" in detail and duplicate_of)

    release = out / "sel_main" / "v0001"
    ledger = pd.read_parquet(release / "ledger.parquet")
    left_out = ledger[ledger.stage == "select"]
    assert len(left_out) == result["not_selected"] and left_out.reason.str.startswith("not_selected:").all()
    manifest = json.loads((release / "manifest.json").read_text())
    mix = manifest["composition"]
    assert (
        mix["before"]["total"] == result["pool"]
        and mix["after"]["total"] == result["selected"] == manifest["totals"]["kept"]
    )
    assert set(mix["after"]) >= {"domain", "source", "language"}
    assert mix["after"]["domain"]["math"]["count"] == domains["math"]["selected"]
    assert mix["selection"]["domains"]["math"]["quota"] == domains["math"]["quota"]
    assert mix["selection"]["diversity"] == result["diversity"]


def test_the_summary_reports_the_diversity_of_the_selection(first):
    _, result, _ = first
    overall = result["diversity"]
    assert overall["n"] == result["selected"] and "sampled" not in overall  # under 2,000: no sample
    assert 0 < overall["mean_nn_cosine"] <= overall["p95_nn_cosine"] <= 1
    for name, entry in result["domains"].items():
        report = entry["diversity"]
        assert report["n"] == entry["selected"], name
        # the walk accepts only below the threshold, so no two selected records are closer (chat is kept whole)
        if not entry.get("keep_all") and entry["selected"] > 1:
            assert report["p95_nn_cosine"] < 0.95, (name, report)


def test_the_same_seed_gives_the_same_selection(first, files, engine):
    run_id, _, _ = first
    again, _ = run(recipe(files))  # another dataset, same files, recipe and seed
    assert kept_record_ids(engine, again) == kept_record_ids(engine, run_id)


def test_an_added_file_changes_the_selection_only_as_the_quotas_require(files, engine):
    path = recipe(files, name="sel_grow")
    before_id, before = run(path)
    kept_before = kept_record_ids(engine, before_id)
    path = recipe(files, names=("math", "code", "general", "more_math"), name="sel_grow")
    after_id, after = run(path)
    assert not after["full_pass"]
    kept_after = kept_record_ids(engine, after_id)
    let_go = sum(d["let_go"] for d in after["domains"].values())
    assert len(kept_before - kept_after) == let_go  # only what a shrunk quota let go
    for name, entry in after["domains"].items():
        assert entry["kept_from_before"] == min(
            before["domains"][name]["selected"], entry.get("quota", entry["available"])
        )
        assert entry["selected"] == entry["kept_from_before"] + entry["new"]
    # the quotas did not change: nothing moves at all
    path = recipe(files, names=("math", "code", "general", "more_math"), name="sel_grow")
    third_id, third = run(path)
    assert kept_record_ids(engine, third_id) == kept_after and all(d["new"] == 0 for d in third["domains"].values())


def test_a_weak_domain_report_raises_the_quota_on_the_next_run(files, engine):
    report = files / "weak_domains.json"
    report.write_text("{}")
    path = recipe(
        files,
        name="sel_weak",
        shares={},
        counts={"math": 8, "code": 8, "knowledge": 10},
        weak_domains="weak_domains.json",
    )
    first_id, first = run(path)
    assert first["domains"]["math"]["selected"] == 8
    kept_before = kept_record_ids(engine, first_id)
    report.write_text(json.dumps({"math": {"extra": 4}}))
    second_id, second = run(path)
    assert second["domains"]["math"]["quota"] == 12 and second["domains"]["math"]["selected"] == 12
    assert second["domains"]["math"]["kept_from_before"] == 8 and second["boosts"] == {
        "math": {"factor": 1.0, "extra": 4}
    }
    assert kept_before < kept_record_ids(engine, second_id)


def test_re_running_the_stage_decides_nothing_twice(first, engine):
    run_id, result, _ = first
    again = pipeline.select(run_id)
    assert again["not_selected"] == result["not_selected"] == len(select_decisions(engine, run_id))


def test_new_weights_re_derive_scores_from_stored_signals_and_start_the_selection_over(files, engine):
    path = recipe(files, name="sel_weights")
    run(path)
    with engine.connect() as conn:
        measured = dict(conn.execute(sa.text("select record_id, scored_at from record_scores")).all())
    path = recipe(
        files,
        name="sel_weights",
        scoring={"quality": {"length": 1.0, "elaboration": 0, "structure": 0, "reasoning": 0}},
    )
    run_id, result = run(path)
    assert result["full_pass"]  # what ranks changed: the selection starts over
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "select s.record_id, s.signals_version, s.scored_at from record_scores s join records r using (record_id)"
                " join run_partitions rp on rp.partition_id = r.partition_id and rp.run_id = :r"
            ),
            {"r": run_id},
        ).all()
    assert rows and all(scored_at > measured[rid] for rid, _, scored_at in rows if rid in measured)


def stored_index(engine, dataset: str) -> dict[str, dict[str, str]]:
    """The dataset's pgvector selection tables: table -> {record id: xmin (the transaction that wrote the row)}."""
    with engine.connect() as conn:
        tables = (
            conn.execute(
                sa.text("select tablename from pg_tables where starts_with(tablename, :p)"),
                {"p": _table_prefix(dataset)},
            )
            .scalars()
            .all()
        )
        return {t: dict(conn.execute(sa.text(f"select record_key, xmin::text from {t}")).all()) for t in tables}


def selection_by_domain(engine, dataset: str) -> dict[str, set[str]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("select domain, record_id from selection where dataset = :d"), {"d": dataset}).all()
    out: dict[str, set[str]] = {}
    for domain, rid in rows:
        out.setdefault(domain, set()).add(rid)
    return out


def assert_index_holds_the_selection(engine, dataset: str, index: str, quota_domains=("math", "code", "knowledge")):
    tables = stored_index(engine, dataset)
    if index == "exact":
        assert tables == {}  # nothing but the selection table persists
        return
    chosen = selection_by_domain(engine, dataset)
    assert sorted(map(sorted, (t.keys() for t in tables.values()))) == sorted(
        sorted(chosen[d]) for d in quota_domains if chosen.get(d)
    )


def test_a_nightly_run_searches_the_stored_selection_and_adds_only_what_it_accepts(files, engine, index):
    name = f"sel_index_{index}"
    low = dict(shares={}, counts={"math": 8, "code": 8, "knowledge": 10}, diversity_threshold=0.55, index=index)
    _, first = run(recipe(files, name=name, **low), gate=False)  # at 0.55 a domain may fall short of its count
    assert first["index"] == index and first["domains"]["math"]["selected"] == 8
    math_before = selection_by_domain(engine, name)["math"]
    assert_index_holds_the_selection(engine, name, index)
    written = stored_index(engine, name)

    # nightly: a new file and a larger math quota: only math walks, against the 8 stored
    path = recipe(
        files,
        names=("math", "code", "general", "more_math"),
        name=name,
        **{**low, "counts": {"math": 16, "code": 8, "knowledge": 10}},
    )
    second_id, second = run(path, gate=False)
    assert not second["full_pass"] and second["domains"]["math"]["kept_from_before"] == 8
    matched_stored = [
        dup
        for reason, _, detail, dup, domain in select_decisions(engine, second_id)
        if domain == "math" and "too similar" in detail and dup in math_before
    ]
    assert matched_stored  # candidates of this run were too similar to records selected by the first
    assert_index_holds_the_selection(engine, name, index)
    if index == "pgvector":  # the old rows were not written again: same transaction id as in the first run
        now = stored_index(engine, name)
        old_rows = {rid: xmin for rows in written.values() for rid, xmin in rows.items()}
        new_rows = {rid: xmin for rows in now.values() for rid, xmin in rows.items()}
        assert {rid: new_rows[rid] for rid in old_rows} == old_rows
        assert len(new_rows) - len(old_rows) == sum(d["new"] for d in second["domains"].values() if "quota" in d) > 0

    # a smaller math quota lets 6 go: they leave the index (never matched again)
    path = recipe(
        files,
        names=("math", "code", "general", "more_math"),
        name=name,
        **{**low, "counts": {"math": 10, "code": 8, "knowledge": 10}},
    )
    _, third = run(path, gate=False)
    assert third["domains"]["math"]["let_go"] == 6
    assert_index_holds_the_selection(engine, name, index)


def test_a_new_ranking_rebuilds_the_index(files, engine, index):
    name = f"sel_rebuild_{index}"
    counts = dict(shares={}, counts={"math": 8, "code": 8, "knowledge": 10}, index=index)
    run(recipe(files, name=name, **counts))
    before = stored_index(engine, name)
    _, result = run(recipe(files, name=name, seed=8, **counts))  # the seed ranks: start over
    assert result["full_pass"]
    assert_index_holds_the_selection(engine, name, index)
    if index == "pgvector":
        assert len(before) == 3 and not set(before) & set(stored_index(engine, name))  # new tables, old ones gone
