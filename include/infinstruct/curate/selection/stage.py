"""The select_records stage: a balanced foundational set under per-domain quotas (Phase 1 selection).

Over the run's standing records (not dropped by any earlier stage; each scored by score_records), per
domain of the classifier (`quotas.py` has the quota arithmetic):

1. **Rank.** quality, difficulty and, with a DSIR target, the importance percentile (`ImportanceModel`
   fitted on the target file vs the domain's standing instructions; Gumbel key seeded per record id).
2. **Continue.** The records selected before (`selection`, per dataset, in acceptance order) that still
   stand keep their place: the first `quota` of them stay, the rest are let go (the quota shrank).
3. **Fill.** The other records of the domain are walked by rank score (ties: record id) and accepted
   DEITA-style while their cosine to the selected set (the kept ones plus those accepted so far) is below
   `diversity_threshold`, until the quota is full (`diversity.greedy_select`; vectors from
   `embedding_cache`, read in walk order only as far as the walk goes). The kept ones are searched in the
   domain's persistent index (below), those accepted in this run exactly, in memory.
4. **Fit.** A `shares` domain that cannot fill its quota scales every `shares` quota down together and
   the others are cut to the prefix of their acceptance order (the mix holds).

A change of what ranks (scoring, domains, embedding, targets, DSIR, rank weights, threshold, seed) starts
the selection over; quotas, size, tolerance and the weak-domain report do not: they only move the cut.

The selected set's index (`vector_index.StoredIndex`, as semantic dedup's accepted set; `selection.index`):
with pgvector, one HNSW table per dataset, embedding model, ranking fingerprint and domain, kept in step
with `selection` in the same transaction: a run deletes the records it no longer keeps (let go, no longer
standing) and adds only those it newly accepted (a new table is bulk-loaded, then indexed); a new
fingerprint drops the dataset's tables; a table whose size disagrees with the kept records (e.g. after
runs with `index: exact`) is rebuilt from them. HNSW is approximate: a kept record nearer than the
threshold can be missed (bench/RESULTS.md measures how often this changes a decision). Without pgvector
(or `index: exact`) the kept records' vectors are read from embedding_cache and searched exactly: the
same decisions as one exact search over the whole selected set.

Summary (selection_state.result, the manifest's composition.selection): counts per domain, the DSIR shift,
and the diversity of the selection per domain and overall: mean and 95th-percentile nearest-neighbour
cosine over a seeded sample of at most DIVERSITY_SAMPLE selected records (`sampled` when smaller than n).
The same pool, recipe and seed give the same selection; an added file changes it only by what its
records win and the quotas require.

Ledger: every standing record not selected gets a decision, stage `select`, reason `not_selected:<domain>`,
score = its rank score, and detail ``rank R of N in <domain> (quota Q): <why>``, where R is its place in
the domain's walk order among its N records and why is ``quota full`` (never compared),
``too similar (cosine C)`` (duplicate_of: the selected record it resembles) or ``quota shrank`` (selected
before). The stage replaces all of its decisions on every run, in one transaction.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from infinstruct.config import Recipe
from infinstruct.curate.decontam.ngrams import BenchmarkError, BenchmarkSpec, iter_items
from infinstruct.curate.scoring.stage import keys
from infinstruct.curate.selection.diversity import (
    LayeredIndex,
    Outcome,
    diversity_report,
    greedy_select,
    sample_positions,
    walk_order,
)
from infinstruct.curate.selection.importance import DomainImportance
from infinstruct.curate.selection.quotas import (
    SelectionError,
    SelectionSettings,
    fit_quotas,
    load_boosts,
    plan_quotas,
    planned_shares,
)
from infinstruct.errors import permanent_os_error
from infinstruct.record.conversation import instruction_sql
from infinstruct.record.reasons import Stage, Verdict, not_selected_reason
from infinstruct.stages import decided_before
from infinstruct.store.embedding_cache import read_vectors
from infinstruct.store.ledger import standing_sql
from infinstruct.store.pgcopy import Copier, CopyTable, text_field
from infinstruct.store.stage_state import DECISION_COLUMNS, forget_decisions, stream
from infinstruct.store.vector_index import StoredIndex, index_kind
from infinstruct.store.vector_probe import vector_support

log = logging.getLogger(__name__)

CHUNK = 20_000  # candidates whose vectors are read per step of the walk
DIVERSITY_SAMPLE = 2_000  # selected records per diversity report (NN cosines cost sample^2 x dim)

_POOL = sa.text(
    """
