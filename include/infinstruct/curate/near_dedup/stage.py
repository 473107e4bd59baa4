"""The near-duplicate stage: MinHash LSH over the instructions still standing after exact dedup.

1. Band keys per record line are computed once per partition (and settings) and kept in `lsh_keys`.
2. Candidates: records standing in the run's dataset (no earlier stage dropped them) that share a band
   key, found with numpy over the standing records' keys, so new records meet old ones.
3. Signatures are recomputed only for candidate rows (same settings give the same signatures), and a
   pair is confirmed by estimated Jaccard and the essential-word guard (`minhash.confirm_pairs`), then
   re-checked without template boilerplate (shingles shared by many candidates: `without_boilerplate`).
4. The records are walked in the recipe's keep order (source priority, then the longest conversation, then
   the smallest id): one is ledgered `near_duplicate` only when a confirmed pair joins it to a record
   accepted before it, with that record's id and that pair's Jaccard estimate (`minhash.representatives`);
   chains of look-alikes (a~b, b~c, a≁c) are not clusters: c stays unless it resembles an accepted record.

Incremental (`stage_state.whole_dataset_scope`): when the run only added partitions, candidates are the pairs
with at least one new record, old records are the ones still standing after this stage's earlier passes,
and an old record is always accepted (`minhash.Member.accepted`); only new records are decided.
Such a pass holds only the new records and the old ones sharing a band key with one of them
(`_standing(..., incremental=True)`): every old partition's keys are read once, by binary COPY straight
into numpy, and tested against the new keys (`minhash.KeySet`), without a Python object per row, and only
the hits are looked up in the decisions; the candidate pairs are the same as with every standing record
in memory. (An index of (key -> record) would let PostgreSQL look keys up instead, but
it has a row per band per record: 32 M at a million records, measured 9-36x slower to write than the
band keys themselves, and with 1% new records x 32 bands the lookups touch most of its pages anyway.)

Memory of a full pass grows with the standing records: their band keys as one numpy array (bands × 8
bytes: 256 B each at the defaults, ~0.25 GB at a million) plus a line number and partition code; texts and
ids are read only for the candidate rows. An incremental pass holds one old partition's keys at a time.
The decisions of the partitions a pass decides are replaced in one transaction.
"""

from __future__ import annotations

import io
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, NamedTuple, TypeVar

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from infinstruct.config import Recipe
from infinstruct.contract import DatasetStage, Decision, Outcome, StageResult
from infinstruct.curate.near_dedup import minhash
from infinstruct.record.conversation import instruction_sql
from infinstruct.record.reasons import Drop, Stage, Verdict
from infinstruct.stages import decided_before
from infinstruct.store.pgcopy import Copier, CopyTable, text_field
from infinstruct.store.stage_state import Scope, complete, completed, fingerprint, stream

log = logging.getLogger(__name__)

BATCH = 5_000
T = TypeVar("T")
KEY_STAGE = "lsh_keys"  # stage_completions row for a partition's band keys
DECISION_VERSION = 2  # bump when the same pairs would be decided differently (2: accepted representatives)


INSTRUCTION_SQL = instruction_sql("r")  # the instructions come out of PostgreSQL without their answers


