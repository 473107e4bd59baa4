"""What `infinstruct run` and `infinstruct synthesize` show while a DAG runs in-process (dag.test): one line per
stage when it is done (its instances, elapsed time and the counts its step returned), a "running" line now and
then while a long stage works (at 30 s, then every minute), then a summary; Airflow's
and the tasks' own log lines go to a log file whose path is printed (`--verbose`: to the terminal as well).

The watcher reads Airflow's metadata database (task instances and their XCom return values) from a thread,
so the library's steps stay unaware of it. Airflow is imported here only inside functions.
"""

from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, TextIO

from infinstruct.config import infinstruct_home

DONE = {"success", "failed", "upstream_failed", "skipped", "removed"}
# the counts worth a person's glance, in this order; others follow, at most MAX_COUNTS in all
FIRST = (
    "lines",
    "records",
    "quarantined",
    "decided",
    "standing",
    "kept",
    "dropped",
    "selected",
    "computed",
    "written",
    "skipped",
    "children",
    "tagged",
    "batches",
    "seeds",
)
MAX_COUNTS = 6
# seconds into a stage at which a "still running" line is printed: the first, then one every STILL_EVERY
STILL_FIRST, STILL_EVERY = 30.0, 60.0


def log_path(command: str) -> Path:
    """A new log file for one command's run: <INFINSTRUCT_HOME>/logs/<command>-<time>.log."""
    folder = infinstruct_home() / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{command}-{datetime.now().strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


@contextmanager
def logs_to(path: Path, verbose: bool) -> Iterator[TextIO]:
    """Send everything written to this process's stdout/stderr (file descriptors 1 and 2: Airflow's logging, the
    tasks' prints, subprocesses) to `path`, and to the terminal as well when `verbose`; yields the stream progress
    lines go to (the terminal)."""
    out = sys.stdout
    try:
        fd_backed = out.fileno() == 1
    except (AttributeError, OSError, ValueError):  # pytest's capture and the like: not a file descriptor
        fd_backed = False
    out.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(saved[0]), "w", buffering=1) if fd_backed else out
    log = open(path, "ab")
    tee = None
    if verbose:  # through a pipe that a thread copies to the log file and the terminal
        read_end, write_end = os.pipe()
        tee = threading.Thread(target=_tee, args=(read_end, log, saved[0]), daemon=True)
        tee.start()
        target = write_end
    else:
        target = log.fileno()
    os.dup2(target, 1)
    os.dup2(target, 2)
    try:
        yield terminal
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        if tee is not None:
            os.close(write_end)  # the pipe's last writer: the thread reads to its end and stops
            tee.join(timeout=5)  # a child that kept the pipe open (a server started meanwhile) holds no one up
        log.close()
        os.close(saved[0])
        os.close(saved[1])
        if terminal is not out:
            terminal.close()


def _tee(read_end: int, log, terminal_fd: int) -> None:
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        while chunk := pipe.read(65536):
            log.write(chunk)
            log.flush()
            try:
                os.write(terminal_fd, chunk)
            except OSError:
                pass


def describe(task: str, results: list[Any]) -> str:
    """One line of what a stage's instances returned: the gate's verdict, the release, or their counts added up
    (drops with their reasons, flags as "n of N", the whole-dataset pass's why)."""
    results = [r for r in results if r is not None]
    if not results:
        return ""
    first = results[0]
    if isinstance(first, list):  # a plan: the partitions (or files, batches) what follows is mapped over
        return f"{len(first)} partition(s)" if task == "plan_partitions" else f"{len(first)} item(s)"
    if not isinstance(first, dict):
        return str(first)[:120]
    if "gate" in first:
        if first.get("skipped"):
            return f"gate {first['gate']}: skipped ({first['skipped']})"
        stats = first.get("statistics") or {}
        met = (
            f" ({stats.get('successful_expectations')}/{stats.get('evaluated_expectations')} expectations)"
            if stats.get("evaluated_expectations") is not None
            else ""
        )
        return f"gate {first['gate']}: {'passed' if first.get('success') else 'FAILED'}{met}"
    if "path" in first and "version" in first:
        return f"v{first['version']:04d} at {first['path']}"
    if all(r.get("disabled") for r in results):
        return "off (its recipe section is absent)"
    reasons: dict[str, int] = {}
    for result in results:
        for reason, n in (result.get("by_reason") or {}).items():
            reasons[reason] = reasons.get(reason, 0) + n
    totals: dict[str, float] = {}
    flags: dict[str, int] = {}
    for result in results:
        for key, value in result.items():
            if key in reasons or key in ("version", "disabled", "full_pass", "batch"):
                continue  # a drop reason's count (shown with `dropped`), an index, or said otherwise
            if isinstance(value, bool):
                flags[key] = flags.get(key, 0) + value
            elif isinstance(value, (int, float)):
                totals[key] = totals.get(key, 0) + value
    keys = [k for k in FIRST if k in totals] + sorted(k for k in totals if k not in FIRST)
    shown = [f"{k} {_fmt(totals[k])}" + (_reasons(reasons) if k == "dropped" else "") for k in keys[:MAX_COUNTS]]
    shown += [
        f"{k} {n} of {len(results)}" if len(results) > 1 else k
        for k, n in flags.items()
        if n or (k in FIRST and len(results) > 1)
    ]  # one instance: a flag only when set
    if "dataset" in first and "recipe_hash" in first:
        shown.insert(0, f"dataset {first['dataset']}, recipe {first['recipe_hash']}")
    if isinstance(first.get("why"), str) and len(results) == 1:  # a whole-dataset pass: which kind, and why
        shown.append(f"{'full' if first.get('full_pass') else 'incremental'} pass ({first['why']})")
    return ", ".join(shown)


