"""One run at a time per dataset: a lease row in PostgreSQL, held for the whole run.

A run spans many Airflow tasks in different processes (and `airflow backfill create` starts up to 10 runs at
once whatever the DAG's `max_active_runs`), so a session lock on one connection cannot hold it. Instead a row
of `run_leases`, keyed by the name the dataset's releases are numbered under (`<dataset>` for Phase 1,
`<dataset>/synthetic` for Phase 2), names the run that may work on the dataset:

* every task of a run takes or touches the lease before its step (`task_lease`), so a run's first task waits
  for the run before it, and a task re-run later (a cleared task, a retry) waits too if another run has
  the dataset meanwhile; while a step runs, a thread touches `heartbeat_at` every `beat` seconds;
* the export (release/assemble.py, release/synthetic.py) numbers the version under the lease and deletes it
  in the same transaction; a failed run deletes it in `mark_failed` (the DAG's failure callback, the CLI);
* a holder is dead when no task of it touched the lease for `stale` seconds (a killed `infinstruct run`, a
  lost worker) or its run is recorded as finished: its lease is taken over, with a warning naming it.

A run that finds the lease held waits, polling every `poll` seconds, up to `wait` seconds, then fails with
`DatasetBusy` naming the holder (not a `DataError`: Airflow's retries wait again). `wait = 0` fails at once.
Settings come from the environment (`LeaseSettings.from_env`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

log = logging.getLogger(__name__)

# phase -> (the table that records its runs, the suffix of its release name)
PHASES = {"curation": ("runs", ""), "synthesis": ("synth_runs", "/synthetic")}


class DatasetBusy(RuntimeError):
    """Another live run of the same dataset holds its lease (after waiting as long as allowed)."""


@dataclass(frozen=True)
class LeaseSettings:
    wait: float = 5 * 3600  # how long a run waits for the dataset (under the tasks' 6-hour execution_timeout)
    poll: float = 15.0  # seconds between tries while waiting
    stale: float = 900.0  # a holder whose tasks have not touched the lease for this long is dead
    beat: float = 30.0  # seconds between heartbeats while a task runs

    @classmethod
    def from_env(cls) -> LeaseSettings:
        """INFINSTRUCT_RUN_LOCK_WAIT / _POLL / _STALE / _BEAT (seconds) over the defaults."""
        values = {}
        for field in ("wait", "poll", "stale", "beat"):
            raw = os.environ.get(f"INFINSTRUCT_RUN_LOCK_{field.upper()}")
            if raw:
                try:
                    values[field] = float(raw)
                except ValueError:
                    raise ValueError(
                        f"INFINSTRUCT_RUN_LOCK_{field.upper()}={raw!r} is not a number of seconds"
                    ) from None
        return cls(**values)


@dataclass(frozen=True)
class Holder:
    """The run holding a lease, as a waiting run sees it."""

    dataset: str
    run_id: str
    phase: str
    holder: str
    acquired_at: object
    idle_seconds: float  # since its last heartbeat
    run_status: str | None  # its run's status (None: its run row is not written yet)

    def describe(self) -> str:
        return (
            f"{self.phase} run {self.run_id!r} holds dataset {self.dataset!r} (since {self.acquired_at}, last "
            f"heartbeat {self.idle_seconds:.0f}s ago from {self.holder})"
        )


def lease_name(dataset: str, phase: str) -> str:
    """The lease key of a phase's runs of a dataset: the name its releases are numbered under."""
    return dataset + PHASES[phase][1]


def _holder_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def try_acquire(conn: Connection, dataset: str, run_id: str, phase: str, stale: float) -> Holder | None:
    """One atomic attempt (commit after it): take the lease if free, ours, or its holder is dead; None when
    taken, else the live holder."""
    taken = conn.execute(
        sa.text(
            "insert into run_leases (dataset, run_id, phase, holder) values (:d, :run, :phase, :who)"
            " on conflict (dataset) do nothing returning run_id"
        ),
        {"d": dataset, "run": run_id, "phase": phase, "who": _holder_name()},
    ).first()
    if taken:
        return None
    row = conn.execute(
        sa.text(
            "select l.run_id, l.phase, l.holder, l.acquired_at, extract(epoch from now() - l.heartbeat_at) as idle,"
            " case l.phase when 'curation' then (select status from runs where run_id = l.run_id)"
            "              when 'synthesis' then (select status from synth_runs where run_id = l.run_id) end as status"
            " from run_leases l where l.dataset = :d for update"
        ),
        {"d": dataset},
    ).first()
    if row is None:  # released between the two statements: try again
        return try_acquire(conn, dataset, run_id, phase, stale)
    holder = Holder(dataset, row.run_id, row.phase, row.holder, row.acquired_at, float(row.idle), row.status)
    ours = row.run_id == run_id and row.phase == phase
    dead = holder.idle_seconds > stale or (row.status is not None and row.status != "running")
    if not (ours or dead):
        return holder
    if not ours:
        log.warning(
            "taking over the lease of dataset %r from a dead holder: %s (its run: %s)",
            dataset,
            holder.describe(),
            row.status or "not recorded",
        )
    conn.execute(
        sa.text(
            "update run_leases set run_id = :run, phase = :phase, holder = :who, heartbeat_at = now(),"
            " acquired_at = case when :ours then acquired_at else now() end where dataset = :d"
        ),
        {"d": dataset, "run": run_id, "phase": phase, "who": _holder_name(), "ours": ours},
    )
    return None


