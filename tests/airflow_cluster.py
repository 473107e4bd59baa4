"""A private Airflow deployment for the tests that need Airflow's own scheduler (Celery scale-out, backfill).

Its home is a temporary folder; its metadata lives in a new database on the test store's PostgreSQL server
(dropped at the end); each component (`airflow api-server`, `scheduler`, `dag-processor`, workers) runs in a
process group of its own with a log file, and the failure messages carry the tails of those logs.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

from conftest import ROOT

DAG_ID = "infinstruct_curation"
BIN = Path(sys.executable).parent


class Cluster:
    """The Airflow components of a test, each in its own process group with its log file."""

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

    def start_core(self, api_port: int) -> None:
        """api-server (the Execution API the tasks report to), scheduler and dag-processor; returns once the
        Execution API answers."""
        airflow = str(BIN / "airflow")
        self.start(
            "api-server",
            [airflow, "api-server", "--apps", "execution", "-H", "127.0.0.1", "-p", str(api_port), "-w", "1"],
        )
        self.start("scheduler", [airflow, "scheduler", "--skip-serve-logs"])
        self.start("dag-processor", [airflow, "dag-processor"])
        wait("the Execution API", lambda: http_ok(f"http://127.0.0.1:{api_port}/execution/health"), self, 300)


def wait(what: str, ready, cluster: Cluster, timeout: float, every: float = 1.0):
    """`ready()`'s first truthy value; fails (with the components' logs) on timeout or when one of them died."""
    deadline = time.monotonic() + timeout
    while True:
        value = ready()
        if value:
            return value
        cluster.check_alive()
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}\n{cluster.tails()}"
        time.sleep(every)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def metadata_database(database_url: str, prefix: str) -> Iterator[str]:
    """Airflow's metadata database for one test: a new database `<prefix>_<hex>` on the store's server (Airflow's
    scheduler needs a real server, not SQLite), dropped at the end whatever is still connected."""
    server = sa.engine.make_url(database_url).set(drivername="postgresql+psycopg2")
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'create database "{name}"'))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'drop database if exists "{name}" with (force)'))
        admin.dispose()


def base_env(folder: Path, meta_url: str, api_port: int) -> dict[str, str]:
    """The environment every Airflow component of a test shares: a private home without the UI plugin, the
    metadata database, the Execution API with a secret of its own; DAGs are paused at creation and parsed once."""
    (folder / "airflow").mkdir()
    (folder / "plugins").mkdir()  # the UI plugin is not what these tests are about
    return {
        **os.environ,
        "AIRFLOW_HOME": str(folder / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(folder / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": meta_url,
        # the tasks report to the api-server's Execution API, with tokens the scheduler signs
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),  # shorter: PyJWT warns (HS512)
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",  # the synthesis DAG stays paused
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",  # parse once: 2 shared cores
    }


def wait_parsed(cluster: Cluster, meta: sa.Engine, dag_id: str = DAG_ID) -> None:
    def parsed() -> bool:
        with meta.connect() as conn:
            return bool(
                conn.execute(sa.text("select count(*) from serialized_dag where dag_id = :d"), {"d": dag_id}).scalar()
            )

    wait(f"the dag-processor to parse {dag_id}", parsed, cluster, 300)


def task_instances(meta: sa.Engine, run_id: str, dag_id: str = DAG_ID) -> list[tuple[str, int, str, str]]:
    """(task_id, map_index, state, hostname) of a run's task instances."""
    with meta.connect() as conn:
        return [
            tuple(row)
            for row in conn.execute(
                sa.text(
                    "select task_id, map_index, state, hostname from task_instance where dag_id = :d and run_id = :r"
                    " order by task_id, map_index"
                ),
                {"d": dag_id, "r": run_id},
            )
        ]


def failed_task_logs(home: Path, run_id: str, failed: list[tuple[str, int]], dag_id: str = DAG_ID) -> str:
    """The last lines of the first failed instances' task logs, for an assertion message."""
    parts = []
    for task_id, map_index in failed[:3]:
        for log in sorted(
            (home / "logs").glob(
                f"dag_id={dag_id}/run_id={run_id}/task_id={task_id}/"
                f"{'' if map_index < 0 else f'map_index={map_index}/'}attempt=*.log"
            )
        ):
            parts.append(
                f"----- {log.relative_to(home)} -----\n" + "\n".join(log.read_text(errors="replace").splitlines()[-40:])
            )
    return "\n".join(parts)


def run_states(meta: sa.Engine, dag_id: str = DAG_ID) -> dict[str, tuple[str, str | None, str]]:
    """run_id -> (state, partition_key, run_type) of a DAG's runs."""
    with meta.connect() as conn:
        rows = conn.execute(
            sa.text("select run_id, state, partition_key, run_type from dag_run where dag_id = :d"), {"d": dag_id}
        )
        return {run_id: (state, key, run_type) for run_id, state, key, run_type in rows}


def wait_finished(cluster: Cluster, meta: sa.Engine, run_ids, timeout: float, dag_id: str = DAG_ID) -> dict[str, str]:
    """The final state of each run (`run_ids`: a list, or a callable giving it), once all have finished."""

    def finished() -> dict[str, str] | None:
        wanted = run_ids() if callable(run_ids) else run_ids
        states = {r: s for r, (s, *_) in run_states(meta, dag_id).items() if r in wanted}
        done = wanted and len(states) == len(wanted) and all(s in ("success", "failed") for s in states.values())
        return states if done else None

    return wait(f"run(s) of {dag_id} to finish", finished, cluster, timeout, every=3)


def assert_succeeded(cluster: Cluster, meta: sa.Engine, run_id: str, state: str) -> list[tuple[str, int, str, str]]:
    """The run's task instances, once the run is known to have succeeded (else a failure with its task logs)."""
    instances = task_instances(meta, run_id)
    failed = [(t, m) for t, m, s, _ in instances if s != "success"]
    assert state == "success", (
        f"run {run_id} ended {state}; not successful: {failed}\n"
        f"{failed_task_logs(cluster.folder / 'airflow', run_id, failed)}\n{cluster.tails()}"
    )
    return instances