def store_keys(engine: Engine, recipe: Recipe, run_id: str, partition_id: str) -> bool:
    """Band keys for every record of the partition, unless already stored for the same input; True if computed.
    (The mapped `minhash` task computes them partition by partition, in parallel; the stage catches up on any missing.)"""
    settings = recipe.near_dedup
    with engine.connect() as conn:
        print_ = fingerprint(conn, partition_id, settings.index_fingerprint)
        if completed(conn, partition_id, KEY_STAGE, print_) is not None:
            return False
    count = 0
    with engine.connect() as reader, engine.begin() as conn:
        conn.execute(sa.text("delete from lsh_keys where partition_id = :p"), {"p": partition_id})
        copier = Copier(conn.connection.dbapi_connection.cursor())
        table = CopyTable(copier, "lsh_keys", ("partition_id", "line_no", "keys"), BATCH)
        pid = partition_id.encode()
        try:
            result = reader.execute(
                sa.text(
                    f"select r.line_no, {INSTRUCTION_SQL} from records r where r.partition_id = :p order by r.line_no"
                ),
                {"p": partition_id},
                execution_options=stream(BATCH),
            )
            for rows in result.partitions(BATCH):
                keys = minhash.band_keys(minhash.signatures([text for _, text in rows], settings), settings)
                for (line_no, _), row_keys in zip(rows, keys.astype("<i8")):
                    table.add(pid, b"%d" % line_no, b"\\\\x" + row_keys.tobytes().hex().encode())
                count += len(rows)
            table.flush()
        except BaseException:
            copier.close(check=False)
            raise
        copier.close()
        complete(conn, partition_id, KEY_STAGE, print_, run_id, {"records": count})
    return True


class Standing(NamedTuple):
    """Records still standing, as compact arrays: row i is (partitions[part[i]], line[i])."""

    partitions: list[str]
    part: np.ndarray  # int32 index into partitions
    line: np.ndarray  # int64 line numbers
    keys: np.ndarray  # (n, bands) int64 band keys
    new: np.ndarray  # bool: decided in this pass (else an old record that stands)


def dropped_lines(
    conn: Connection, partition_id: str, lines: np.ndarray, stages: list[str] | None = None
) -> np.ndarray:
    """Those of the partition's `lines` that a decision of `stages` (None: of any stage) drops. A few lines
    are looked up by key; for many, the partition's dropped lines are read whole."""
    few = len(lines) <= 5_000
    return np.fromiter(
        conn.execute(
            sa.text(
                "select distinct line_no from decisions where partition_id = :p and verdict = :dropped"
                + (" and stage = any(:stages)" if stages is not None else "")
                + (" and line_no = any(:lines)" if few else "")
            ),
            {
                "p": partition_id,
                "dropped": Verdict.DROPPED.value,
                "stages": stages,
                "lines": lines.tolist() if few else None,
            },
        ).scalars(),
        dtype=np.int64,
    )


def _standing_rows(conn: Connection, partition_id: str, deciding: bool, rows: np.ndarray) -> np.ndarray:
    """Those of a partition's `lsh_keys` rows (line_no, keys) that still stand, in line order: no earlier
    stage dropped them, nor, in a partition this pass does not decide, an earlier pass of this stage.
    (`lsh_keys` holds exactly the partition's records: `store_keys` redoes them whenever its content changes.)"""
    if not len(rows):
        return rows
    lines = rows["line_no"].astype(np.int64)
    earlier = decided_before(Stage.NEAR_DEDUP)
    gone = dropped_lines(conn, partition_id, lines, earlier if deciding else [*earlier, Stage.NEAR_DEDUP.value])
    order = np.argsort(lines, kind="stable")
    return rows[order[~np.isin(lines[order], gone)]]


def map_partitions(
    engine: Engine, partition_ids: list[str], fn: Callable[[Connection, str], T], threads: int = 2
) -> Iterator[T]:
    """fn(connection, partition_id) for each partition, in order, on `threads` threads with a connection each:
    a COPY waits on the server and numpy works without the GIL, so one thread reads while another tests
    (reading and testing every band key of 1M records: ~1.6x faster on 2 cores). Sees committed data only."""
    local, opened, lock = threading.local(), [], threading.Lock()

    def call(partition_id: str) -> T:
        if not hasattr(local, "conn"):
            local.conn = engine.connect()
            with lock:
                opened.append(local.conn)
        return fn(local.conn, partition_id)

    try:
        with ThreadPoolExecutor(threads) as pool:
            yield from pool.map(call, partition_ids)
    finally:
        for conn in opened:
            conn.close()


