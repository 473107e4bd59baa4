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
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from conftest import ROOT, release_outcome, write_sample_recipe

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
DAG_ID = "infinstruct_curation"
WORKERS = ("celery-w1", "celery-w2")
BIN = Path(sys.executable).parent
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """The Airflow components of the test, each in its own process group with its log file."""

    def __init__(self, folder: Path, env: dict[str, str]):
        self.folder, self.env = folder, env
        self.processes: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}

    def start(self, name: str, args: list[str], extra_env: dict[str, str] | None = None) -> None:
        log = self.logs[name] = self.folder / f"{name}.log"
        with open(log, "wb") as out:
            self.processes[name] = subprocess.Popen(
                args,
                env={**self.env, **(extra_env or {})},
                cwd=self.folder,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def run(self, name: str, args: list[str], timeout: float = 600) -> str:
        """A short command (CLI) to its end; its output, or a failure with the output."""
        done = subprocess.run(args, env=self.env, cwd=self.folder, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"{name} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout

    def check_alive(self) -> None:
        dead = {n: p.returncode for n, p in self.processes.items() if p.poll() is not None}
        assert not dead, f"Airflow component(s) exited: {dead}\n{self.tails()}"

    def tails(self, lines: int = 30) -> str:
        parts = []
        for name, log in self.logs.items():
            text = log.read_text(errors="replace").splitlines() if log.exists() else []
            parts.append(f"----- {name} ({log}), last {lines} lines -----\n" + "\n".join(text[-lines:]))
        return "\n".join(parts)

    def stop(self) -> None:
        """SIGTERM every component (a worker's warm shutdown lets its task processes end), then SIGKILL what is
        left of each process group."""
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 30
        for proc in self.processes.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in self.processes.values():  # the group, too: task processes a killed worker left behind
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()


def _wait(what: str, ready, cluster: Cluster, timeout: float, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while True:
        value = ready()
        if value:
            return value
        cluster.check_alive()
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}\n{cluster.tails()}"
        time.sleep(every)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def _failed_task_logs(home: Path, run_id: str, failed: list[tuple[str, int]]) -> str:
    parts = []
    for task_id, map_index in failed[:3]:
        for log in sorted(
            (home / "logs").glob(
                f"dag_id={DAG_ID}/run_id={run_id}/task_id={task_id}/"
                f"{'' if map_index < 0 else f'map_index={map_index}/'}attempt=*.log"
            )
        ):
            parts.append(
                f"----- {log.relative_to(home)} -----\n" + "\n".join(log.read_text(errors="replace").splitlines()[-40:])
            )
    return "\n".join(parts)


def _cluster_env(folder: Path, meta_url: str, redis_db: int, queue: str, api_port: int) -> dict[str, str]:
    """The environment every Airflow component of the test shares: a private home, the metadata database,
    the broker and queue, the Execution API, and no scheduled run of the curation DAG."""
    (folder / "airflow").mkdir()
    (folder / "plugins").mkdir()  # the UI plugin is not what this test is about
    return {
        **os.environ,
        "AIRFLOW_HOME": str(folder / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(folder / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": meta_url,
        "AIRFLOW__CELERY__BROKER_URL": f"redis://{REDIS_HOST}:{REDIS_PORT}/{redis_db}",
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{meta_url}",
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE": queue,
        # the workers' task processes report to the api-server's Execution API, with tokens the scheduler signs
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),  # shorter: PyJWT warns (HS512)
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",  # the synthesis DAG stays paused
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",  # parse once: 2 shared cores
        # no scheduled run: the next 29 February 02:00 is after today (unpausing would otherwise run the
        # latest 02:00 slot at once) and, in case, the default params point at nothing of the project's
        "INFINSTRUCT_SCHEDULE": "0 2 29 2 *",
        "INFINSTRUCT_RECIPE": str(folder / "no-scheduled-run.yaml"),
        "INFINSTRUCT_OUT": str(folder / "scheduled"),
    }


def _start_components(cluster: Cluster, api_port: int, queue: str, node: str) -> None:
    """api-server (Execution API only), scheduler, dag-processor and the two workers, each naming itself in
    the task instances it runs (`[core] hostname_callable`), as two machines would; returns once all are ready."""
    hooks = cluster.folder / "hooks"
    hooks.mkdir()
    (hooks / "infinstruct_test_worker.py").write_text(
        "import os\n\n\ndef hostname():\n    return os.environ['INFINSTRUCT_TEST_WORKER']\n"
    )
    airflow = str(BIN / "airflow")
    cluster.start(
        "api-server", [airflow, "api-server", "--apps", "execution", "-H", "127.0.0.1", "-p", str(api_port), "-w", "1"]
    )
    cluster.start("scheduler", [airflow, "scheduler", "--skip-serve-logs"])
    cluster.start("dag-processor", [airflow, "dag-processor"])
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
    _wait("the Execution API", lambda: _http_ok(f"http://127.0.0.1:{api_port}/execution/health"), cluster, 300)
    for name in WORKERS:
        _wait(
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

    # Airflow's metadata: a new database on the store's server
    server = sa.engine.make_url(database_url).set(drivername="postgresql+psycopg2")
    meta_name = f"airflow_celery_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'create database "{meta_name}"'))
    meta_url = server.set(database=meta_name).render_as_string(hide_password=False)
    meta = sa.create_engine(meta_url, poolclass=sa.pool.NullPool)
    api_port = _free_port()
    cluster = Cluster(tmp_path, _cluster_env(tmp_path, meta_url, redis_db, queue, api_port))
    local = None
    try:
        # the local run of the same recipe content (another dataset name), in the session's SQLite Airflow home,
        # while the cluster starts: the two share the store (and so its embedding cache) but no partition
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
        cluster.run("infinstruct setup-airflow", [str(BIN / "infinstruct"), "setup-airflow"])  # db migrate + pools
        _start_components(cluster, api_port, queue, node=f"infinstruct-test-{tag}")

        def parsed() -> bool:
            with meta.connect() as conn:
                return bool(
                    conn.execute(
                        sa.text("select count(*) from serialized_dag where dag_id = :d"), {"d": DAG_ID}
                    ).scalar()
                )

        _wait(f"the dag-processor to parse {DAG_ID}", parsed, cluster, 300)

        conf = {"recipe": str(write_sample_recipe(tmp_path, celery_name)), "out_dir": str(tmp_path / "celery")}
        cluster.run("airflow dags unpause", [str(BIN / "airflow"), "dags", "unpause", DAG_ID])
        cluster.run(
            "airflow dags trigger",
            [str(BIN / "airflow"), "dags", "trigger", DAG_ID, "-r", run_id, "-c", json.dumps(conf)],
        )

        def finished() -> str | None:
            with meta.connect() as conn:
                state = conn.execute(
                    sa.text("select state from dag_run where dag_id = :d and run_id = :r"), {"d": DAG_ID, "r": run_id}
                ).scalar()
            return state if state in ("success", "failed") else None

        state = _wait(f"run {run_id} to finish", finished, cluster, RUN_TIMEOUT, every=3)

        with meta.connect() as conn:
            instances = conn.execute(
                sa.text(
                    "select task_id, map_index, state, hostname from task_instance where dag_id = :d and run_id = :r"
                    " order by task_id, map_index"
                ),
                {"d": DAG_ID, "r": run_id},
            ).all()
        failed = [(t, m) for t, m, s, _ in instances if s != "success"]
        assert state == "success", (
            f"the Celery run ended {state}; not successful: {failed}\n"
            f"{_failed_task_logs(cluster.folder / 'airflow', run_id, failed)}\n{cluster.tails()}"
        )
        assert {h for *_, h in instances} <= set(WORKERS), (
            f"task instances ran elsewhere than the two workers: {sorted({h for *_, h in instances})}"
        )
        per_worker = {w: sorted(f"{t}[{m}]" for t, m, _, h in instances if m >= 0 and h == w) for w in WORKERS}
        assert all(per_worker.values()), f"mapped instances did not run on both workers: {per_worker}"

        assert local.wait(timeout=1200) == 0, (
            f"the local `infinstruct run` failed:\n{(tmp_path / 'local-run.log').read_text(errors='replace')[-4000:]}"
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
        with admin.connect() as conn:
            conn.execute(sa.text(f'drop database if exists "{meta_name}" with (force)'))
        admin.dispose()
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