create temp table pool on commit drop as
select r.partition_id, r.line_no, r.record_id, s.domain, s.quality, s.difficulty,
       (s.record_id is null or s.scores_key <> :sk or s.domain_key <> :dk) as unscored
from records r
join run_partitions rp on rp.partition_id = r.partition_id and rp.run_id = :run
left join record_scores s on s.record_id = r.record_id
where """
    + standing_sql("r")
    + """
"""
)


class Domain:
    """One domain's candidates (columns in walk order once ranked) and its outcome."""

    def __init__(self, name: str, ids: list[str], quality: np.ndarray, difficulty: np.ndarray):
        self.name, self.ids, self.quality, self.difficulty = name, ids, quality, difficulty
        self.rank = np.zeros(len(ids))
        self.kept: list[str] = []  # selected before, still in the quota
        self.let_go: list[str] = []  # selected before, over the quota
        self.accepted: list[str] = []  # newly accepted, in order
        self.why: dict[str, tuple[str, str | None]] = {}
        self.dsir: DomainImportance | None = None  # when ranked toward a target
        self.index: StoredIndex | None = None  # the kept records, once opened (quota domains)
        self.walked: LayeredIndex | None = None  # + this run's accepted vectors, in acceptance order

    @property
    def selected(self) -> list[str]:
        return self.kept + self.accepted


def _fingerprint(settings: SelectionSettings) -> str:
    """Hash of what ranks candidates, target files' content included."""
    digests = {}
    for domain, target in settings.targets.items():
        try:
            digests[domain] = hashlib.sha256(Path(target.path).read_bytes()).hexdigest()
        except OSError as exc:
            if not permanent_os_error(exc):
                raise  # EIO, a stale NFS handle: the task's retry may read it
            raise SelectionError(f"selection.targets.{domain}: cannot read {target.path!r}: {exc.strerror}") from None
    return hashlib.sha256(json.dumps([settings.ranking(), digests], sort_keys=True).encode()).hexdigest()[:24]


def target_texts(settings: SelectionSettings, domain: str) -> list[str]:
    spec = settings.targets[domain]
    try:
        return [
            item.text
            for item in iter_items(
                BenchmarkSpec(name=f"target_{domain}", path=spec.path, fields=spec.fields, split_values=False)
            )
        ]
    except BenchmarkError as exc:
        raise SelectionError(f"selection.targets.{domain}: {exc}") from None


def _instructions(conn: Connection, domain: str) -> list[str]:
    """The instructions (user turns joined by a newline) of the domain's pool records, in record-id order.
    Extracted by the server: parsing the JSON conversations in Python cost more than the rest of the step."""
    return (
        conn.execute(
            sa.text(
                f"select distinct on (p.record_id) {instruction_sql('r')}"
                " from pool p join records r on r.partition_id = p.partition_id and r.line_no = p.line_no"
                " where p.domain = :d order by p.record_id"
            ),
            {"d": domain},
            execution_options=stream(50_000),
        )
        .scalars()
        .all()
    )


def rank(conn: Connection, settings: SelectionSettings, domain: Domain) -> None:
    """Rank scores (module docstring, step 1); with a target, the domain's DSIR features for the shift report."""
    w = settings.rank
    total = w.quality * domain.quality + w.difficulty * domain.difficulty
    weight = w.quality + w.difficulty
    if domain.name in settings.targets and w.importance > 0 and domain.ids:
        texts = [t or "" for t in _instructions(conn, domain.name)]
        if len(texts) != len(domain.ids):
            raise SelectionError(f"domain {domain.name}: {len(domain.ids)} records but {len(texts)} instructions")
        domain.dsir = DomainImportance(texts, target_texts(settings, domain.name), settings.dsir)
        total = total + w.importance * domain.dsir.percentiles(domain.ids, settings.seed)
        weight += w.importance
    domain.rank = np.round(total / weight, 6) if weight > 0 else np.zeros(len(domain.ids))


