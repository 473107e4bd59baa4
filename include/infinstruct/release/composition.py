"""What a release is made of: counts and shares per domain, per source and per language, before and after
selection (the release manifest's `composition`).

"before" is the standing pool (records no stage before selection dropped), "after" the released records.
The domain is `record_scores.domain` (`unscored` when the recipe has no selection); the language is the
rules stage's `record_language` (`und` when undetermined).
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

DIMENSIONS = ("domain", "source", "language")


def _shares(counter: Counter) -> dict[str, dict]:
    total = sum(counter.values())
    return {
        key: {"count": n, "share": round(n / total, 4) if total else 0.0}
        for key, n in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
    }


def composition(counts: Iterable[Sequence], selection: dict | None) -> dict[str, dict]:
    """{"before": {...}, "after": {...}} from counts rows [domain, source, language, not_selected, n] (each
    release part counts its standing records so), each with `total` and per dimension
    {value: {count, share}}; with a selection also `selection`, the summary select_records wrote."""
    before = {dim: Counter() for dim in DIMENSIONS}
    after = {dim: Counter() for dim in DIMENSIONS}
    for domain, source, language, not_selected, n in counts:
        for dim, value in zip(DIMENSIONS, (domain, source, language)):
            before[dim][value] += n
            if not not_selected:
                after[dim][value] += n
    out = {
        name: {"total": sum(part["source"].values()), **{dim: _shares(part[dim]) for dim in DIMENSIONS}}
        for name, part in (("before", before), ("after", after))
    }
    if selection is not None:  # quotas, shares, DSIR shift per domain (select_records' summary)
        out["selection"] = selection
    return out


def selection_summary(conn: Connection, run_id: str) -> dict | None:
    """The summary select_records wrote for this run, if it ran."""
    return conn.execute(
        sa.text(
            "select s.result from selection_state s join runs r on r.dataset = s.dataset"
            " where r.run_id = :r and s.run_id = :r"
        ),
        {"r": run_id},
    ).scalar()
