"""Ingest one partition: stream its items, parse each into a record or quarantine it, COPY both.

Re-running a partition replaces exactly its own rows in one transaction, so retries and backfills
never duplicate or lose rows; a partition whose content is already in the store is skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from infinstruct.config import Recipe
from infinstruct.errors import DataError, permanent_os_error
from infinstruct.record.conversation import RECORD_VERSION, ConversationError, Record, Turn, build_record
from infinstruct.record.reasons import Quarantine
from infinstruct.sources.formats import mapper_for
from infinstruct.sources.plan import FileState
from infinstruct.sources.readers import read_json_array, read_jsonl, read_parquet
from infinstruct.stages import whole_dataset_stages
from infinstruct.store.pgcopy import Copier, CopyTable, json_field, text_field

log = logging.getLogger(__name__)

EXCERPT_CHARS = 500
RECORD_COLUMNS = (
    "partition_id",
    "line_no",
    "record_id",
    "instruction_key",
    "source",
    "conversation",
    "role_pattern",
    "min_turn_chars",
    "total_chars",
)
QUARANTINE_COLUMNS = ("partition_id", "line_no", "source", "reason", "error", "excerpt")


class IngestError(DataError, RuntimeError):
    """A partition could not be ingested as a whole (unreadable file, or mostly malformed lines)."""


@dataclass(frozen=True)
class IngestResult:
    partition_id: str
    lines: int
    records: int
    quarantined: int
    skipped: bool  # True when the store already held this exact content

    def as_dict(self) -> dict[str, Any]:
        return {
            "partition_id": self.partition_id,
            "lines": self.lines,
            "records": self.records,
            "quarantined": self.quarantined,
            "skipped": self.skipped,
        }


def ingested_content(checksum: str) -> str:
    """What `partitions.ingested_checksum` holds once a shard is in `records`: its checksum and the
    RECORD_VERSION its records were made with (a new version re-ingests it)."""
    return f"{checksum}:r{RECORD_VERSION}"


def parse_item(item: Any, mapper: Callable[[dict], list[Turn]], max_chars: int) -> Record:
    """One raw item (a JSONL line as bytes, or an already decoded value) to a Record.

    Raises ConversationError naming the quarantine reason.
    """
    if isinstance(item, ConversationError):
        raise item
    if isinstance(item, bytes):
        if b"\x00" in item:
            raise ConversationError(Quarantine.NUL_BYTE, "line contains a NUL byte")
        if not item.strip():
            raise ConversationError(Quarantine.BLANK_LINE, "blank line")
        if len(item) > 4 * max_chars:
            raise ConversationError(Quarantine.TOO_LONG, f"line has {len(item)} bytes, far over {max_chars} characters")
        try:
            item = orjson.loads(item.removeprefix(b"\xef\xbb\xbf"))  # a UTF-8 byte order mark is not junk
        except orjson.JSONDecodeError:
            item = _loads_strictly(item)
    if not isinstance(item, dict):
        raise ConversationError(Quarantine.NOT_AN_OBJECT, f"a record must be a JSON object, got {type(item).__name__}")
    return build_record(mapper(item), max_chars)


def _loads_strictly(line: bytes) -> Any:
    """The slow path for what orjson refuses: say exactly why, and accept what the JSON standard library
    does (NaN, integers beyond 64 bits, lone surrogate escapes, which later stages judge)."""
    try:
        # decode first: json.loads(bytes) would guess UTF-16 from a BOM
        text = line.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise ConversationError(Quarantine.INVALID_UTF8, f"not UTF-8 at byte {exc.start}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConversationError(Quarantine.INVALID_JSON, f"{exc.msg}: column {exc.colno}") from None
    except RecursionError:  # nesting deeper than Python's stack: one bad line, not a failed partition
        raise ConversationError(Quarantine.INVALID_JSON, "nested too deeply to read") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts (4,300)
        raise ConversationError(Quarantine.INVALID_JSON, str(exc)[:200]) from None


def excerpt(item: Any) -> str:
    if isinstance(item, bytes):
        text = item.decode("utf-8", errors="replace")
    elif isinstance(item, ConversationError):
        text = getattr(item, "text", "")  # readers.UnreadableElement: the start of the element's raw text
    else:
        text = json.dumps(item, ensure_ascii=True, default=str)
    return text[:EXCERPT_CHARS].replace("\x00", "\\0").rstrip("\r\n")


def partition_items(part: dict, batch_size: int, max_chars: int) -> Iterator[tuple[int, Any]]:
    path, kind = part["path"], part["format"]
    try:
        if kind == "jsonl":
            yield from read_jsonl(path, part["start_offset"], part["end_offset"], part["first_line"])
        elif kind == "parquet":
            yield from read_parquet(path, part["start_offset"], part["end_offset"], part["first_line"], batch_size)
        else:
            yield from read_json_array(path, max_chars)
    except OSError as exc:
        # missing, forbidden, or (pyarrow's OSError without an errno) corrupt: the same on a retry; not EIO
        if permanent_os_error(exc) or (kind == "parquet" and exc.errno is None):
            raise IngestError(f"cannot read {path}: {exc}") from exc
        raise
    except Exception as exc:  # pyarrow raises its own types for corrupt files; name the file
        if kind != "parquet":
            raise
        raise IngestError(f"cannot read Parquet file {path}: {exc}") from exc


def _changed_since_planned(conn, recipe: Recipe, part) -> str | None:
    """How the partition's file differs from what the plan scanned (stat), or None when it does not."""
    planned = (
        conn.execute(
            sa.text(
                "select size, mtime_ns, ctime_ns, inode from source_files where dataset = :d"
                " and source = :s and path = :p"
            ),
            {"d": recipe.name, "s": part["source"], "p": part["path"]},
        )
        .mappings()
        .first()
    )
    try:
        now = FileState.of(part["path"])
    except OSError as exc:
        return f"it cannot be read now ({exc.strerror})"
    if planned is None or FileState(**planned) == now:
        return None
    return (
        f"{planned['size']:,} bytes when planned, {now.size:,} now"
        if planned["size"] != now.size
        else "modified after it was planned"
    )


