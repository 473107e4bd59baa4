"""The pgvector probe: pgvector is used only where it was seen to work on this server.

Specification:
* on the embedded server the probe passes (384-dimension distances, an HNSW index built and searched),
  once per server start: later calls read the remembered answer;
* a failing probe (here a backend that dies mid-probe, as one killed by SIGILL does) is survived: the
  server is waited for, the failure remembered with what failed, one warning names the CPU;
  `index: auto` then searches exactly and `index: pgvector` fails with that message;
* the release of the sample is the same either way.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
import yaml

from conftest import has_pgvector, publish, run_partition_steps, sample_recipe, write_jsonl
from infinstruct import pipeline
from infinstruct.store import vector_probe
from infinstruct.store.vector_index import VectorIndexError, index_kind
from infinstruct.store.vector_probe import vector_support

STORY = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle sent by her "
    "grandmother fifty years ago."
)
REWORDED = (
    "Write a brief story about a lighthouse keeper who discovers a bottle with a message her "
    "grandmother sent fifty years earlier."
)
# What a backend killed by the CPU looks like from the client: the connection drops mid-statement.
DYING_BACKEND = ("a backend that dies", "select pg_terminate_backend(pg_backend_pid())")


@pytest.fixture
def pgvector_server(engine):
    if not has_pgvector(engine):
        pytest.skip("pgvector is not installed on this PostgreSQL (the embedded server has it)")
    return engine


@pytest.fixture
def failing_probe(monkeypatch, pgvector_server):
    """The probe's steps with a dying backend in the middle (a new probe version: probed again now)."""
    steps = list(vector_probe.PROBE_STEPS)
    monkeypatch.setattr(vector_probe, "PROBE_STEPS", (*steps[:2], DYING_BACKEND, *steps[2:]))
    vector_probe._warn_once_for.cache_clear()
    yield
    vector_probe._warn_once_for.cache_clear()


def test_probe_passes_on_the_embedded_server_and_is_remembered(pgvector_server, monkeypatch):
    support = vector_support(pgvector_server)
    assert support.ok, support.detail
    assert "HNSW index built and searched" in support.detail
    monkeypatch.setattr(vector_probe, "probe", lambda engine: pytest.fail("probed twice for one server start"))
    assert vector_support(pgvector_server) == support
    with pgvector_server.connect() as conn:
        assert index_kind(conn, "auto", "semantic_dedup.index") == "pgvector"
        started = conn.execute(sa.text("select pg_postmaster_start_time()")).scalar_one()
        assert support.server_started_at == started
        assert (
            conn.execute(
                sa.text("select count(*) from pg_database where datname = :d"), {"d": vector_probe.PROBE_DATABASE}
            ).scalar_one()
            == 0
        )  # the throwaway database went


def test_a_failing_probe_means_exact_search_and_a_clear_error(failing_probe, pgvector_server, caplog):
    with caplog.at_level(logging.WARNING, logger="infinstruct.store.vector_probe"):
        support = vector_support(pgvector_server)
        again = vector_support(pgvector_server)
    assert not support.ok and again == support
    assert "a backend that dies" in support.detail and "the server process died" in support.detail
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "CPU:" in warnings[0] and "exactly" in warnings[0]
    with pgvector_server.connect() as conn:  # the server is back and answers
        assert index_kind(conn, "auto", "semantic_dedup.index") == "exact"
        assert index_kind(conn, "exact", "semantic_dedup.index") == "exact"
        with pytest.raises(
            VectorIndexError,
            match="selection.index is 'pgvector' but pgvector does not work on this server: .*a backend that dies",
        ):
            index_kind(conn, "pgvector", "selection.index")


def _sample_recipe(folder: Path, name: str) -> Path:
    recipe = sample_recipe(name)
    # a rewording beyond MinHash's reach, so that the semantic stage has something to decide
    reworded = write_jsonl(
        folder / "reworded.alpaca.jsonl",
        [
            {"instruction": text, "input": "", "output": "A complete and helpful answer to the request."}
            for text in (STORY, REWORDED)
        ],
    )
    recipe["sources"].append({"name": "reworded", "path": str(reworded), "format": "alpaca"})
    recipe["semantic_dedup"] = {"index": "auto"}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _release(out: Path, dataset: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    folder = out / dataset / (out / dataset / "LATEST").read_text().strip()
    records = pd.read_parquet(folder / "data").sort_values("id").reset_index(drop=True)
    ledger = pd.read_parquet(folder / "ledger.parquet").drop(
        columns=["run_id", "partition_id"]
    )  # both name the dataset
    return records, ledger.sort_values(["source", "file", "line"]).reset_index(drop=True)


def _release_with_index(recipe: Path, out: Path) -> str:
    """Run the recipe to its release; the index semantic dedup searched."""
    run_id = run_partition_steps(recipe)
    pipeline.deduplicate(run_id)
    pipeline.near_deduplicate(run_id)
    index = pipeline.semantic_deduplicate(run_id)["index"]
    publish(run_id, out)
    return index


def test_the_sample_release_is_the_same_with_or_without_pgvector(pgvector_server, tmp_path, monkeypatch):
    assert _release_with_index(_sample_recipe(tmp_path, "probe_hnsw"), tmp_path / "out") == "pgvector"
    steps = list(vector_probe.PROBE_STEPS)
    monkeypatch.setattr(vector_probe, "PROBE_STEPS", (*steps[:2], DYING_BACKEND, *steps[2:]))
    assert _release_with_index(_sample_recipe(tmp_path, "probe_exact"), tmp_path / "out") == "exact"

    hnsw, exact = _release(tmp_path / "out", "probe_hnsw"), _release(tmp_path / "out", "probe_exact")
    assert (hnsw[1].reason == "semantic_duplicate").sum() == 1
    pd.testing.assert_frame_equal(hnsw[0], exact[0])
    pd.testing.assert_frame_equal(hnsw[1], exact[1])


def test_the_command_line_tells_whether_pgvector_works(pgvector_server, capsys):
    from infinstruct.cli import main

    assert main(["vector-support"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["works"] is True and answer["index_auto"] == "pgvector" and answer["cpu"]
