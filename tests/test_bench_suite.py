"""`make bench`'s table writing (bench/bench_suite.py) on made-up measurements: rows, ratios, the
super-linear flag, and the rewrite of RESULTS.md that keeps the hand-kept table and the history."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
bench_suite = pytest.importorskip("bench_suite")

FACTS = {
    "command": "make bench SIZES=1000,2000",
    "date": "Mon Dec  7 12:00:00 UTC 2026",
    "commit": "abc1234",
    "machine": "2 CPUs",
    "machine_short": "2×CPU, 24 GiB",
    "flags": "avx2",
    "load_start": "1.00",
    "load_end": "2.00",
    "day": "2026-12-07",
}


def at(hour: int) -> dict:
    return dict(FACTS, date=f"Mon Dec  7 {hour:02d}:00:00 UTC 2026")


def measured(n: int, ingest_s: float, minhash_s: float, cold_s: float) -> dict:
    return {
        "n": n,
        "ingest": {
            "ingest": [ingest_s, ingest_s * 1.1],
            "pandas": [ingest_s * 2],
            "copy": [ingest_s / 2],
            "pandas_rows": n,
            "copy_rows": n,
        },
        "minhash": {
            "texts": n,
            "baseline_texts": n,
            "library": {"seconds": minhash_s, "steps": {"signatures": minhash_s}, "candidates": 5, "confirmed": 4},
            "datasketch": {"seconds": minhash_s * 10, "candidates": 6, "confirmed": 4},
            "datatrove": {"skipped": "not installed"},
        },
        "pipeline": {
            "setup": {"seconds": 30.0},
            "cold": {
                "seconds": cold_s,
                "returncode": 0,
                "summary": {"lines": n, "kept": n - 1},
                "tasks": {"check_release": 9.0},
            },
            "warm": {"seconds": cold_s / 4, "returncode": 0, "summary": None, "tasks": {}},
        },
    }


def test_rows_ratios_and_the_super_linear_flag():
    results = {"1k": measured(1000, 1.0, 0.1, 10.0), "2k": measured(2000, 2.0, 0.5, 20.0)}
    rows = [row for label, r in results.items() for row in bench_suite.rows_for(label, r)]
    by = {(r.metric.split(" (")[0].split(";")[0], r.size): r for r in rows}
    assert by[("ingest, 1 partition into empty tables", "1k")].ratio == pytest.approx(2.0)  # vs pandas
    assert by[("ingest, 1 partition", "1k")].ratio == pytest.approx(0.5)  # vs plain COPY
    warm = next(r for r in rows if r.metric.startswith("pipeline warm") and r.size == "2k")
    assert warm.ratio == pytest.approx(0.25)
    datatrove = next(r for r in rows if "datatrove" in r.metric)
    assert datatrove.ratio is None and "not measured" in datatrove.anchor  # said, not faked
    scaling = {r.metric: r for r in bench_suite.scaling_rows(results)}
    minhash = scaling["per-record time, MinHash, library"]
    assert minhash.size == "1k→2k" and minhash.ratio == pytest.approx(2.5) and minhash.note == "SUPER-LINEAR"
    assert scaling["per-record time, pipeline cold run"].note == "linear or better"


def test_minhash_time_per_candidate_pair_tells_the_data_from_the_algorithm():
    """Ten times the records and forty times the candidate pairs: per record super-linear, per pair linear."""
    small, big = measured(1000, 1.0, 0.1, 10.0), measured(10_000, 10.0, 2.0, 100.0)
    for r, candidates, pair_seconds in ((small, 100, 0.05), (big, 4000, 1.6)):
        r["minhash"]["library"].update(
            candidates=candidates, steps={"candidate pairs": pair_seconds / 2, "confirmation": pair_seconds / 2}
        )
    results = {"1k": small, "10k": big}
    for label, r in results.items():
        bench_suite.rows_for(label, r)
    scaling = {r.metric.split(";")[0]: r for r in bench_suite.scaling_rows(results)}
    assert scaling["per-record time, MinHash, library"].note == "SUPER-LINEAR"
    pairs = scaling["per-candidate time, MinHash library (candidate pairs + confirmation)"]
    assert pairs.ratio == pytest.approx(0.8) and pairs.note == "linear or better"
    assert "0.10 at 1k, 0.40 at 10k" in pairs.metric


def test_rewrite_keeps_the_hand_kept_table_and_moves_the_old_block_to_history():
    text = (
        "# Benchmarks\n\nintro\n\n## Current figures\n\n"
        + bench_suite.BEGIN
        + "\n"
        + bench_suite.END
        + "\n\n### Hand-kept figures\n\n| metric | value |\n| LLM | 1.011 |\n\n## Ingest (issue 2)\n\nold section\n"
    )
    first = bench_suite.block([bench_suite.Row("m", "1k", "1 records/s", "2 records/s", 0.5)], at(1), ["note one"])
    once = bench_suite.rewrite_results(text, first, "first")
    assert bench_suite.HISTORY not in once  # an empty placeholder is not history
    second = bench_suite.block([bench_suite.Row("m", "1k", "3 records/s", "2 records/s", 1.5)], at(2), ["note two"])
    twice = bench_suite.rewrite_results(once, second, "first")
    top, history = twice.split(bench_suite.HISTORY)
    assert "| m | 1k | 3 records/s | 2 records/s | 1.50 |" in top and "1 records/s" not in top
    assert "| LLM | 1.011 |" in top and "## Ingest (issue 2)\n\nold section" in top
    assert "### Replaced on first" in history and "| m | 1k | 1 records/s | 2 records/s | 0.50 |" in history
    # a section appended after the history stays last; the next replaced block joins the history before it
    third = bench_suite.block([bench_suite.Row("m", "1k", "4 records/s", "2 records/s", 2.0)], at(3), [])
    thrice = bench_suite.rewrite_results(twice + "\n## Appended later (issue 15)\n\nnew section\n", third, "second")
    history = thrice.split(bench_suite.HISTORY)[1]
    assert (
        history.index("### Replaced on first")
        < history.index("### Replaced on second")
        < history.index("| m | 1k | 3 records/s")
        < history.index("## Appended later (issue 15)")
    )
    assert thrice.count(bench_suite.BEGIN) == 1 and thrice.count(bench_suite.END) == 1
    assert thrice.rstrip().endswith("new section")
    # the same run's table rendered again (--render-only) replaces itself without becoming history
    again = bench_suite.block([bench_suite.Row("m", "1k", "5 records/s", "2 records/s", 2.5)], at(3), ["re-rendered"])
    rerendered = bench_suite.rewrite_results(thrice, again, "third")
    assert "### Replaced on third" not in rerendered and "re-rendered" in rerendered and "4 records/s" not in rerendered
