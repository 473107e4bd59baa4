"""A record's lineage (`infinstruct explain`): for a record id or a `file:line`, every input line it names, each
with every decision taken on it (stage, verdict, reason, score, duplicate_of and the ledger's `representative`),
its quarantine if it never became a record, the gates of the newest run that planned it, and the releases whose
ledger holds it (kept or not, read from each release folder's ledger.parquet).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from infinstruct.stages import ledger_order
from infinstruct.store.ledger import DUPLICATE_REASONS, representatives
from infinstruct.store.run_report import run_gates

_FILE_LINE = re.compile(r"^(?P<file>.+):(?P<line>\d+)$")

_LINES = """
select p.partition_id, p.dataset, p.source, p.path, l.line_no, r.record_id, q.reason as quarantine_reason,
       q.error as quarantine_error
from partitions p
join (select partition_id, line_no from records where {where_records}
      union select partition_id, line_no from quarantine where {where_quarantine}) l on l.partition_id = p.partition_id
left join records r on r.partition_id = l.partition_id and r.line_no = l.line_no
left join quarantine q on q.partition_id = l.partition_id and q.line_no = l.line_no
{where_partitions}
order by p.dataset, p.source, p.path, l.line_no
"""


class ExplainError(LookupError):
    """Nothing in the store answers to the record id or file:line asked about."""


def _lines(conn, ref: str) -> list[dict[str, Any]]:
    match = _FILE_LINE.match(ref)
    if match is None:  # a record id: every line whose record has it (exact copies share it)
        sql = _LINES.format(where_records="record_id = :id", where_quarantine="false", where_partitions="")
        return [dict(r) for r in conn.execute(sa.text(sql), {"id": ref}).mappings()]
    name, line = match["file"], int(match["line"])
    # the file as planned (absolute), or any planned file whose path ends with what was typed
    sql = _LINES.format(
        where_records="line_no = :line",
        where_quarantine="line_no = :line",
        where_partitions="where p.path = :abs or p.path like :tail escape '\\'",
    )
    tail = "%/" + name.lstrip("./").replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return [
        dict(r)
        for r in conn.execute(sa.text(sql), {"line": line, "abs": str(Path(name).resolve()), "tail": tail}).mappings()
    ]


def explain(engine: Engine, ref: str) -> list[dict[str, Any]]:
    """Per input line `ref` names (a record id, or `file:line` with the file's path or its end): where it came
    from, its decisions in pipeline order, the newest run that planned it with that run's gates, and the
    releases whose ledger has it. Raises ExplainError when nothing matches."""
    order = ledger_order()
    with engine.connect() as conn:
        lines = _lines(conn, ref)
        if not lines:
            raise ExplainError(
                f"no input line answers to {ref!r}: give a record id (the `id` of a released record) "
                "or <file>:<line> of a planned source file"
            )
        for line in lines:
            decisions = [
                dict(d)
                for d in conn.execute(
                    sa.text(
                        "select stage, verdict, reason, score, duplicate_of, detail, run_id, decided_at from decisions"
                        " where partition_id = :p and line_no = :l"
                    ),
                    {"p": line["partition_id"], "l": line["line_no"]},
                ).mappings()
            ]
            decisions.sort(key=lambda d: order.index(d["stage"]) if d["stage"] in order else len(order))
            for d in decisions:  # where a duplicate's kept copy is now (follows later drops of the one it matched)
                d["representative"] = (
                    representatives(conn, d["run_id"], [d["duplicate_of"]]).get(d["duplicate_of"])
                    if d["reason"] in DUPLICATE_REASONS and d["duplicate_of"]
                    else None
                )
            line["decisions"] = decisions
            run = conn.execute(
                sa.text(
                    "select r.run_id, r.status from run_partitions rp join runs r on r.run_id = rp.run_id"
                    " where rp.partition_id = :p order by r.started_at desc limit 1"
                ),
                {"p": line["partition_id"]},
            ).first()
            line["run"] = dict(run._mapping) if run else None
            releases = conn.execute(
                sa.text("select version, path from releases where dataset = :d order by version"),
                {"d": line["dataset"]},
            ).all()
            line["releases"] = [
                held for version, path in releases if (held := _in_release(version, Path(path), line)) is not None
            ]
    for line in lines:
        line["gates"] = run_gates(engine, line["run"]["run_id"]) if line["run"] else []
    return lines


def _in_release(version: int, folder: Path, line: dict) -> dict | None:
    """The line's row in a release's ledger.parquet (verdict and reason), None when it is not there."""
    import pyarrow.parquet as pq

    ledger = folder / "ledger.parquet"
    if not ledger.exists():
        return None
    rows = pq.read_table(
        ledger,
        columns=["file", "line", "verdict", "stage", "reason"],
        filters=[("file", "=", line["path"]), ("line", "=", line["line_no"])],
    ).to_pylist()
    return {"version": version, "path": str(folder), **rows[0]} if rows else None


def render(lines: list[dict[str, Any]]) -> str:
    """`infinstruct explain`'s text."""
    out = []
    for line in lines:
        out.append(
            f"{line['source']} {line['path']}:{line['line_no']} (dataset {line['dataset']}, partition "
            f"{line['partition_id']})"
        )
        if line["record_id"] is None:
            out.append(f"  quarantined at ingest: {line['quarantine_reason']}: {line['quarantine_error']}")
        else:
            out.append(f"  record {line['record_id']}")
        for d in line["decisions"]:
            extra = [
                f"score {d['score']:.4g}" if d["score"] is not None else "",
                f"duplicate_of {d['duplicate_of']}" if d["duplicate_of"] else "",
                f"representative {d['representative']}" if d["representative"] else "",
                f"({d['detail']})" if d["detail"] else "",
            ]
            out.append(
                f"  {d['stage']:<15} {d['verdict']:<8} {d['reason'] or '':<28} "
                + " ".join(e for e in extra if e)
                + f"  [run {d['run_id']}]"
            )
        if line["record_id"] is not None and not any(d["verdict"] == "dropped" for d in line["decisions"]):
            out.append("  no stage dropped it")
        if line["run"]:
            gates = ", ".join(f"{g['gate']} {'passed' if g['success'] else 'FAILED'}" for g in line["gates"]) or "none"
            out.append(f"  newest run: {line['run']['run_id']} ({line['run']['status']}); gates: {gates}")
        held = [
            f"v{r['version']:04d} {r['verdict']}" + (f" ({r['reason']})" if r["reason"] else "")
            for r in line["releases"]
        ]
        out.append(f"  releases: {', '.join(held) if held else 'in no release'}")
    return "\n".join(out)
