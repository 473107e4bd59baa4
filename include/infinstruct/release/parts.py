"""Release parts: one partition's share of a release, written once per content and reused by every
release that holds it.

    <out>/<dataset>/.parts/<partition_id>/<fingerprint>/
        records.parquet   the partition's kept records in the Infinity-Instruct shape, by record id
        records.jsonl     the same records (one file per format of `release.formats`: release/writers.py)
        ledger.parquet    one row per input line of the partition, by line

The store's `release_parts` row of a partition holds the part's summary (counts per verdict, reasons,
composition counts, file checksums) and whether the release gate validated it. export_release links the
parts' files into the release folder and adds up their summaries, so a nightly release costs what its
new partitions cost, not what the dataset costs.

A part's fingerprint hashes everything it is made of: the partition's row (content checksums, lines),
every stage completion of the partition (stage settings and input), its decisions (verdict, reason,
score, match, detail, run id of every row), the selection settings (the composition's domain), the
record formats and PART_VERSION (this module's output format). Any change rebuilds the part; nothing else does.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from infinstruct.config import Recipe
from infinstruct.errors import DataError
from infinstruct.record.conversation import EXPORT_ROLE
from infinstruct.record.reasons import Stage, Verdict
from infinstruct.release.writers import DEFAULT_FORMATS, RecordFiles, writer_class
from infinstruct.store.ledger import LEDGER_COLUMNS, AccountingError, ledger_rows
from infinstruct.store.stage_state import stream

PART_VERSION = 2  # 2: the ledger's `representative` column
BATCH = 10_000
LABEL_FIELDS = ("ability_en", "ability_zh", "cate_ability_en", "cate_ability_zh")
RECORD_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("conversations", pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))),
        ("label", pa.struct([(f, pa.list_(pa.string())) for f in LABEL_FIELDS])),
        ("langdetect", pa.string()),
        ("source", pa.string()),
        ("reward", pa.float64()),
    ]
)
LEDGER_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("file", pa.string()),
        ("line", pa.int64()),
        ("partition_id", pa.string()),
        ("record_id", pa.string()),
        ("verdict", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("score", pa.float64()),
        ("duplicate_of", pa.string()),
        ("detail", pa.string()),
        ("run_id", pa.string()),
        ("representative", pa.string()),
    ]
)
assert tuple(LEDGER_SCHEMA.names) == LEDGER_COLUMNS

_FINGERPRINT_INPUTS = sa.text("""
select p.partition_id, p.source, p.path, p.shard, p.checksum, p.ingested_checksum, p.lines, p.run_id,
       (select string_agg(c.stage || '=' || c.fingerprint, ',' order by c.stage)
        from stage_completions c where c.partition_id = p.partition_id) as completions,
       (select md5(string_agg(concat_ws('|', d.line_no, d.stage, d.verdict, d.reason, d.score, d.duplicate_of,
                                        d.detail, d.run_id), ',' order by d.line_no, d.stage))
        from decisions d where d.partition_id = p.partition_id) as decisions
from partitions p
join run_partitions rp on rp.partition_id = p.partition_id and rp.run_id = :run
where :partition is null or p.partition_id = :partition
order by p.source, p.path, p.shard
""")


class ReleasePartError(DataError, RuntimeError):
    """A release part is missing, stale or not validated: the tasks before export did not run on this state."""


def release_record(record_id: str, conversation: list[dict], source: str, language: str | None) -> dict[str, Any]:
    """One kept record in the Infinity-Instruct shape (labels and reward come with later stages)."""
    return {
        "id": record_id,
        "conversations": [{"from": EXPORT_ROLE[t["role"]], "value": t["content"]} for t in conversation],
        "label": {f: [] for f in LABEL_FIELDS},
        "langdetect": language if language != "und" else None,
        "source": source,
        "reward": None,
    }


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprints(conn: Connection, recipe: Recipe, run_id: str, partition_id: str | None = None) -> dict[str, str]:
    """{partition id: fingerprint} for the run's partitions (or the one given), in release order
    (source, file, shard)."""
    selection = json.dumps(recipe.selection.model_dump(mode="json") if recipe.selection else None, sort_keys=True)
    formats = recipe.release.formats if recipe.release.formats != DEFAULT_FORMATS else None  # None: as before formats
    out = {}
    for row in conn.execute(_FINGERPRINT_INPUTS, {"run": run_id, "partition": partition_id}):
        blob = json.dumps([PART_VERSION, *row, selection] + ([formats] if formats else []), default=str)
        out[row.partition_id] = hashlib.sha256(blob.encode()).hexdigest()[:24]
    return out


def parts_of_run(conn: Connection, dataset: str, run_id: str) -> list[dict]:
    """The stored parts of the run's partitions, in release order; a partition without a part is absent."""
    return [
        dict(row)
        for row in conn.execute(
            sa.text(
                "select rp.partition_id, rp.fingerprint, rp.path, rp.summary, rp.checked_key from release_parts rp"
                " join run_partitions r on r.partition_id = rp.partition_id and r.run_id = :run"
                " join partitions p on p.partition_id = rp.partition_id"
                " where rp.dataset = :d order by p.source, p.path, p.shard"
            ),
            {"run": run_id, "d": dataset},
        ).mappings()
    ]


