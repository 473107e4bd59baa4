"""Scale-out with Airflow itself: the curation DAG under the CeleryExecutor, on the machine's Redis and two
Celery workers on loopback, spreads its mapped partitions over both workers and makes the release a local
`infinstruct run` of the same recipe makes (the same record files, byte for byte, and the same ledger rows).

The cluster is private to the test: an Airflow home in a temporary folder, Airflow's metadata in a new
database `airflow_celery_<hex>` on the test store's PostgreSQL server (Celery cannot work on SQLite), an
empty Redis database with a queue of its own, and the components the README's "Scaling out" names:
`airflow api-server` (the workers' tasks talk to its Execution API, /execution/), `scheduler`,
`dag-processor` and two `airflow celery worker` processes. Each worker reports its own name as the task
instances' `hostname` (`[core] hostname_callable`), as two machines would. Skipped where Redis on
127.0.0.1:6379 or the Celery provider is missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import signal
import subprocess
import uuid
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from airflow_cluster import (
    BIN,
    DAG_ID,
    Cluster,
    assert_succeeded,
    base_env,
    free_port,
    metadata_database,
    wait,
    wait_finished,
    wait_parsed,
)

from conftest import release_outcome, write_sample_recipe

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
WORKERS = ("celery-w1", "celery-w2")
RUN_TIMEOUT = 1200  # seconds for the Celery run: 2.5-3.5 min here (2 cores shared with other work)


def _redis() -> None:
    """The machine's Redis answers and the Celery provider is installed, or a skip saying what is missing."""
    if importlib.util.find_spec("airflow.providers.celery") is None:
        pytest.skip("apache-airflow-providers-celery is not installed (pip install -r requirements.txt)")
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_connect_timeout=2, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis on {REDIS_HOST}:{REDIS_PORT} for the CeleryExecutor ({exc})")


def _empty_redis_db() -> int:
    """An empty Redis database number (1-15, in random order): a parallel session rarely picks the same one, and
    the queue is the test's own anyway."""
    import redis

    for number in random.sample(range(1, 16), 15):
        try:
            if redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=number, socket_timeout=5).dbsize() == 0:
                return number
        except redis.ResponseError:  # a server configured with fewer databases
            continue
    pytest.skip(f"no empty Redis database on {REDIS_HOST}:{REDIS_PORT} (1-15 all hold keys)")


def _cluster_env(folder: Path, meta_url: str, redis_db: int, queue: str, api_port: int) -> dict[str, str]:
    """The shared environment (airflow_cluster.base_env) on the CeleryExecutor: the broker and queue, and no
    scheduled run of the curation DAG."""
    return {
        **base_env(folder, meta_url, api_port),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CELERY__BROKER_URL": f"redis://{REDIS_HOST}:{REDIS_PORT}/{redis_db}",
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{meta_url}",
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE": queue,
        # no scheduled run: the next 29 February 02:00 is after today (unpausing would otherwise run the
        # latest 02:00 slot at once) and, in case, the default params point at nothing of the project's
        "INFINSTRUCT_SCHEDULE": "0 2 29 2 *",
        "INFINSTRUCT_RECIPE": str(folder / "no-scheduled-run.yaml"),
        "INFINSTRUCT_OUT": str(folder / "scheduled"),
    }


def _start_components(cluster: Cluster, api_port: int, queue: str, node: str) -> None:
    """api-server (Execution API only), scheduler, dag-processor, then the two workers, each naming itself in
    the task instances it runs (`[core] hostname_callable`), as two machines would; returns once all are ready."""
    hooks = cluster.folder / "hooks"
    hooks.mkdir()
    (hooks / "infinstruct_test_worker.py").write_text(
        "import os\n\n\ndef hostname():\n    return os.environ['INFINSTRUCT_TEST_WORKER']\n"
    )
    cluster.start_core(api_port)
    airflow = str(BIN / "airflow")
    for name in WORKERS:  # one log server port per host: none here, the logs are in the shared home
        cluster.start(
            name,
            [
                airflow,
                "celery",
                "worker",
                "--celery-hostname",
                f"{name}@{node}",
                "--concurrency",
                "1",
                "--queues",
                queue,
                "--skip-serve-logs",
                "--without-gossip",
                "--without-mingle",
            ],
            {
                "PYTHONPATH": os.pathsep.join(filter(None, [str(hooks), os.environ.get("PYTHONPATH")])),
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": "infinstruct_test_worker.hostname",
                "INFINSTRUCT_TEST_WORKER": name,
            },
        )
    for name in WORKERS:
        wait(
            f"Celery worker {name}",
            lambda n=name: f"{n}@{node} ready" in cluster.logs[n].read_text(errors="replace"),
            cluster,
            300,
        )


