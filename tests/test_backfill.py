"""Nights under Airflow's own scheduler, as the README runs them: the nightly schedule gives its run the night
before as the partition key; `airflow backfill create` makes a run for a missed night with that night's key; a
manual trigger takes its key from the conf; and backfilling a night again (`--reprocess-behavior completed`)
reproduces that night's release byte for byte. Each run reads the sources' `{partition}` folders up to its key.

The deployment is private to the test (airflow_cluster): LocalExecutor, `airflow api-server` (Execution API),
`scheduler` and `dag-processor`, Airflow's metadata in a new database on the test store's server. The schedule
is daily at a minute five minutes ago, so unpausing the DAG makes its latest scheduled run at once (catchup off)
and the next comes a day later, whatever the time of day the test runs.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import sqlalchemy as sa
from airflow_cluster import (
    BIN,
    DAG_ID,
    Cluster,
    assert_succeeded,
    base_env,
    free_port,
    metadata_database,
    run_states,
    wait,
    wait_finished,
    wait_parsed,
)
from test_partitions import NIGHTS, manifest

from conftest import write_jsonl, write_recipe

RUN_TIMEOUT = 1200  # seconds for a run or a backfill to finish: ~1-2 min a night here


def _backfill(cluster: Cluster, meta: sa.Engine, conf: dict, start: str, end: str, reprocess: str) -> int:
    """`airflow backfill create` as the README writes it; the new backfill's id once the scheduler finished it."""
    with meta.connect() as conn:
        before = conn.execute(sa.text("select coalesce(max(id), 0) from backfill")).scalar()
    cluster.run(
        "airflow backfill create",
        [
            str(BIN / "airflow"),
            "backfill",
            "create",
            "--dag-id",
            DAG_ID,
            "--from-date",
            start,
            "--to-date",
            end,
            "--max-active-runs",
            "1",
            "--reprocess-behavior",
            reprocess,
            "--dag-run-conf",
            json.dumps(conf),
        ],
    )

    def finished() -> int | None:
        with meta.connect() as conn:
            row = conn.execute(
                sa.text("select id, completed_at from backfill where id > :b order by id"), {"b": before}
            ).first()
        return row.id if row is not None and row.completed_at is not None else None

    return wait(f"backfill {start}..{end} to finish", finished, cluster, RUN_TIMEOUT, every=3)


def _runs_of(meta: sa.Engine, backfill_id: int) -> dict[str, tuple[str, str | None]]:
    """run_id -> (state, partition_key) of the runs a backfill made or re-ran."""
    with meta.connect() as conn:
        ids = conn.execute(
            sa.text(
                "select r.run_id from backfill_dag_run b join dag_run r on r.id = b.dag_run_id where b.backfill_id = :b"
            ),
            {"b": backfill_id},
        ).scalars()
        wanted = set(ids)
    return {run_id: (state, key) for run_id, (state, key, _) in run_states(meta).items() if run_id in wanted}


def _record_files(m: dict) -> dict[str, str]:
    return {path: f["sha256"] for path, f in m["files"].items() if path.startswith("data/")}


def _release_of(out: Path, name: str, version: int) -> dict:
    m = manifest(out, name, version)
    return {"partition": m.get("partition"), "lines": m["totals"]["lines"], "content_hash": m["content_hash"]}


