"""How many released records still have a near-duplicate in the release: the release gate's LSH check.

The records to audit (those of the release parts the gate validates now: every part on a first release,
the new ones on a nightly release) are sampled down to `gates.near_duplicate_sample` (seeded by record
line, so the same release gives the same sample). Their stored LSH band keys (`lsh_keys`) are tested
against the band keys of every other released record, one partition at a time, and each candidate pair
is confirmed as near_deduplicate confirms it (MinHash Jaccard >= the recipe's threshold, `min_words`,
the essential-word guard, then without template boilerplate). The share of audited records with a
confirmed near-duplicate is what the gate bounds (`gates.max_near_duplicate_share`).

It re-derives pairs over the whole release instead of trusting the stage's own bookkeeping, so it sees
what an incremental pass could miss (a new record that meets an old one only through a band of keys the
pass never read) and what the stages after near-dedup never look at.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from infinstruct.config import Recipe
from infinstruct.curate.near_dedup import minhash
from infinstruct.curate.near_dedup.stage import INSTRUCTION_SQL, dropped_lines, map_partitions, partition_keys


@dataclass
class Audit:
    audited: int  # records of the audited parts, after sampling
    of: int  # records of the audited parts
    with_near_duplicate: int  # audited records with a confirmed near-duplicate in the release
    examples: list[list[str]] = field(default_factory=list)  # [record id, its near-duplicate's id], a few

    @property
    def share(self) -> float:
        return self.with_near_duplicate / self.audited if self.audited else 0.0

    def as_dict(self) -> dict:
        return {
            "audited": self.audited,
            "of": self.of,
            "with_near_duplicate": self.with_near_duplicate,
            "share": round(self.share, 6),
            "examples": self.examples,
        }


def _released(conn: Connection, partition_id: str, rows: np.ndarray) -> np.ndarray:
    """Those of the partition's `lsh_keys` rows (line_no, keys) whose record no stage dropped."""
    if not len(rows):
        return rows
    lines = rows["line_no"].astype(np.int64)
    return rows[~np.isin(lines, dropped_lines(conn, partition_id, lines))]


def _sample(partition_ids: list[str], lines: list[np.ndarray], size: int) -> list[np.ndarray]:
    """Per partition, a mask of the rows to audit: all of them up to `size` rows in all, else the `size`
    rows with the smallest hashes of (partition, line), so the same rows give the same sample."""
    if sum(len(x) for x in lines) <= size:
        return [np.ones(len(x), dtype=bool) for x in lines]
    ranks = [
        np.array(
            [int.from_bytes(hashlib.blake2b(f"{p}:{n}".encode(), digest_size=8).digest(), "big") for n in x.tolist()],
            dtype=np.uint64,
        )
        for p, x in zip(partition_ids, lines)
    ]
    cut = np.sort(np.concatenate(ranks))[size - 1]
    return [r <= cut for r in ranks]


def _texts(conn: Connection, rows: list[tuple[str, int]]) -> list[tuple[str, str]]:
    """(record id, instruction text) of (partition, line) rows, in order."""
    by_partition: dict[str, list[int]] = {}
    for partition_id, line in rows:
        by_partition.setdefault(partition_id, []).append(line)
    found = {}
    for partition_id, lines in by_partition.items():
        for line, record_id, text in conn.execute(
            sa.text(
                f"select r.line_no, r.record_id, {INSTRUCTION_SQL} from records r"
                " where r.partition_id = :p and r.line_no = any(:lines)"
            ),
            {"p": partition_id, "lines": lines},
        ):
            found[(partition_id, line)] = (record_id, text)
    return [found[row] for row in rows]


def audit(engine: Engine, recipe: Recipe, run_id: str, audited_partitions: list[str]) -> Audit:
    """Audit the released records of `audited_partitions` against the whole release (see the module docstring)."""
    settings, gates = recipe.near_dedup, recipe.gates
    bands = settings.bands
    with engine.connect() as conn:
        partitions = (
            conn.execute(sa.text("select partition_id from run_partitions where run_id = :r order by 1"), {"r": run_id})
            .scalars()
            .all()
        )
        audited_set = set(audited_partitions)
        mine = [p for p in partitions if p in audited_set]
        released = dict(
            zip(mine, map_partitions(engine, mine, lambda c, p: _released(c, p, partition_keys(c, p, bands))))
        )
        rows = list(released.values())
        of = sum(len(r) for r in rows)
        picked = _sample(mine, [r["line_no"] for r in rows], gates.near_duplicate_sample)
        rows = [r[keep] for r, keep in zip(rows, picked)]
        new_rows = [(p, int(n)) for p, r in zip(mine, rows) for n in r["line_no"].tolist()]
        new_keys = np.concatenate([r["keys"] for r in rows]) if rows else np.empty((0, bands), np.int64)
        if not len(new_rows):
            return Audit(0, of, 0)
        # every other released record that shares a band key with an audited one (audited partitions'
        # records outside the sample included); whether a record was dropped is asked only for those
        wanted = minhash.KeySet(new_keys)
        new_index = {row: i for i, row in enumerate(new_rows)}

        def hits(c: Connection, partition_id: str) -> np.ndarray:
            keys = released.get(partition_id)
            keys = keys if keys is not None else partition_keys(c, partition_id, bands)
            found = keys[wanted.contains(keys["keys"]).any(axis=1)]
            return found if partition_id in released else _released(c, partition_id, found)

        old_rows, old_keys = [], []
        for partition_id, found in zip(partitions, map_partitions(engine, partitions, hits)):
            for line, row_keys in zip(found["line_no"].tolist(), found["keys"]):
                if (partition_id, line) not in new_index:
                    old_rows.append((partition_id, line))
                    old_keys.append(row_keys)
        found = minhash.candidate_pairs(new_keys, np.array(old_keys) if old_keys else None)
        n = len(new_rows)
        pairs = np.concatenate([found.within, np.stack([found.across[:, 0], found.across[:, 1] + n], axis=1)])
        involved = np.unique(pairs)
        if not len(involved):
            return Audit(n, of, 0)
        all_rows = new_rows + old_rows
        details = _texts(conn, [all_rows[i] for i in involved.tolist()])
    texts = [text for _, text in details]
    local = np.searchsorted(involved, pairs)
    confirmed, _ = minhash.confirm(local, texts, settings)
    flagged: dict[int, int] = {}
    for a, b in confirmed.tolist():
        for x, y in ((a, b), (b, a)):
            if involved[x] < n:
                flagged.setdefault(x, y)
    examples = [[details[x][0], details[y][0]] for x, y in sorted(flagged.items())[:5]]
    return Audit(n, of, len(flagged), examples)