def _standing(conn: Connection, engine: Engine, run_id: str, bands: int, *, incremental: bool) -> Standing:
    """The standing rows of the run's partitions, partition by partition: each partition's band keys by
    binary COPY (`partition_keys`, 3x faster than streaming every row's keys through a join), less the
    lines its decisions drop (`_standing_rows`). Rows of partitions in temp table `deciding` are new.

    `incremental`: of the other (old) partitions, only the rows that share a band key with a new row,
    every row a candidate pair can contain: each old partition's keys are read once and tested against
    the new keys (`minhash.KeySet`), and only the hits are looked up in the decisions."""
    partitions = conn.execute(
        sa.text(
            "select rp.partition_id, dp.partition_id is not null from run_partitions rp"
            " left join deciding dp on dp.partition_id = rp.partition_id where rp.run_id = :run order by 1"
        ),
        {"run": run_id},
    ).all()
    deciding = [p for p, new in partitions if new]
    standing = dict(
        zip(
            deciding,
            map_partitions(engine, deciding, lambda c, p: _standing_rows(c, p, True, partition_keys(c, p, bands))),
        )
    )
    if incremental:
        new_keys = minhash.KeySet(
            np.concatenate([r["keys"] for r in standing.values()]) if standing else np.empty((0, bands), np.int64)
        )

    def old_rows(c: Connection, partition_id: str) -> np.ndarray:
        rows = partition_keys(c, partition_id, bands)
        if incremental:
            rows = rows[new_keys.contains(rows["keys"]).any(axis=1)] if len(new_keys) else rows[:0]
        return _standing_rows(c, partition_id, False, rows)

    old = [p for p, new in partitions if not new]
    standing.update(zip(old, map_partitions(engine, old, old_rows)))
    names, parts, lines, keys, new = [], [], [], [], []
    for partition_id, is_new in partitions:
        rows = standing.pop(partition_id)
        if not len(rows):
            continue
        parts.append(np.full(len(rows), len(names), dtype=np.int32))
        names.append(partition_id)
        lines.append(rows["line_no"].astype(np.int64))
        keys.append(np.ascontiguousarray(rows["keys"], dtype=np.int64))
        new.append(np.full(len(rows), is_new, dtype=bool))
    if not names:
        return _nothing_standing(bands)
    return Standing(names, np.concatenate(parts), np.concatenate(lines), np.concatenate(keys), np.concatenate(new))


def partition_keys(conn: Connection, partition_id: str, bands: int) -> np.ndarray:
    """(line_no, keys) of every row the partition has in `lsh_keys`, as a numpy record array straight from
    COPY's binary format: rows of fixed width (two columns, an int8 and `bands` x 8 bytes), so no Python
    object per row and no hex encoding of the bytea on either side."""
    row = np.dtype(
        [("columns", ">i2"), ("line_size", ">i4"), ("line_no", ">i8"), ("keys_size", ">i4"), ("keys", "<i8", (bands,))]
    )  # keys as stored: little-endian
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        out = io.BytesIO()
        cursor.copy_expert(
            cursor.mogrify(
                "copy (select line_no, keys from lsh_keys where partition_id = %s) to stdout (format binary)",
                (partition_id,),
            ).decode(),
            out,
        )
    finally:
        cursor.close()
    data = out.getbuffer()
    start = 19 + int.from_bytes(data[15:19], "big")  # signature (11 bytes), flags, header extension length
    body = data[start:-2]  # the last 2 bytes: the -1 trailer
    rows = np.frombuffer(body, dtype=row)
    if len(rows) and (rows["keys_size"] != bands * 8).any():
        raise ValueError(f"lsh_keys of partition {partition_id} do not hold {bands} bands: rebuild them")
    return rows


def _nothing_standing(bands: int) -> Standing:
    return Standing([], np.empty(0, np.int32), np.empty(0, np.int64), np.empty((0, bands), np.int64), np.empty(0, bool))