def _vectors(conn: Connection, model: str, ids: list[str]) -> np.ndarray:
    found = read_vectors(conn, model, ids)
    missing = [i for i in ids if i not in found]
    if missing:
        raise SelectionError(
            f"{len(missing)} candidates have no cached vector under {model!r} (e.g. {missing[0]}): "
            "run score_records for the run's partitions first"
        )
    return np.stack([found[i] for i in ids]).astype(np.float32) if ids else np.empty((0, 0), np.float32)


class SelectedIndexes:
    """The persistent index of each quota domain's selected records (module docstring), for one run."""

    def __init__(
        self,
        conn: Connection,
        dataset: str,
        settings: SelectionSettings,
        fingerprint: str,
        *,
        fresh: bool,
        domains: list[str],
    ):
        self.conn, self.model = conn, settings.embedding.fingerprint
        self.kind = index_kind(conn, settings.index, "selection.index")
        self.tables = {d: _table(dataset, self.model, fingerprint, d) for d in domains}
        # what a fresh pass, the exact kind or another fingerprint would leave stale
        keep = set() if fresh or self.kind == "exact" else set(self.tables.values())
        drop_tables(conn, dataset, keep)

    def open(self, domain: Domain, previous: list[str]) -> StoredIndex:
        """The domain's index holding exactly its kept records (let-go and fallen ones deleted)."""
        if domain.index is not None:
            return domain.index
        index = domain.index = StoredIndex(self.conn, self.tables[domain.name], self.kind)
        if self.kind == "exact":
            if domain.kept:
                index.load(domain.kept, _vectors(self.conn, self.model, domain.kept))
            return index
        kept = set(domain.kept)
        index.remove([rid for rid in previous if rid not in kept])
        if len(index) != len(kept):  # missing or out of step: rebuild from the kept records
            index.reset()
            if domain.kept:
                index.add(domain.kept, _vectors(self.conn, self.model, domain.kept))
        return index

    def persist(self, domain: Domain, previous: list[str]) -> None:
        """After the fit: the table holds the domain's final selection (kept ones cut by the fit go)."""
        if self.kind != "pgvector":
            return
        index = self.open(domain, previous)
        chosen = set(domain.kept)
        index.remove([rid for rid in previous if rid not in chosen])
        if domain.accepted:
            index.add(domain.accepted, domain.walked.accepted.vectors[: len(domain.accepted)])


def _table(dataset: str, model: str, fingerprint: str, domain: str) -> str:
    return _table_prefix(dataset) + hashlib.sha256(f"{model}\0{fingerprint}\0{domain}".encode()).hexdigest()[:12]


def _table_prefix(dataset: str) -> str:
    return "selection_hnsw_" + hashlib.sha256(dataset.encode()).hexdigest()[:12] + "_"


def drop_tables(conn: Connection, dataset: str, keep: set[str] = frozenset()) -> None:
    """Drop the dataset's selection index tables except `keep`."""
    names = (
        conn.execute(
            sa.text(
                "select tablename from pg_tables where schemaname = current_schema() and starts_with(tablename, :p)"
            ),
            {"p": _table_prefix(dataset)},
        )
        .scalars()
        .all()
    )
    for name in names:
        if name not in keep:
            conn.execute(sa.text(f'drop table "{name}"'))