class _Checksummed:
    """The items of a JSON-lines shard, hashed as they are read: the bytes must be the ones the plan hashed."""

    def __init__(self, items: Iterator[tuple[int, Any]]):
        self.items, self.digest = items, hashlib.sha256()

    def __iter__(self):
        for line_no, item in self.items:
            self.digest.update(item)
            yield line_no, item


def ingest_partition(
    engine: Engine, recipe: Recipe, run_id: str, partition_id: str, *, force: bool = False
) -> IngestResult:
    """Ingest one planned partition; skip it when its content is already ingested (unless force)."""
    with engine.connect() as conn:
        part = (
            conn.execute(sa.text("select * from partitions where partition_id = :p"), {"p": partition_id})
            .mappings()
            .first()
        )
    if part is None:
        raise IngestError(f"partition {partition_id} is not planned; run the plan step first")
    if not force and part["status"] == "ingested" and part["ingested_checksum"] == ingested_content(part["checksum"]):
        log.info(
            "partition %s (%s shard %s) unchanged since run %s: skipped",
            partition_id,
            part["path"],
            part["shard"],
            part["run_id"],
        )
        return IngestResult(partition_id, part["lines"], part["records"], part["quarantined"], skipped=True)

    with engine.connect() as conn:
        changed = _changed_since_planned(conn, recipe, part)
    if changed:  # the planned byte ranges no longer hold the file's lines: reading them would lose or mix lines
        raise IngestError(
            f"{part['path']} changed since it was planned ({changed}): re-plan before ingesting it (clear "
            f"plan_partitions with its downstream tasks, or start a new run); shard {part['shard']} not ingested"
        )
    source = recipe.source(part["source"])
    mapper, settings = mapper_for(source), recipe.ingest
    reasons: Counter[str] = Counter()
    with engine.begin() as conn:
        conn.execute(sa.text("select pg_advisory_xact_lock(hashtext(:p))"), {"p": partition_id})
        conn.execute(sa.text("delete from records where partition_id = :p"), {"p": partition_id})
        conn.execute(sa.text("delete from quarantine where partition_id = :p"), {"p": partition_id})
        # what later stages derived from the old rows goes with them (their decisions cascade from records)
        conn.execute(sa.text("delete from contamination where partition_id = :p"), {"p": partition_id})
        # per-partition stages start over; whole-dataset stages keep their row, so they see this partition
        # as changed (its upstream fingerprints move) and re-decide the dataset instead of just adding to it
        conn.execute(
            sa.text("delete from stage_completions where partition_id = :p and stage <> all(:whole)"),
            {"p": partition_id, "whole": whole_dataset_stages()},
        )
        conn.execute(sa.text("delete from lsh_keys where partition_id = :p"), {"p": partition_id})
        copier = Copier(conn.connection.dbapi_connection.cursor())
        records = CopyTable(copier, "records", RECORD_COLUMNS, settings.batch_size)
        quarantine = CopyTable(copier, "quarantine", QUARANTINE_COLUMNS, settings.batch_size)
        pid, src, lines = partition_id.encode(), text_field(source.name), 0
        items = partition_items(part, settings.batch_size, settings.max_record_chars)
        if part["format"] == "jsonl":
            items = _Checksummed(items)
        try:
            for line_no, item in items:
                lines += 1
                try:
                    rec = parse_item(item, mapper, settings.max_record_chars)
                except ConversationError as err:
                    reasons[err.reason.code] += 1
                    quarantine.add(
                        pid,
                        b"%d" % line_no,
                        src,
                        err.reason.code.encode(),
                        text_field(err.detail),
                        text_field(excerpt(item)),
                    )
                    continue
                records.add(
                    pid,
                    b"%d" % line_no,
                    rec.record_id.encode(),
                    rec.instruction_key.encode(),
                    src,
                    json_field(rec.conversation),
                    rec.role_pattern.encode(),
                    b"%d" % rec.min_turn_chars,
                    b"%d" % rec.total_chars,
                )
            records.flush()
            quarantine.flush()
        except BaseException:
            copier.close(check=False)  # the error at hand is the one to report
            raise
        copier.close()  # waits for the last COPY; its error, if any, fails the transaction
        if isinstance(items, _Checksummed) and items.digest.hexdigest() != part["checksum"]:  # rolled back
            raise IngestError(
                f"{part['path']} shard {part['shard']}: its lines are not the ones planned (rewritten in "
                "place since?): re-plan before ingesting it"
            )
        too_bad = lines > 0 and quarantine.rows / lines > settings.max_quarantine_ratio
        conn.execute(
            sa.text(
                "update partitions set status = :status, ingested_checksum = :checksum, lines = :lines, records = :records,"
                " quarantined = :quarantined, run_id = :run, updated_at = now() where partition_id = :p"
            ),
            {
                "status": "failed" if too_bad else "ingested",
                "checksum": None if too_bad else ingested_content(part["checksum"]),
                "lines": lines,
                "records": records.rows,
                "quarantined": quarantine.rows,
                "run": run_id,
                "p": partition_id,
            },
        )
    log.info(
        "partition %s (%s shard %s): %d lines, %d records, %d quarantined %s",
        partition_id,
        part["path"],
        part["shard"],
        lines,
        records.rows,
        quarantine.rows,
        dict(reasons),
    )
    if too_bad:
        top = ", ".join(f"{code} x{n}" for code, n in reasons.most_common(3))
        raise IngestError(
            f"{part['path']} shard {part['shard']}: {quarantine.rows} of {lines} lines quarantined ({top}), over "
            f"ingest.max_quarantine_ratio={settings.max_quarantine_ratio}; is format {source.format!r} right for this file? "
            f"See table quarantine where partition_id = '{partition_id}'."
        )
    return IngestResult(partition_id, lines, records.rows, quarantine.rows, skipped=False)