def test_the_nightly_run_a_backfilled_night_and_a_reprocessed_night_carry_their_keys_and_reproduce(
    database_url, airflow_home, tmp_path
):
    latest = (datetime.now(timezone.utc) - timedelta(minutes=5)).replace(second=0, microsecond=0)
    second_night = (latest - timedelta(days=1)).date().isoformat()  # the key of the run at `latest`
    first_night = (latest - timedelta(days=2)).date().isoformat()
    for night, questions in zip((first_night, second_night), NIGHTS.values()):  # test_partitions' two nights
        (tmp_path / "incoming" / night).mkdir(parents=True)
        write_jsonl(
            tmp_path / "incoming" / night / "chat.jsonl",
            [{"instruction": q, "input": "", "output": f"A careful answer to: {q}"} for q in questions],
        )
    (tmp_path / "incoming" / "9999-12-31").mkdir()  # a folder past every key is never read
    write_jsonl(tmp_path / "incoming" / "9999-12-31" / "chat.jsonl", [{"instruction": "Not yet.", "output": "No."}])
    name = f"nightly-{uuid.uuid4().hex[:6]}"
    recipe = write_recipe(
        tmp_path, name, [{"name": "chat", "path": str(tmp_path / "incoming/{partition}/*.jsonl"), "format": "alpaca"}]
    )
    out = tmp_path / "out"
    conf = {"recipe": str(recipe), "out_dir": str(out)}
    airflow = str(BIN / "airflow")

    with metadata_database(database_url, "airflow_backfill") as meta_url:
        meta = sa.create_engine(meta_url, poolclass=sa.pool.NullPool)
        api_port = free_port()
        env = {
            **base_env(tmp_path, meta_url, api_port),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",  # 2 cores: LocalExecutor forks this many workers
            "INFINSTRUCT_SCHEDULE": f"{latest.minute} {latest.hour} * * *",
            "INFINSTRUCT_RECIPE": str(recipe),  # what a scheduled run reads: the DAG's default params
            "INFINSTRUCT_OUT": str(out),
        }
        cluster = Cluster(tmp_path, env)
        try:
            cluster.run("infinstruct setup-airflow", [str(BIN / "infinstruct"), "setup-airflow"])  # migrate + pools
            cluster.start_core(api_port)
            wait_parsed(cluster, meta)

            # 1. the nightly run: unpaused (a paused DAG runs no task, backfilled or not), the scheduler starts it
            cluster.run("airflow dags unpause", [airflow, "dags", "unpause", DAG_ID])
            scheduled = wait_finished(cluster, meta, lambda: list(run_states(meta)), RUN_TIMEOUT)
            [(run_id, state)] = scheduled.items()
            assert_succeeded(cluster, meta, run_id, state)
            assert run_states(meta)[run_id][1:] == (second_night, "scheduled")
            night_2 = _release_of(out, name, 1)
            assert (night_2["partition"], night_2["lines"]) == (second_night, 4)  # both nights' folders, not 9999

            # 2. a missed night, backfilled as the README says
            backfill = _backfill(cluster, meta, conf, first_night, f"{first_night}T23:59:59", "none")
            runs = _runs_of(meta, backfill)
            assert [key for _, key in runs.values()] == [first_night], runs
            for run_id, (state, _) in runs.items():
                assert_succeeded(cluster, meta, run_id, state)
            night_1 = _release_of(out, name, 2)
            assert (night_1["partition"], night_1["lines"]) == (first_night, 2)

            # 3. a manual run with the key in its conf: night 2 again (a release after night 1's)
            cluster.run(
                "airflow dags trigger",
                [
                    airflow,
                    "dags",
                    "trigger",
                    DAG_ID,
                    "-r",
                    "manual_night_2",
                    "-c",
                    json.dumps({**conf, "partition": second_night}),
                ],
            )
            state = wait_finished(cluster, meta, ["manual_night_2"], RUN_TIMEOUT)["manual_night_2"]
            assert_succeeded(cluster, meta, "manual_night_2", state)
            assert _release_of(out, name, 3) == night_2

            # 4. the first night reprocessed: the same release as its first run
            again = _backfill(cluster, meta, conf, first_night, f"{first_night}T23:59:59", "completed")
            rerun = _runs_of(meta, again)
            assert [key for _, key in rerun.values()] == [first_night], rerun
            for run_id, (state, _) in rerun.items():
                assert_succeeded(cluster, meta, run_id, state)
            assert _release_of(out, name, 4) == night_1
            assert _record_files(manifest(out, name, 4)) == _record_files(manifest(out, name, 2))
        finally:
            cluster.stop()
            meta.dispose()
