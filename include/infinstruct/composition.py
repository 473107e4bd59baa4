"""What a release is made of: counts and shares per domain, per source and per language, before and after
selection (the release manifest's `composition`).

"before" is the standing pool (records no stage before selection dropped), "after" the released records.
The domain is `record_scores.domain` (`unscored` when the recipe has no selection); the language is the
rules stage's `record_language` (`und` when undetermined).
"""
from __future__ import annotations

from collections import Counter

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .reasons import Stage

DIMENSIONS = ("domain", "source", "language")

_COUNTS = sa.text("""
select coalesce(s.domain, 'unscored') as domain, r.source, coalesce(st.stats->>'record_language', 'und') as language,
       exists (select 1 from decisions d where d.partition_id = r.partition_id and d.line_no = r.line_no
               and d.verdict = 'dropped' and d.stage = :select) as not_selected,
       count(*) as n
from records r
join run_partitions rp on rp.partition_id = r.partition_id and rp.run_id = :run
left join record_scores s on s.record_id = r.record_id
left join record_stats st on st.record_id = r.record_id
where not exists (select 1 from decisions d where d.partition_id = r.partition_id and d.line_no = r.line_no
                  and d.verdict = 'dropped' and d.stage <> :select)
group by 1, 2, 3, 4
""")


def _shares(counter: Counter) -> dict[str, dict]:
    total = sum(counter.values())
    return {key: {"count": n, "share": round(n / total, 4) if total else 0.0}
            for key, n in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))}


def composition(conn: Connection, run_id: str) -> dict[str, dict]:
    """{"before": {...}, "after": {...}}, each with `total` and per dimension {value: {count, share}}; with a
    selection also `selection`, the summary select_records wrote for this run."""
    before = {dim: Counter() for dim in DIMENSIONS}
    after = {dim: Counter() for dim in DIMENSIONS}
    for domain, source, language, not_selected, n in conn.execute(_COUNTS, {"run": run_id, "select": Stage.SELECT.value}):
        for dim, value in zip(DIMENSIONS, (domain, source, language)):
            before[dim][value] += n
            if not not_selected:
                after[dim][value] += n
    out = {name: {"total": sum(part["source"].values()), **{dim: _shares(part[dim]) for dim in DIMENSIONS}}
           for name, part in (("before", before), ("after", after))}
    summary = conn.execute(sa.text("select s.result from selection_state s join runs r on r.dataset = s.dataset"
                                   " where r.run_id = :r and s.run_id = :r"), {"r": run_id}).scalar()
    if summary is not None:   # quotas, shares, DSIR shift per domain (select_records' summary)
        out["selection"] = summary
    return out
