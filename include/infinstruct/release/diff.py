"""Two releases compared (`infinstruct diff`): records added, removed and unchanged, per source, and how the
drop reasons moved; the removed records' reasons in the newer release's ledger say why they left.

A release is named by its folder (holding manifest.json) or as `dataset@version` (`sample@3`, `sample@v0003`),
found in the store's `releases` table.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import sqlalchemy as sa

_AT = re.compile(r"^(?P<dataset>[^@/]+)@v?(?P<version>\d+)$")


class ReleaseNotFound(LookupError):
    """A release name that is neither a release folder nor a known dataset@version."""


def resolve(name: str, engine=None) -> Path:
    """The folder of the release `name` (a folder, or dataset@version looked up in `releases`)."""
    folder = Path(name).expanduser()
    if (folder / "manifest.json").exists():
        return folder.resolve()
    match = _AT.match(name)
    if match and engine is not None:
        with engine.connect() as conn:
            path = conn.execute(
                sa.text("select path from releases where dataset = :d and version = :v"),
                {"d": match["dataset"], "v": int(match["version"])},
            ).scalar()
        if path and (Path(path) / "manifest.json").exists():
            return Path(path)
        raise ReleaseNotFound(f"release {name}: {'its folder ' + path + ' is gone' if path else 'not in the store'}")
    raise ReleaseNotFound(f"{name!r} is neither a release folder (with manifest.json) nor dataset@version")


def _records(folder: Path) -> dict[str, str]:
    """Record id -> source of a release's records (data/*.parquet, or a release written before parts' data.parquet)."""
    import pyarrow.parquet as pq

    data = folder / "data" if (folder / "data").is_dir() else folder / "data.parquet"
    table = pq.read_table(data, columns=["id", "source"])
    return dict(zip(table.column("id").to_pylist(), table.column("source").to_pylist()))


def _reasons(manifest: dict) -> Counter:
    """(stage, reason) -> lines, from the manifest's per-stage counts."""
    return Counter(
        {(stage, reason): n for stage, reasons in manifest.get("stages", {}).items() for reason, n in reasons.items()}
    )


def diff_releases(a: Path, b: Path) -> dict[str, Any]:
    """What changed from release `a` to release `b`."""
    import pyarrow.parquet as pq

    before_manifest, after_manifest = (json.loads((f / "manifest.json").read_text()) for f in (a, b))
    before, after = _records(a), _records(b)
    added, removed = set(after) - set(before), set(before) - set(after)
    sources = sorted(set(before.values()) | set(after.values()))
    per_source = {
        s: {
            "before": sum(1 for v in before.values() if v == s),
            "after": sum(1 for v in after.values() if v == s),
            "added": sum(1 for i in added if after[i] == s),
            "removed": sum(1 for i in removed if before[i] == s),
        }
        for s in sources
    }
    reasons_before, reasons_after = _reasons(before_manifest), _reasons(after_manifest)
    reasons = {
        f"{stage}/{reason}": {"before": reasons_before[(stage, reason)], "after": reasons_after[(stage, reason)]}
        for stage, reason in sorted(set(reasons_before) | set(reasons_after))
        if reasons_before[(stage, reason)] != reasons_after[(stage, reason)]
    }
    why_removed: Counter = Counter()
    ledger = b / "ledger.parquet"
    if removed and ledger.exists():
        rows = pq.read_table(
            ledger, columns=["record_id", "verdict", "stage", "reason"], filters=[("record_id", "in", sorted(removed))]
        ).to_pylist()
        fate = {r["record_id"]: f"{r['stage']}/{r['reason']}" for r in rows if r["verdict"] != "kept"}
        why_removed = Counter(fate.get(i, "no longer in its sources") for i in removed)
    return {
        "a": {"dataset": before_manifest["dataset"], "version": before_manifest["version"], "path": str(a)},
        "b": {"dataset": after_manifest["dataset"], "version": after_manifest["version"], "path": str(b)},
        "added": len(added),
        "removed": len(removed),
        "unchanged": len(set(before) & set(after)),
        "sources": per_source,
        "reasons": reasons,
        "removed_because": dict(why_removed.most_common()),
    }


def render(diff: dict[str, Any]) -> str:
    """`infinstruct diff`'s text."""
    a, b = diff["a"], diff["b"]
    out = [
        f"{a['dataset']} v{a['version']:04d} -> {b['dataset']} v{b['version']:04d}: "
        f"+{diff['added']} added, -{diff['removed']} removed, {diff['unchanged']} unchanged",
        "  per source (records before -> after, added, removed):",
    ]
    out += [
        f"    {s:<24} {c['before']:>7} -> {c['after']:<7} +{c['added']} -{c['removed']}"
        for s, c in diff["sources"].items()
    ]
    if diff["reasons"]:
        out.append("  drop reasons that changed (lines before -> after):")
        out += [f"    {reason:<40} {c['before']:>7} -> {c['after']}" for reason, c in diff["reasons"].items()]
    if diff["removed_because"]:
        out.append("  why the removed records left (the newer release's ledger):")
        out += [f"    {reason:<40} {n:>7}" for reason, n in diff["removed_because"].items()]
    return "\n".join(out)
