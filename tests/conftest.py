"""Shared fixtures: a real PostgreSQL for the store, a private Airflow home, sample recipes.

The store is a fresh database: on the server named by INFINSTRUCT_TEST_DATABASE_URL when set (e.g. the
machine's PostgreSQL 15), else in an embedded PostgreSQL started under a temporary folder, so the
suite needs no running service.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import pytest

# Before anything imports Airflow or the library: private state for this test session.
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="infinstruct-test-"))
os.environ["INFINSTRUCT_HOME"] = str(_SESSION_HOME)
os.environ.pop("AIRFLOW_HOME", None)
from infinstruct.cli import _airflow_env  # noqa: E402  (no Airflow import; sets AIRFLOW_HOME etc. for whatever imports it)

_airflow_env()
from infinstruct.store.ledger import LEDGER_COLUMNS  # noqa: E402

os.environ.setdefault("XDG_RUNTIME_DIR", str(_SESSION_HOME))  # quiets platformdirs warnings of the embedded server

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_RECIPE = ROOT / "include" / "recipes" / "sample.yaml"
SHARED_DATA = ROOT.parent / "shared" / "data"


def _server_database_url(server: str) -> str:
    import sqlalchemy as sa

    from infinstruct.store.database_url import normalise_url

    name = f"infinstruct_test_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(normalise_url(server), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'create database "{name}"'))
    admin.dispose()
    return str(sa.engine.make_url(normalise_url(server)).set(database=name).render_as_string(hide_password=False))


def _drop_server_database(server: str, url: str) -> None:
    import sqlalchemy as sa

    from infinstruct.store.database_url import normalise_url

    admin = sa.create_engine(normalise_url(server), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'drop database if exists "{sa.engine.make_url(url).database}" with (force)'))
    admin.dispose()


@pytest.fixture(scope="session")
def database_url():
    server_url = os.environ.get("INFINSTRUCT_TEST_DATABASE_URL")
    embedded = None
    if server_url:
        url = _server_database_url(server_url)
    else:
        from infinstruct.store.database_url import embedded_database_url
        from infinstruct.store.embedded_server import start_server

        # registered first with cleanup 'delete', so the server stops and its folder goes at the end
        embedded = start_server(_SESSION_HOME / "pgdata", cleanup_mode="delete")
        url = embedded_database_url("infinstruct_test", pgdata=_SESSION_HOME / "pgdata")
    os.environ["INFINSTRUCT_DATABASE_URL"] = url  # what pipeline steps (and DAG tasks) connect to
    yield url
    from infinstruct.store.db import _migrated_engine, get_engine

    get_engine(url).dispose()  # close pooled connections before the server goes
    _migrated_engine.cache_clear()
    if embedded is not None:
        embedded.cleanup()
    else:
        _drop_server_database(server_url, url)


@pytest.fixture(scope="session")
def engine(database_url):
    from infinstruct.store.db import get_engine

    return get_engine(database_url)


@pytest.fixture(scope="session")
def airflow_home(database_url) -> Path:
    """A migrated Airflow home (SQLite) whose DAG folder is the project's dags/."""
    from infinstruct.cli import ensure_airflow_db

    ensure_airflow_db()
    return Path(os.environ["AIRFLOW_HOME"])


def write_recipe(folder: Path, name: str, sources: list[dict], **extra) -> Path:
    """A recipe file in `folder` (source paths may be relative to it)."""
    import yaml

    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "sources": sources, **extra}))
    return path


def sample_recipe(name: str) -> dict:
    """The bundled sample recipe as a mapping, renamed, with absolute paths: to extend and write elsewhere."""
    import yaml

    recipe = yaml.safe_load(SAMPLE_RECIPE.read_text())
    recipe["name"] = name
    for item in [*recipe["sources"], *recipe["decontamination"]["benchmarks"]]:
        item["path"] = str((SAMPLE_RECIPE.parent / item["path"]).resolve())
    return recipe


def run_partition_steps(recipe_path) -> str:
    """A new run of the recipe through every per-partition step (ingest, rules, decontamination); its id."""
    from infinstruct import pipeline

    run_id = f"test-{uuid.uuid4().hex[:8]}"
    pipeline.start_run(run_id, recipe_path)
    for part in pipeline.plan(run_id):
        pipeline.ingest_partition(run_id, part)
        pipeline.apply_rules(run_id, part)
        pipeline.decontaminate(run_id, part)
    return run_id


def run_partitions(run_id: str) -> list[str]:
    """The partition ids of a run, as plan_partitions returned them."""
    import sqlalchemy as sa

    from infinstruct import pipeline

    with pipeline.get_engine().connect() as conn:
        return (
            conn.execute(sa.text("select partition_id from run_partitions where run_id = :r order by 1"), {"r": run_id})
            .scalars()
            .all()
        )


def run_dedup_steps(recipe_path) -> str:
    """A new run of the recipe through every step up to and with semantic_deduplicate; its id."""
    from infinstruct import pipeline

    run_id = run_partition_steps(recipe_path)
    pipeline.deduplicate(run_id)
    pipeline.near_deduplicate(run_id)
    pipeline.semantic_deduplicate(run_id)
    return run_id