def _candidates(standing: Standing) -> np.ndarray:
    """Pairs [i, j] (i < j, standing rows) sharing a band key, with at least one new row."""
    new_rows, old_rows = np.flatnonzero(standing.new), np.flatnonzero(~standing.new)
    found = minhash.candidate_pairs(standing.keys[new_rows], standing.keys[old_rows] if len(old_rows) else None)
    pairs = np.concatenate(
        [new_rows[found.within], np.stack([new_rows[found.across[:, 0]], old_rows[found.across[:, 1]]], axis=1)]
    )
    return np.sort(pairs, axis=1)


def _details(conn: Connection, standing: Standing, rows: np.ndarray) -> list:
    """(record_id, source, total_chars, instruction text) of the given standing rows, in order."""
    conn.execute(sa.text("create temp table wanted (n int, partition_id text, line_no bigint) on commit drop"))
    copier = Copier(conn.connection.dbapi_connection.cursor())
    table = CopyTable(copier, "wanted", ("n", "partition_id", "line_no"), BATCH)
    names = [text_field(name) for name in standing.partitions]
    try:
        for n, i in enumerate(rows.tolist()):
            table.add(b"%d" % n, names[standing.part[i]], b"%d" % standing.line[i])
        table.flush()
    finally:
        copier.close()
    return conn.execute(
        sa.text(
            f"select r.record_id, r.source, r.total_chars, {INSTRUCTION_SQL} from wanted w"
            " join records r using (partition_id, line_no) order by w.n"
        )
    ).all()


class NearDedupStage(DatasetStage):
    """Near-duplicates among the run's standing records (or only the new ones), by MinHash LSH."""

    ledger = Stage.NEAR_DEDUP

    def settings(self) -> object:
        return [self.recipe.near_dedup, self.recipe.priorities, {"decision": DECISION_VERSION}]

    def upstream(self) -> list[str]:
        return [*decided_before(self.ledger), KEY_STAGE]  # new band keys of a partition mean a full pass

    def prepare(self) -> dict:
        with self.engine.connect() as conn:
            partitions = (
                conn.execute(sa.text("select partition_id from run_partitions where run_id = :r"), {"r": self.run_id})
                .scalars()
                .all()
            )
        return {
            "keys_computed_for_partitions": sum(
                store_keys(self.engine, self.recipe, self.run_id, p) for p in partitions
            )
        }

    def decide(self, conn: Connection, scope: Scope) -> Outcome:
        settings, recipe = self.recipe.near_dedup, self.recipe
        # nothing new (a retry, or a nightly run without new files): nothing to read or decide
        if not scope.new:
            standing = _nothing_standing(settings.bands)
        else:
            standing = _standing(conn, self.engine, self.run_id, settings.bands, incremental=not scope.full)
        pairs = _candidates(standing)
        involved = np.unique(pairs)
        outcome = Outcome(
            decided=int(standing.new.sum()), numbers={"standing": len(standing.line), "candidates": len(pairs)}
        )
        if not len(involved):
            return outcome
        local = np.searchsorted(involved, pairs)  # pairs over the involved rows only
        details = _details(conn, standing, involved)
        judge = minhash.PairJudge([d[3] for d in details], settings)
        confirmed, estimates = judge.confirm(local)
        accepted = ~standing.new[involved]
        members = [
            minhash.Member(record_id, recipe.priority(source), total, bool(old))
            for (record_id, source, total, _), old in zip(details, accepted)
        ]
        for n, duplicate in enumerate(minhash.representatives(members, confirmed, estimates, judge.similar)):
            if duplicate is not None:
                i = involved[n]
                outcome.decisions.append(
                    Decision(
                        standing.partitions[standing.part[i]],
                        int(standing.line[i]),
                        Drop.NEAR_DUPLICATE.value,
                        score=duplicate.jaccard,
                        duplicate_of=members[duplicate.row].record_id,
                    )
                )
        return outcome


def near_dedup(engine: Engine, recipe: Recipe, run_id: str) -> StageResult:
    """Decide near-duplicates among the run's standing records (or only the new ones)."""
    result = NearDedupStage(engine, recipe, run_id).run()
    log.info("near dedup of run %s: %s", run_id, result.as_dict())
    return result
