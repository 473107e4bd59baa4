"""The near-duplicate stage: MinHash LSH over the instructions still standing after exact dedup.

1. Band keys per record line are computed once per partition (and settings) and kept in `lsh_keys`.
2. Candidates: records standing in the run's dataset (no earlier stage dropped them) that share a band
   key, found with numpy over every standing record's keys, so new records meet old ones.
3. Signatures are recomputed only for candidate rows (same settings give the same signatures), and a
   pair is confirmed by estimated Jaccard and the essential-word guard (`neardup.confirm_pairs`), then
   re-checked without template boilerplate (shingles shared by many candidates: `without_boilerplate`).
4. Clusters keep one record by the recipe's rule (source priority, then the longest conversation, then
   the smallest id); the others are ledgered `near_duplicate` with the kept id and the Jaccard estimate.

Memory grows with the standing records (bands × 8 bytes each: 256 B at the defaults, so ~0.3 GB at a
million); the decisions for the whole dataset are replaced in one transaction.
"""
from __future__ import annotations

import logging

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from . import neardup
from .config import Recipe
from .conversation import USER
from .reasons import Drop, Stage, Verdict
from .stages import complete, completed, fingerprint, insert_decisions

log = logging.getLogger(__name__)

BATCH = 5_000
KEY_STAGE = Stage.NEAR_DEDUP  # stage_completions row for a partition's band keys
EARLIER = [Stage.RULES.value, Stage.DECONTAM.value, Stage.DEDUP.value]


def instruction_text(conversation: list[dict]) -> str:
    return "\n".join(t["content"] for t in conversation if t["role"] == USER)


def _store_keys(engine: Engine, recipe: Recipe, run_id: str, partition_id: str) -> bool:
    """Band keys for every record of the partition, unless already stored for the same input; True if computed."""
    settings = recipe.near_dedup
    with engine.connect() as conn:
        print_ = fingerprint(conn, partition_id, settings.index_fingerprint)
        if completed(conn, partition_id, KEY_STAGE, print_) is not None:
            return False
        rows = conn.execute(sa.text("select line_no, conversation from records where partition_id = :p order by line_no"),
                            {"p": partition_id}).all()
    with engine.begin() as conn:
        conn.execute(sa.text("delete from lsh_keys where partition_id = :p"), {"p": partition_id})
        for start in range(0, len(rows), BATCH):
            chunk = rows[start:start + BATCH]
            keys = neardup.band_keys(neardup.signatures([instruction_text(c) for _, c in chunk], settings), settings)
            conn.execute(sa.text("insert into lsh_keys (partition_id, line_no, keys) values (:p, :l, :k)"),
                         [{"p": partition_id, "l": line_no, "k": k} for (line_no, _), k in zip(chunk, keys.tolist())])
        complete(conn, partition_id, KEY_STAGE, print_, run_id, {"records": len(rows)})
    return True


def _standing(conn: Connection, run_id: str) -> list:
    """(partition_id, line_no, record_id, source, total_chars, keys) of records no earlier stage dropped."""
    return conn.execute(sa.text("""
        select r.partition_id, r.line_no, r.record_id, r.source, r.total_chars, k.keys
        from records r
        join run_partitions rp on rp.partition_id = r.partition_id and rp.run_id = :run
        join lsh_keys k on k.partition_id = r.partition_id and k.line_no = r.line_no
        where not exists (select 1 from decisions d where d.partition_id = r.partition_id
                          and d.line_no = r.line_no and d.verdict = 'dropped' and d.stage = any(:earlier))
        order by r.partition_id, r.line_no"""), {"run": run_id, "earlier": EARLIER}).all()


def _texts(conn: Connection, rows: list) -> list[str]:
    """Instruction texts of the given (partition_id, line_no, ...) rows, in order."""
    conn.execute(sa.text("create temp table wanted (n int, partition_id text, line_no bigint) on commit drop"))
    conn.execute(sa.text("insert into wanted values (:n, :p, :l)"),
                 [{"n": n, "p": row[0], "l": row[1]} for n, row in enumerate(rows)])
    found = conn.execute(sa.text("select w.n, r.conversation from wanted w join records r using (partition_id, line_no)"
                                 " order by w.n")).all()
    return [instruction_text(conversation) for _, conversation in found]


def near_dedup(engine: Engine, recipe: Recipe, run_id: str) -> dict[str, int]:
    """Decide near-duplicates among the run's standing records; returns counts."""
    settings = recipe.near_dedup
    with engine.connect() as conn:
        partitions = conn.execute(sa.text("select partition_id from run_partitions where run_id = :r"), {"r": run_id}).scalars().all()
    computed = sum(_store_keys(engine, recipe, run_id, p) for p in partitions)

    drops: list[dict] = []
    with engine.begin() as conn:
        rows = _standing(conn, run_id)
        if rows:
            keys = np.array([row[5] for row in rows], dtype=np.int64)
            pairs = neardup.candidate_pairs(keys).within
            involved = np.unique(pairs)
            local = np.searchsorted(involved, pairs)         # pairs over the involved rows only
            texts = _texts(conn, [rows[i] for i in involved])
            sigs = neardup.signatures(texts, settings)
            confirmed, estimates = neardup.confirm_pairs(local, sigs, texts, settings)
            confirmed, estimates = neardup.without_boilerplate(
                confirmed, estimates, texts, settings, neardup.boilerplate_shingles(texts, settings))
            cluster = neardup.clusters(len(involved), confirmed)
            members = [neardup.Member(rows[i][2], recipe.priority(rows[i][3]), rows[i][4]) for i in involved]
            kept_ids = neardup.duplicate_of(cluster, members)
            best = {}  # row -> highest estimate of a confirmed pair it is in, as the ledger's score
            for (a, b), e in zip(confirmed.tolist(), estimates.tolist()):
                best[a], best[b] = max(best.get(a, 0.0), e), max(best.get(b, 0.0), e)
            for n, kept_id in enumerate(kept_ids):
                if kept_id is not None:
                    row = rows[involved[n]]
                    drops.append({"partition_id": row[0], "line_no": row[1], "stage": Stage.NEAR_DEDUP.value,
                                  "verdict": Verdict.DROPPED.value, "reason": Drop.NEAR_DUPLICATE.value,
                                  "score": best.get(n), "detail": None, "duplicate_of": kept_id, "run_id": run_id})
        conn.execute(sa.text("delete from decisions d using run_partitions rp where rp.run_id = :run"
                             " and d.partition_id = rp.partition_id and d.stage = :stage"),
                     {"run": run_id, "stage": Stage.NEAR_DEDUP.value})
        insert_decisions(conn, drops)
    result = {"standing": len(rows), "keys_computed_for_partitions": computed, Drop.NEAR_DUPLICATE.value: len(drops)}
    log.info("near dedup of run %s: %s", run_id, result)
    return result