def test_mapped_partitions_run_on_two_celery_workers_and_the_release_equals_a_local_runs(
    database_url, airflow_home, tmp_path
):
    _redis()
    redis_db, queue, tag = _empty_redis_db(), f"infinstruct_test_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex[:6]
    local_name, celery_name, run_id = f"local-{tag}", f"celery-{tag}", f"celery_{tag}"

    with metadata_database(database_url, "airflow_celery") as meta_url:
        meta = sa.create_engine(meta_url, poolclass=sa.pool.NullPool)
        api_port = free_port()
        cluster = Cluster(tmp_path, _cluster_env(tmp_path, meta_url, redis_db, queue, api_port))
        local = None
        try:
            # the local run of the same recipe content (another dataset name), in the session's SQLite Airflow
            # home, while the cluster starts: the two share the store (and so its embedding cache), no partition
            with open(tmp_path / "local-run.log", "wb") as out:
                local = subprocess.Popen(
                    [
                        str(BIN / "infinstruct"),
                        "run",
                        "--recipe",
                        str(write_sample_recipe(tmp_path, local_name)),
                        "--out",
                        str(tmp_path / "local"),
                    ],
                    cwd=tmp_path,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            cluster.run("infinstruct setup-airflow", [str(BIN / "infinstruct"), "setup-airflow"])  # migrate + pools
            _start_components(cluster, api_port, queue, node=f"infinstruct-test-{tag}")
            wait_parsed(cluster, meta)

            conf = {"recipe": str(write_sample_recipe(tmp_path, celery_name)), "out_dir": str(tmp_path / "celery")}
            cluster.run("airflow dags unpause", [str(BIN / "airflow"), "dags", "unpause", DAG_ID])
            cluster.run(
                "airflow dags trigger",
                [str(BIN / "airflow"), "dags", "trigger", DAG_ID, "-r", run_id, "-c", json.dumps(conf)],
            )
            state = wait_finished(cluster, meta, [run_id], RUN_TIMEOUT)[run_id]
            instances = assert_succeeded(cluster, meta, run_id, state)
            assert {h for *_, h in instances} <= set(WORKERS), (
                f"task instances ran elsewhere than the two workers: {sorted({h for *_, h in instances})}"
            )
            per_worker = {w: sorted(f"{t}[{m}]" for t, m, _, h in instances if m >= 0 and h == w) for w in WORKERS}
            assert all(per_worker.values()), f"mapped instances did not run on both workers: {per_worker}"

            assert local.wait(timeout=1200) == 0, (
                "the local `infinstruct run` failed:\n"
                + (tmp_path / "local-run.log").read_text(errors="replace")[-4000:]
            )
            local_records, local_ledger = release_outcome(tmp_path / "local", local_name)
            records, ledger = release_outcome(tmp_path / "celery", celery_name)
            assert records and records == local_records
            pd.testing.assert_frame_equal(ledger, local_ledger)
        finally:
            if local is not None and local.poll() is None:
                os.killpg(local.pid, signal.SIGKILL)
                local.wait()
            cluster.stop()
            meta.dispose()
            _drop_celery_keys(redis_db, queue)


def _drop_celery_keys(number: int, queue: str) -> None:
    """The keys this test's broker left in the Redis database it found empty: its queue's, and kombu's own
    bookkeeping once no other queue is bound there (a parallel session that picked the same database)."""
    import redis

    db = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=number, socket_timeout=5)
    ours = [k for k in db.scan_iter() if queue.encode() in k]
    if ours:
        db.delete(*ours)
    rest = list(db.scan_iter())
    if rest and all(k in KOMBU_KEYS or k.endswith(b".reply.celery.pidbox") for k in rest):
        db.delete(*rest)


KOMBU_KEYS = {
    b"_kombu.binding_deadlines",
    b"_kombu.binding.celery.pidbox",
    b"_kombu.binding.celeryev",
    b"_kombu.binding.reply.celery.pidbox",
    b"unacked",
    b"unacked_index",
    b"unacked_mutex",
}