def fill(
    conn: Connection,
    settings: SelectionSettings,
    domain: Domain,
    previous: list[str],
    quota: int,
    indexes: SelectedIndexes,
) -> None:
    """Steps 2 and 3 of the module docstring for one domain."""
    standing = set(domain.ids)
    before = [rid for rid in previous if rid in standing]
    domain.kept, domain.let_go = before[:quota], before[quota:]
    taken = set(before)
    candidates = [i for i, rid in enumerate(domain.ids) if rid not in taken]
    need = quota - len(domain.kept)
    if need <= 0 or not candidates:
        return
    ids = [domain.ids[i] for i in candidates]
    scores = domain.rank[candidates]
    order = walk_order(ids, scores)
    model = settings.embedding.fingerprint
    stored = indexes.open(domain, previous)
    start = 0
    while need > 0 and start < len(order):
        # vectors are read only as far as the walk goes: a little more than what the quota still needs
        chunk = order[start : start + min(CHUNK, max(1024, need + need // 4))]
        start += len(chunk)
        chunk_ids = [ids[i] for i in chunk]
        vectors = _vectors(conn, model, chunk_ids)
        if domain.walked is None:
            domain.walked = LayeredIndex(stored, vectors.shape[1])
        walk = greedy_select(
            chunk_ids, scores[chunk], vectors, settings.diversity_threshold, need, existing=domain.walked
        )
        for decision in walk.decisions():
            if decision.outcome == Outcome.SELECTED:
                domain.accepted.append(decision.record_id)
            elif decision.outcome == Outcome.TOO_SIMILAR:
                domain.why[decision.record_id] = (
                    f"too similar (cosine {decision.max_cosine:.4f})",
                    decision.similar_to,
                )
        need = quota - len(domain.selected)


def _cut(domain: Domain, quota: int) -> None:
    """Keep the first `quota` of the domain's acceptance order (fit, step 4)."""
    if len(domain.selected) <= quota:
        return
    over = domain.selected[quota:]
    domain.accepted = domain.accepted[: max(0, quota - len(domain.kept))]
    domain.let_go += [rid for rid in domain.kept[quota:]]
    domain.kept = domain.kept[:quota]
    for rid in over:
        domain.why.setdefault(rid, ("quota full", None))


def select_records(engine: Engine, recipe: Recipe, run_id: str) -> dict[str, Any]:
    """Select the run's foundational set (module docstring); returns the summary also kept for the gate."""
    settings = recipe.selection
    if settings is None:
        return _disabled(engine, run_id)
    names = list(settings.domains.resolved())
    boosts = load_boosts(settings.weak_domains, names)
    scores_key, domain_key = keys(settings)
    print_ = _fingerprint(settings)
    if settings.index != "exact":
        vector_support(engine)  # probed (once per server start) outside the stage's transaction
    with engine.begin() as conn:
        dataset = conn.execute(sa.text("select dataset from runs where run_id = :r"), {"r": run_id}).scalar_one()
        conn.execute(
            _POOL, {"run": run_id, "earlier": decided_before(Stage.SELECT), "sk": scores_key, "dk": domain_key}
        )
        unscored = conn.execute(sa.text("select count(*) from pool where unscored")).scalar_one()
        if unscored:
            raise SelectionError(f"{unscored} standing records have no current scores: run score_records first")
        rows = conn.execute(
            sa.text(
                "select distinct on (record_id) record_id, domain, quality, difficulty from pool order by record_id"
            )
        ).all()
        columns: dict[str, list] = defaultdict(list)
        for rid, domain, quality, difficulty in rows:
            columns[domain].append((rid, quality, difficulty))
        state = conn.execute(
            sa.text("select fingerprint from selection_state where dataset = :d"), {"d": dataset}
        ).scalar()
        full = state != print_
        previous: dict[str, list[str]] = defaultdict(list)
        if not full:
            for rid, domain in conn.execute(
                sa.text("select record_id, domain from selection where dataset = :d order by domain, position"),
                {"d": dataset},
            ):
                previous[domain].append(rid)
        domains = {
            d: Domain(
                d,
                [r[0] for r in columns[d]],
                np.array([r[1] for r in columns[d]], dtype=np.float64),
                np.array([r[2] for r in columns[d]], dtype=np.float64),
            )
            for d in names
        }
        available = {d: len(dom.ids) for d, dom in domains.items()}
        requested = plan_quotas(settings, available, boosts)
        indexes = SelectedIndexes(conn, dataset, settings, print_, fresh=full, domains=list(requested))
        for d in names:
            if d in settings.keep_all:  # all of it, those selected before first
                dom, standing = domains[d], set(domains[d].ids)
                dom.kept = [rid for rid in previous[d] if rid in standing]
                dom.accepted = sorted(standing.difference(dom.kept))
                continue
            rank(conn, settings, domains[d])
            fill(conn, settings, domains[d], previous[d], requested[d], indexes)
        quotas = fit_quotas(settings, requested, {d: len(domains[d].selected) for d in requested})
        for d, q in quotas.items():
            _cut(domains[d], q)
            indexes.persist(domains[d], previous[d])
        diversity = _diversity(conn, settings, domains)
        result = _write(conn, settings, dataset, run_id, domains, quotas, full, boosts, requested)
        result.update(index=indexes.kind, diversity=diversity.pop(None))
        for d, report in diversity.items():
            result["domains"][d]["diversity"] = report
        _save_state(conn, dataset, print_, run_id, result)
    log.info("select_records of run %s: %s", run_id, {k: v for k, v in result.items() if k != "domains"})
    return result


def _write(
    conn: Connection,
    settings: SelectionSettings,
    dataset: str,
    run_id: str,
    domains: dict[str, Domain],
    quotas: dict[str, int],
    full: bool,
    boosts: dict,
    requested: dict[str, int],
) -> dict[str, Any]:
    """Persist the selection, its ledger rows and its summary (in the caller's transaction)."""
    since = dict(
        conn.execute(sa.text("select record_id, run_id from selection where dataset = :d"), {"d": dataset}).all()
    )
    conn.execute(sa.text("delete from selection where dataset = :d"), {"d": dataset})
    conn.execute(
        sa.text(
            "delete from decisions d using run_partitions rp where rp.run_id = :r"
            " and d.partition_id = rp.partition_id and d.stage = :s"
        ),
        {"r": run_id, "s": Stage.SELECT.value},
    )
    # read before COPY starts: the copier thread and a server-side cursor must not share the connection
    lines = conn.execute(sa.text("select partition_id, line_no, record_id from pool")).all()
    # COPY lines, built as bytes: a million rows through generic per-value formatting took a minute
    tail = b"\t" + text_field(run_id) + b"\n"
    verdicts: dict[str, bytes] = {}  # record id -> the decision's columns after (partition_id, line_no)
    copier = Copier(conn.connection.dbapi_connection.cursor())
    chosen_table = CopyTable(
        copier, "selection", ("dataset", "record_id", "domain", "position", "rank_score", "run_id"), 50_000
    )
    try:
        for d, dom in domains.items():
            order = walk_order(dom.ids, dom.rank) if dom.ids else []
            place = np.empty(len(dom.ids), dtype=np.int64)
            place[order] = np.arange(1, len(dom.ids) + 1)
            row = {rid: i for i, rid in enumerate(dom.ids)}
            for position, rid in enumerate(dom.selected, 1):
                chosen_table.add(
                    text_field(dataset),
                    rid.encode(),
                    text_field(d),
                    b"%d" % position,
                    repr(float(dom.rank[row[rid]])).encode(),
                    text_field(since.get(rid, run_id) if not full else run_id),
                )
            for rid in dom.let_go:
                dom.why[rid] = ("quota shrank", None)
            chosen = set(dom.selected)
            head = (
                b"\t".join(
                    [Stage.SELECT.value.encode(), Verdict.DROPPED.value.encode(), text_field(not_selected_reason(d))]
                )
                + b"\t"
            )
            quota = quotas.get(d, len(dom.ids))
            for i, rid in enumerate(dom.ids):
                if rid not in chosen:
                    why, near = dom.why.get(rid, ("quota full", None))
                    detail = f"rank {place[i]} of {len(dom.ids)} in {d} (quota {quota}): {why}"
                    # columns: stage, verdict, reason, score, detail, duplicate_of, run_id
                    verdicts[rid] = (
                        head
                        + repr(float(dom.rank[i])).encode()
                        + b"\t"
                        + text_field(detail)
                        + b"\t"
                        + (near.encode() if near else b"\\N")
                        + tail
                    )
        chosen_table.flush()
        decided = CopyTable(copier, "decisions", DECISION_COLUMNS, 50_000)
        for partition_id, line_no, rid in lines:
            if rid in verdicts:
                decided.lines.append(text_field(partition_id) + b"\t%d\t" % line_no + verdicts[rid])
                if len(decided.lines) >= decided.batch_rows:
                    decided.flush()
        decided.flush()
    except BaseException:
        copier.close(check=False)
        raise
    copier.close()
    return _summary(conn, settings, domains, quotas, full, boosts, requested, decided.rows)


def _save_state(conn: Connection, dataset: str, fingerprint: str, run_id: str, result: dict[str, Any]) -> None:
    conn.execute(
        sa.text(
            "insert into selection_state (dataset, fingerprint, run_id, result) values (:d, :f, :r, cast(:res as jsonb))"
            " on conflict (dataset) do update set fingerprint = excluded.fingerprint, run_id = excluded.run_id,"
            " result = excluded.result, updated_at = now()"
        ),
        {"d": dataset, "f": fingerprint, "r": run_id, "res": json.dumps(result)},
    )


def _diversity(conn: Connection, settings: SelectionSettings, domains: dict[str, Domain]) -> dict[str | None, dict]:
    """Per domain and overall (key None): NN cosines inside the selection, over seeded samples of at most
    DIVERSITY_SAMPLE records. Vectors the walk holds are reused; the others (kept records under pgvector,
    keep_all domains) are read from embedding_cache, at most one sample's worth per domain."""
    samples: dict[str | None, list[str]] = {}
    for d, dom in domains.items():
        samples[d] = [dom.selected[i] for i in sample_positions(len(dom.selected), DIVERSITY_SAMPLE, settings.seed)]
    everything = [rid for dom in domains.values() for rid in dom.selected]
    samples[None] = [everything[i] for i in sample_positions(len(everything), DIVERSITY_SAMPLE, settings.seed)]
    held: dict[str, np.ndarray] = {}
    wanted = {rid for ids in samples.values() for rid in ids}
    for dom in domains.values():
        for memory in (
            dom.index.memory if dom.index is not None else None,
            dom.walked.accepted if dom.walked is not None else None,
        ):
            if memory is not None:
                held.update((rid, memory.vectors[i]) for i, rid in enumerate(memory.ids) if rid in wanted)
    missing = sorted(wanted.difference(held))
    if missing:
        held.update(zip(missing, _vectors(conn, settings.embedding.fingerprint, missing)))
    sizes = {d: len(dom.selected) for d, dom in domains.items()}
    sizes[None] = len(everything)
    out = {}
    for key, ids in samples.items():
        report = diversity_report(
            np.stack([held[rid] for rid in ids]) if ids else np.empty((0, 1), np.float32), of=sizes[key]
        )
        out[key] = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in report.items()}
    return out


def _summary(conn, settings, domains, quotas, full, boosts, requested, not_selected) -> dict[str, Any]:
    planned = planned_shares(quotas)
    in_quota = sum(len(domains[d].selected) for d in quotas)
    pool_quality = np.concatenate([dom.quality for dom in domains.values()]) if domains else np.empty(0)
    out: dict[str, Any] = {
        "full_pass": full,
        "pool": sum(len(dom.ids) for dom in domains.values()),
        "selected": sum(len(dom.selected) for dom in domains.values()),
        "not_selected": not_selected,
        "pool_mean_quality": round(float(pool_quality.mean()), 6) if len(pool_quality) else None,
        "tolerance": settings.tolerance,
        "boosts": {d: b.model_dump() for d, b in boosts.items()},
        "domains": {},
    }
    for d, dom in domains.items():
        entry = {
            "available": len(dom.ids),
            "selected": len(dom.selected),
            "kept_from_before": len(dom.kept),
            "new": len(dom.accepted),
            "let_go": len(dom.let_go),
        }
        if d in quotas:
            entry.update(
                requested=requested[d],
                quota=quotas[d],
                planned_share=round(planned[d], 6),
                share=round(len(dom.selected) / in_quota, 6) if in_quota else 0.0,
            )
        else:
            entry["keep_all"] = True
        if dom.dsir is not None:
            row = {rid: i for i, rid in enumerate(dom.ids)}
            entry["dsir"] = dom.dsir.shift([row[rid] for rid in dom.selected], settings.seed)
        out["domains"][d] = entry
    return out


def _disabled(engine: Engine, run_id: str) -> dict[str, Any]:
    """No selection in the recipe: no select decisions stand, and turning it on starts over."""
    with engine.begin() as conn:
        dataset = forget_decisions(conn, run_id, Stage.SELECT)
        conn.execute(sa.text("delete from selection where dataset = :d"), {"d": dataset})
        drop_tables(conn, dataset)
        conn.execute(sa.text("delete from selection_state where dataset = :d"), {"d": dataset})
    return {"disabled": True}