def _reasons(reasons: dict[str, int]) -> str:
    found = [f"{reason} {n:,}" for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]) if n]
    return f" ({', '.join(found)})" if found else ""


def _fmt(number: float) -> str:
    return f"{number:,}" if isinstance(number, int) or float(number).is_integer() else f"{number:,.3g}"


class DagRunProgress:
    """Prints one line per task of a DAG run (in `tasks` order) once all its instances are done."""

    def __init__(self, dag_id: str, tasks: list[str], out: TextIO, interval: float = 1.0):
        self.dag_id, self.tasks, self.out, self.interval = dag_id, tasks, out, interval
        self.reported: set[str] = set()
        self.still_due: dict[str, float] = {}  # task -> seconds into it at which its next "running" line is due
        self.not_run: list[str] = []  # said in one line at the end
        self.run_id: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="infinstruct-progress", daemon=True)
        self._after = self._newest_run_key()

    def _newest_run_key(self) -> int:
        import sqlalchemy as sa
        from airflow.models.dagrun import DagRun
        from airflow.utils.session import create_session

        with create_session() as session:
            return session.scalar(sa.select(sa.func.max(DagRun.id)).where(DagRun.dag_id == self.dag_id)) or 0

    def __enter__(self) -> "DagRunProgress":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.poll()  # what finished since the last look
        if self.not_run:
            self.out.write(f"  not run (an upstream task failed): {', '.join(self.not_run)}\n")
            self.out.flush()

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception:  # a busy SQLite database, a run not yet created: look again next time
                continue

    def poll(self) -> None:
        import sqlalchemy as sa
        from airflow.models.dagrun import DagRun
        from airflow.models.taskinstance import TaskInstance
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session

        with create_session() as session:
            if self.run_id is None:
                self.run_id = session.scalar(
                    sa.select(DagRun.run_id)
                    .where(DagRun.dag_id == self.dag_id, DagRun.id > self._after)
                    .order_by(DagRun.id)
                    .limit(1)
                )
                if self.run_id is None:
                    return
            instances = session.execute(
                sa.select(
                    TaskInstance.task_id,
                    TaskInstance.map_index,
                    TaskInstance.state,
                    TaskInstance.start_date,
                    TaskInstance.end_date,
                    TaskInstance.rendered_map_index,
                ).where(TaskInstance.dag_id == self.dag_id, TaskInstance.run_id == self.run_id)
            ).all()
            by_task: dict[str, list] = {}
            for row in instances:
                by_task.setdefault(row.task_id, []).append(row)
            for task in self.tasks:
                if task in self.reported:
                    continue
                rows = by_task.get(task)
                if not rows or any(r.state is None or str(r.state) not in DONE for r in rows):
                    self._still_running(task, rows or [])
                    return  # in declared order: a later task waits for this one's line
                values = session.execute(
                    sa.select(XComModel.map_index, XComModel.value).where(
                        XComModel.dag_id == self.dag_id,
                        XComModel.run_id == self.run_id,
                        XComModel.task_id == task,
                        XComModel.key == "return_value",
                    )
                ).all()
                results = [XComModel.deserialize_value(v) for v in values]
                self.reported.add(task)
                if all(str(r.state) in ("upstream_failed", "removed") for r in rows):
                    self.not_run.append(task)
                    continue
                self.out.write(stage_line(task, rows, results) + "\n")
                self.out.flush()

    def _still_running(self, task: str, rows: list) -> None:
        """A line for a stage that has worked for a while without a line of its own yet (a long stage is not a
        hung one): at STILL_FIRST seconds, then every STILL_EVERY."""
        seconds = running_seconds(rows, datetime.now(timezone.utc))
        due = self.still_due.get(task, STILL_FIRST)
        if seconds is None or seconds < due:
            return
        self.still_due[task] = due + STILL_EVERY * (1 + (seconds - due) // STILL_EVERY)
        self.out.write(running_line(task, rows, seconds) + "\n")
        self.out.flush()


def running_seconds(rows: list, now: datetime) -> float | None:
    """Seconds since the stage's first instance started, or None before any did."""
    starts = [r.start_date for r in rows if r.start_date]
    return (now - min(starts)).total_seconds() if starts else None


def running_line(task: str, rows: list, seconds: float) -> str:
    """`  minhash                running       95s  3/8 done` (a mapped stage says how many instances are done)."""
    mapped = any(r.map_index >= 0 for r in rows)
    done = sum(1 for r in rows if r.state is not None and str(r.state) in DONE)
    return f"  {task:<22} {'running':<10} {seconds:>6.0f}s" + (f"  {done}/{len(rows)} done" if mapped else "")


def stage_line(task: str, rows: list, results: list[Any]) -> str:
    """`  ingest            8/8 ok     3.1s  lines 45, records 34, quarantined 11`."""
    states = [str(r.state) for r in rows]
    mapped = any(r.map_index >= 0 for r in rows)
    ok = states.count("success")
    if all(s == "success" for s in states):
        status = f"{ok}/{len(rows)} ok" if mapped else "ok"
    elif any(s == "failed" for s in states):
        failed = [r.rendered_map_index or str(r.map_index) for r in rows if str(r.state) == "failed"]
        status = "FAILED" + (f" {', '.join(failed[:3])}{' …' if len(failed) > 3 else ''}" if mapped else "")
    else:
        status = (
            "not run" if all(s in ("upstream_failed", "removed") for s in states) else "/".join(sorted(set(states)))
        )
    starts = [r.start_date for r in rows if r.start_date]
    ends = [r.end_date for r in rows if r.end_date]
    elapsed = f"{(max(ends) - min(starts)).total_seconds():.1f}s" if starts and ends else ""
    detail = describe(task, results) if status.endswith("ok") else ""
    return f"  {task:<22} {status:<10} {elapsed:>7}  {detail}".rstrip()


def failed_instances(dag_run) -> list[str]:
    """`task [label]` of each failed task instance of a finished DagRun."""
    return [
        ti.task_id + (f" [{ti.rendered_map_index or ti.map_index}]" if ti.map_index >= 0 else "")
        for ti in dag_run.get_task_instances()
        if str(ti.state) == "failed"
    ]


def error_lines(log: Path, limit: int = 3) -> list[str]:
    """The distinct error messages the failed tasks logged (`SomeError: ...`), for the summary."""
    import re

    if not log.exists():
        return []
    pattern = re.compile(r"\b((?:[A-Z]\w*(?:Error|Exception|Failed|Reached))(?::| -) .{3,300})")
    found: list[str] = []
    for text in log.read_text(errors="replace").splitlines():
        match = pattern.search(text)
        if match and "AirflowFailException" not in match[1] and match[1] not in found:
            found.append(match[1].strip())
    return found[-limit:]


def run_summary(engine, dag_run, release: dict | None, log: Path | None, elapsed: float) -> str:
    """What a person reads after `infinstruct run`/`synthesize`: the release and its totals, drops by stage,
    the gates, what failed, and where the logs are."""
    from infinstruct.store.run_report import run_gates
    from infinstruct.store.run_status import _from_manifest

    lines = [f"run {dag_run.run_id}: {dag_run.state}"]
    if release:
        manifest = release["manifest"]
        lines.append(f"release {manifest['dataset']} v{release['version']:04d}: {release['path']}")
        if "stages" in manifest and "lines" in manifest["totals"]:
            f = _from_manifest(manifest)
            stages = ", ".join(f"{s} {n}" for s, n in f["dropped_by_stage"].items())
            lines.append(
                f"  {f['lines']} lines: {f['kept']} kept, {f['dropped']} dropped{f' ({stages})' if stages else ''},"
                f" {f['quarantined']} quarantined"
            )
        else:
            lines.append("  " + ", ".join(f"{k} {v}" for k, v in manifest["totals"].items()))
        skipped = manifest.get("skipped_files") or []
        if skipped:
            names = ", ".join(f"{Path(f['path']).name} ({f['reason']})" for f in skipped[:3])
            lines.append(f"  {len(skipped)} file(s) left out, not read: {names}{' …' if len(skipped) > 3 else ''}")
        diff = manifest.get("diff") or {}
        if diff.get("previous_version"):
            lines.append(
                f"  against v{diff['previous_version']:04d}: +{diff['added']} added, -{diff['removed']} removed, "
                f"{diff['unchanged']} unchanged"
            )
    gates = run_gates(engine, dag_run.run_id)
    if gates:
        lines.append("  gates: " + ", ".join(f"{g['gate']} {'passed' if g['success'] else 'FAILED'}" for g in gates))
    if str(dag_run.state) != "success":
        failed = failed_instances(dag_run)
        lines.append(f"  failed: {', '.join(failed) if failed else 'no task (see the log)'}")
        lines += [f"    {e}" for e in (error_lines(log) if log else [])]
    lines.append(f"done in {elapsed:.0f}s" + (f"; logs: {log}" if log else ""))
    return "\n".join(lines)