def run_scoring_steps(recipe_path) -> str:
    """A new run of the recipe through every step up to and with score_records; its id."""
    from infinstruct import pipeline

    run_id = run_dedup_steps(recipe_path)
    for part in run_partitions(run_id):
        pipeline.score_records(run_id, part)
    return run_id


def run_selection_steps(recipe_path) -> str:
    """A new run of the recipe through every step up to and with select_records (not its gate); its id."""
    from infinstruct import pipeline

    run_id = run_scoring_steps(recipe_path)
    pipeline.select(run_id)
    return run_id


def kept_record_ids(engine, run_id: str) -> set[str]:
    """Record ids the run keeps (no stage dropped them)."""
    import sqlalchemy as sa

    with engine.connect() as conn:
        return set(
            conn.execute(
                sa.text(
                    "select r.record_id from records r join run_partitions rp on rp.partition_id = r.partition_id"
                    " and rp.run_id = :r where not exists (select 1 from decisions d where d.partition_id = r.partition_id"
                    " and d.line_no = r.line_no and d.verdict = 'dropped')"
                ),
                {"r": run_id},
            ).scalars()
        )


def stored_scores(engine, run_id: str) -> dict[str, dict]:
    """Per first user turn of the run's records: the stored quality, model score, scorer and domain, and
    whether the record still stands (no stage dropped it: `selected`, once select_records ran)."""
    import sqlalchemy as sa

    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "select r.conversation->0->>'content', s.quality, (s.signals->>'model_score')::float, s.scorer, s.domain,"
                " not exists (select 1 from decisions d where d.partition_id = r.partition_id and d.line_no = r.line_no"
                "             and d.verdict = 'dropped')"
                " from records r join run_partitions rp on rp.partition_id = r.partition_id and rp.run_id = :r"
                " join record_scores s on s.record_id = r.record_id"
            ),
            {"r": run_id},
        ).all()
    return {
        q: {"quality": quality, "model_score": m, "scorer": scorer, "domain": domain, "selected": kept}
        for q, quality, m, scorer, domain, kept in rows
    }


def publish(run_id: str, out) -> dict:
    """The release tasks of the DAG for a run: write_release_part for every partition, check_release,
    export_release; returns export_release's result."""
    from infinstruct import pipeline

    for part in run_partitions(run_id):
        pipeline.write_release_part(run_id, part, out)
    pipeline.check_release(run_id)
    return pipeline.export_release(run_id, out)


def run_record_id(engine, run_id: str, file_name: str, line: int) -> str:
    """The record id of line `line` of the file named `file_name` among the run's partitions."""
    import sqlalchemy as sa

    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "select r.record_id from records r join partitions p using (partition_id) join run_partitions rp"
                " on rp.partition_id = r.partition_id where rp.run_id = :r and p.path like :p and r.line_no = :l"
            ),
            {"r": run_id, "p": f"%/{file_name}", "l": line},
        ).scalar_one()


def write_jsonl(path: Path, lines: list) -> Path:
    """Write items as JSONL; str items are written verbatim (for malformed lines)."""
    import json

    path.write_text("".join((item if isinstance(item, str) else json.dumps(item)) + "\n" for item in lines))
    return path


def has_pgvector(engine) -> bool:
    """pgvector is installed on the test server and the probe showed it works there."""
    from infinstruct.store.vector_probe import vector_support

    return vector_support(engine).ok


@pytest.fixture(params=["exact", "pgvector"])
def index(request, engine):
    """A vector index kind: each test using it runs on both (pgvector only where the server has it)."""
    if request.param == "pgvector" and not has_pgvector(engine):
        pytest.skip("pgvector does not work on this PostgreSQL (the embedded server has it)")
    return request.param


# a release's ledger columns that say what happened to each line (the file path, partition and run ids name the run)
LEDGER_OUTCOME = [c for c in LEDGER_COLUMNS if c not in ("file", "partition_id", "run_id")]


def release_outcome(out: Path, dataset: str):
    """The newest release of `dataset` under `out`, as two runs of the same content must agree on it: its record
    files (source + sha256) and its ledger rows without the run-specific columns."""
    import hashlib

    import pandas as pd

    folder = out / dataset / (out / dataset / "LATEST").read_text().strip()
    records = {
        p.name.split("-", 1)[0] + "/" + hashlib.sha256(p.read_bytes()).hexdigest()
        for p in (folder / "data").glob("*.parquet")
    }
    ledger = pd.read_parquet(folder / "ledger.parquet")[LEDGER_OUTCOME]
    return records, ledger.sort_values(["source", "line"]).reset_index(drop=True)


def write_sample_recipe(folder: Path, name: str) -> Path:
    """The bundled sample recipe, renamed, without its Phase 2 section, written into `folder`."""
    import yaml

    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**sample_recipe(name), "synthesis": None}))
    return path