def current_parts(conn: Connection, recipe: Recipe, run_id: str) -> list[dict]:
    """The run's parts, each checked to be written for the partition's current content.
    Raises ReleasePartError naming the partitions whose part is missing or stale."""
    expected = fingerprints(conn, recipe, run_id)
    parts = {p["partition_id"]: p for p in parts_of_run(conn, recipe.name, run_id)}
    stale = [
        pid
        for pid, print_ in expected.items()
        if pid not in parts or parts[pid]["fingerprint"] != print_ or not Path(parts[pid]["path"]).is_dir()
    ]
    if stale:
        raise ReleasePartError(
            f"{len(stale)} partition(s) have no release part for their current decisions (e.g. {stale[0]}): "
            "run write_release_part for every partition of the run after the last stage that decides"
        )
    return [parts[pid] for pid in expected]


def _dropped_lines(conn: Connection, partition_id: str) -> dict[int, bool]:
    """{line: dropped by the selection alone} for the partition's dropped records. Read on their own and
    matched in Python: a join of two freshly bulk-loaded tables is where the planner's guesses go wrong."""
    return dict(
        conn.execute(
            sa.text(
                "select line_no, bool_and(stage = :select) from decisions where partition_id = :p and verdict = :dropped"
                " group by line_no"
            ),
            {"p": partition_id, "select": Stage.SELECT.value, "dropped": Verdict.DROPPED.value},
        ).all()
    )


def _write_records(
    conn: Connection, partition_id: str, folder: Path, formats: list[str]
) -> tuple[int, str, list[list]]:
    """The partition's kept records into one file per format (`record_files`); returns (count, hash of the
    ids in order, composition counts: [domain, source, language, not_selected, n] of its standing records)."""
    dropped = _dropped_lines(conn, partition_id)
    rows = conn.execute(
        sa.text(
            "select r.line_no, r.record_id, r.conversation::text, r.source, coalesce(st.stats->>'record_language', 'und'),"
            " coalesce(s.domain, 'unscored') from records r left join record_stats st on st.record_id = r.record_id"
            " left join record_scores s on s.record_id = r.record_id where r.partition_id = :p order by r.record_id"
        ),
        {"p": partition_id},
        execution_options=stream(BATCH),
    )
    ids, mix = hashlib.sha256(), Counter()
    with RecordFiles(folder, "records", formats, RECORD_SCHEMA) as files:
        for batch in rows.partitions(BATCH):
            kept = []
            for line, record_id, conversation, source, language, domain in batch:
                not_selected = dropped.get(line)  # None: kept; True: left out by the selection; False: dropped before
                if not_selected is not False:
                    mix[(domain, source, language, bool(not_selected))] += 1
                if not_selected is None:
                    kept.append((record_id, conversation, source, language))
            if not kept:
                continue
            # the conversation is read as text and parsed by orjson: no Python dict per row from the driver
            files.write_lines(
                b"".join(
                    orjson.dumps(release_record(record_id, orjson.loads(conversation), source, language)) + b"\n"
                    for record_id, conversation, source, language in kept
                ),
                len(kept),
            )
            for record_id, *_ in kept:
                ids.update(record_id.encode())
    return files.count, ids.hexdigest(), [[*key, n] for key, n in sorted(mix.items())]


def record_files(formats: list[str]) -> list[str]:
    """A part's record files, one per format."""
    return [f"records{writer_class(fmt).suffix}" for fmt in formats]