def acquire(engine: Engine, dataset: str, run_id: str, phase: str, settings: LeaseSettings | None = None) -> None:
    """Take the dataset's lease for the run, waiting (bounded) while another live run holds it."""
    settings = settings or LeaseSettings.from_env()
    deadline = time.monotonic() + settings.wait
    waited = False
    while True:
        with engine.begin() as conn:
            holder = try_acquire(conn, dataset, run_id, phase, settings.stale)
        if holder is None:
            if waited:
                log.info("%s run %s: got the lease of dataset %r", phase, run_id, dataset)
            return
        if time.monotonic() >= deadline:
            raise DatasetBusy(
                f"{phase} run {run_id!r} cannot start: {holder.describe()}. Runs of one dataset never overlap; this "
                f"one waited {settings.wait:.0f}s (INFINSTRUCT_RUN_LOCK_WAIT). Retry once that run has finished; a "
                f"holder that stops heart-beating for {settings.stale:.0f}s (INFINSTRUCT_RUN_LOCK_STALE) is taken "
                f"over, and `infinstruct leases --release {dataset}` frees it by hand"
            )
        if not waited:
            log.info("%s run %s waits for the dataset: %s", phase, run_id, holder.describe())
            waited = True
        time.sleep(max(0.0, min(settings.poll, deadline - time.monotonic())))


def release(conn: Connection, run_id: str, phase: str) -> None:
    """Give up the run's lease (in the transaction that records the run's end)."""
    conn.execute(
        sa.text("delete from run_leases where run_id = :run and phase = :phase"), {"run": run_id, "phase": phase}
    )


def claim_for_release(conn: Connection, dataset: str, run_id: str, phase: str) -> None:
    """Lock the dataset's lease row for the transaction that numbers a release; refuse when another run holds
    it (no lease at all is allowed: a step called outside a DAG task, as the tests do)."""
    row = conn.execute(
        sa.text("select run_id, phase from run_leases where dataset = :d for update"), {"d": dataset}
    ).first()
    if row is not None and (row.run_id, row.phase) != (run_id, phase):
        raise DatasetBusy(
            f"{phase} run {run_id!r} may not number a release of {dataset!r}: {row.phase} run "
            f"{row.run_id!r} holds the dataset (it took over after this run stopped heart-beating)"
        )


def _dataset_of_run(conn: Connection, run_id: str, phase: str) -> str | None:
    table = PHASES[phase][0]
    return conn.execute(sa.text(f"select dataset from {table} where run_id = :run"), {"run": run_id}).scalar()


def _beat(engine: Engine, run_id: str, phase: str, every: float, stop: threading.Event) -> None:
    while not stop.wait(every):
        try:
            with engine.begin() as conn:
                touched = conn.execute(
                    sa.text("update run_leases set heartbeat_at = now() where run_id = :run and phase = :phase"),
                    {"run": run_id, "phase": phase},
                ).rowcount
        except sa.exc.SQLAlchemyError as exc:  # the next beat tries again; the step itself will see a dead store
            log.warning("%s run %s: lease heartbeat failed: %s", phase, run_id, exc)
            continue
        if not touched:
            log.error(
                "%s run %s no longer holds its dataset's lease (taken over after a silence of its tasks?)",
                phase,
                run_id,
            )


@contextmanager
def task_lease(
    engine: Engine, run_id: str, phase: str, dataset: str | None = None, settings: LeaseSettings | None = None
) -> Iterator[str | None]:
    """Around one task of a run: hold the lease of the run's dataset (waiting for it if another live run has
    it) and heart-beat while the task runs. `dataset` names it before the run is recorded (the first task);
    later tasks find it from the run's row, and a run with no row yet is left to its step to report."""
    settings = settings or LeaseSettings.from_env()
    if dataset is None:
        with engine.connect() as conn:
            dataset = _dataset_of_run(conn, run_id, phase)
        if dataset is None:
            yield None
            return
    name = lease_name(dataset, phase)
    acquire(engine, name, run_id, phase, settings)
    with engine.begin() as conn:  # a run re-started by a cleared task is running again (others must not take over)
        conn.execute(
            sa.text(
                f"update {PHASES[phase][0]} set status = 'running', finished_at = null"
                " where run_id = :run and status <> 'running'"
            ),
            {"run": run_id},
        )
    stop = threading.Event()
    beater = threading.Thread(
        target=_beat, args=(engine, run_id, phase, settings.beat, stop), daemon=True, name=f"lease-heartbeat-{run_id}"
    )
    beater.start()
    try:
        yield name
    finally:
        stop.set()
        beater.join()


def leases(engine: Engine) -> list[dict]:
    """Every lease held, with its run's status and seconds since its heartbeat."""
    with engine.connect() as conn:
        rows = (
            conn.execute(
                sa.text(
                    "select l.dataset, l.run_id, l.phase, l.holder, l.acquired_at, l.heartbeat_at,"
                    " round(extract(epoch from now() - l.heartbeat_at)) as idle_seconds,"
                    " case l.phase when 'curation' then (select status from runs where run_id = l.run_id)"
                    "              when 'synthesis' then (select status from synth_runs where run_id = l.run_id) end as run_status"
                    " from run_leases l order by l.dataset"
                )
            )
            .mappings()
            .all()
        )
    return [dict(r) for r in rows]


def force_release(engine: Engine, dataset: str) -> str | None:
    """Delete a dataset's lease by hand (its holder is known dead); returns the run that held it."""
    with engine.begin() as conn:
        return conn.execute(
            sa.text("delete from run_leases where dataset = :d returning run_id"), {"d": dataset}
        ).scalar()