def _write_ledger(conn: Connection, run_id: str, partition_id: str, folder: Path) -> tuple[Counter, dict, dict]:
    """The partition's ledger rows into ledger.parquet; returns (rows per verdict, reasons per source,
    reasons per stage)."""
    verdicts: Counter = Counter()
    by_source: dict[str, Counter] = defaultdict(Counter)
    by_stage: dict[str, Counter] = defaultdict(Counter)
    with pq.ParquetWriter(folder / "ledger.parquet", LEDGER_SCHEMA) as writer:
        written = False
        for rows in ledger_rows(conn, run_id, partition_id, batch=BATCH * 5, stream_options=stream(BATCH * 5)):
            columns = list(zip(*rows))  # column arrays straight from the row tuples: no dict per row
            writer.write_table(
                pa.Table.from_arrays(
                    [pa.array(c, type=f.type) for c, f in zip(columns, LEDGER_SCHEMA)], schema=LEDGER_SCHEMA
                )
            )
            written = True
            source, verdict, stage, reason = (
                columns[LEDGER_COLUMNS.index(c)] for c in ("source", "verdict", "stage", "reason")
            )
            verdicts.update(verdict)
            for (src, stg, why), n in Counter(zip(source, stage, reason)).items():
                if why:
                    by_source[src][why] += n
                    by_stage[stg][why] += n
        if not written:
            writer.write_table(LEDGER_SCHEMA.empty_table())
    return verdicts, {k: dict(v) for k, v in by_source.items()}, {k: dict(v) for k, v in by_stage.items()}


def write_part(
    engine: Engine, recipe: Recipe, run_id: str, partition_id: str, out_dir: str | os.PathLike
) -> dict[str, Any]:
    """Write the partition's release part unless one with the same fingerprint exists; returns its summary
    (with `written`: False when the stored part was reused)."""
    with engine.connect() as conn:
        print_ = fingerprints(conn, recipe, run_id, partition_id).get(partition_id)
        if print_ is None:
            raise ReleasePartError(f"partition {partition_id!r} is not part of run {run_id!r}")
        stored = (
            conn.execute(
                sa.text(
                    "select fingerprint, path, summary from release_parts where dataset = :d and partition_id = :p"
                ),
                {"d": recipe.name, "p": partition_id},
            )
            .mappings()
            .first()
        )
    files = [*record_files(recipe.release.formats), "ledger.parquet"]
    if stored and stored["fingerprint"] == print_ and all((Path(stored["path"]) / f).is_file() for f in files):
        return {**stored["summary"], "written": False}

    parts_dir = Path(out_dir).resolve() / recipe.name / ".parts" / partition_id
    folder = parts_dir / print_
    staging = parts_dir / f".{print_}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with engine.connect() as conn:
        conn.execute(sa.text("set cursor_tuple_fraction = 1.0"))  # streamed queries read everything: plan for all rows
        lines, source = conn.execute(
            sa.text("select lines, source from partitions where partition_id = :p"), {"p": partition_id}
        ).one()
        kept, ids_hash, mix = _write_records(conn, partition_id, staging, recipe.release.formats)
        verdicts, reasons, stages = _write_ledger(conn, run_id, partition_id, staging)
    counts = {"lines": int(lines or 0), **{v.value: verdicts.get(v.value, 0) for v in Verdict}}
    if counts[Verdict.KEPT.value] != kept or sum(counts[v.value] for v in Verdict) != counts["lines"]:
        raise AccountingError(
            f"partition {partition_id!r} ({source}): {counts['lines']} input lines but the ledger "
            f"accounts for {counts} and {kept} records were written"
        )
    summary = {
        "partition_id": partition_id,
        "source": source,
        "counts": counts,
        "ids_hash": ids_hash,
        "reasons": reasons,
        "stages": stages,
        "composition": mix,
        "files": {
            name: {"sha256": sha256_file(staging / name), "bytes": (staging / name).stat().st_size} for name in files
        },
    }
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "insert into release_parts (dataset, partition_id, fingerprint, path, summary, checked_key, run_id)"
                " values (:d, :p, :f, :path, cast(:s as jsonb), null, :run) on conflict (dataset, partition_id) do update"
                " set fingerprint = excluded.fingerprint, path = excluded.path, summary = excluded.summary,"
                " checked_key = null, run_id = excluded.run_id, written_at = now()"
            ),
            {
                "d": recipe.name,
                "p": partition_id,
                "f": print_,
                "path": str(folder),
                "s": json.dumps(summary),
                "run": run_id,
            },
        )
    for old in parts_dir.iterdir():  # earlier versions of this part: releases hold their files by hard link
        if old.name != print_:
            shutil.rmtree(old, ignore_errors=True)
    return {**summary, "written": True}
