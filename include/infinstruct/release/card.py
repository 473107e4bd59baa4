"""The dataset card of a release: README.md beside the data, written from the manifest.

It carries Hugging Face's YAML header (`configs` pointing at data/*.parquet, so `load_dataset` on the
folder finds the records) and, for a human: what the release holds, where it came from, what each
stage dropped and why, the composition before and after selection, and the diff to the last release.
Everything in it is in manifest.json too; the card only lays it out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(" --- " if i == 0 else " ---: " for i in range(len(header))) + "|",
    ]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def _mix(composition: dict, dimension: str) -> list[str]:
    before, after = composition["before"][dimension], composition["after"][dimension]
    rows = [
        [
            f"`{key}`",
            f"{before.get(key, {}).get('count', 0):,}",
            f"{before.get(key, {}).get('share', 0):.1%}",
            f"{after.get(key, {}).get('count', 0):,}",
            f"{after.get(key, {}).get('share', 0):.1%}",
        ]
        # ties by standing count, then by name: a set's order changes from process to process (string hashing)
        for key in sorted(
            set(before) | set(after),
            key=lambda k: (-after.get(k, {}).get("count", 0), -before.get(k, {}).get("count", 0), k),
        )
    ]
    return _table([dimension, "standing", "share", "released", "share"], rows)


def heading(manifest: dict) -> list[str]:
    """Hugging Face's YAML header (`load_dataset` reads data/*.parquet) and the title: every release card's start."""
    return [
        "---",
        "configs:",
        "- config_name: default",
        "  data_files: data/*.parquet",
        "license: other",
        "task_categories:",
        "- text-generation",
        "---",
        "",
        f"# {manifest['dataset']} v{manifest['version']:04d}",
        "",
    ]


def _skipped(files: list[dict]) -> list[str]:
    """The files the sources matched but the plan left out (empty, broken symlinks), by name: the full paths are
    in manifest.json."""
    if not files:
        return []
    return [
        "",
        f"{len(files):,} file(s) matched by the sources were left out, not read:",
        "",
        *_table(
            ["source", "file", "reason"],
            [[f"`{f['source']}`", f"`{Path(f['path']).name}`", f"`{f['reason']}`"] for f in files],
        ),
    ]


def render(manifest: dict) -> str:
    """The card's Markdown for a release manifest."""
    totals, diff = manifest["totals"], manifest["diff"]
    partition = f", partition `{manifest['partition']}`" if manifest.get("partition") else ""
    lines = [
        *heading(manifest),
        f"Instruction-tuning conversations in the Infinity-Instruct record shape, curated by infinstruct "
        f"(run `{manifest['run_id']}`{partition}, recipe `{manifest['recipe_hash']}`, {manifest['created_at']}).",
        "",
        f"**{totals['kept']:,} records** released of {totals['lines']:,} input lines: {totals['dropped']:,} dropped "
        f"with a reason, {totals['quarantined']:,} quarantined as unreadable. `ledger.parquet` has one row per input "
        "line saying which, and why.",
        "",
        "Files: `data/*.parquet` (and the same records as `jsonl/*.jsonl`), one file per partition of the sources; "
        "`manifest.json` has every count below, the checksum of every file and the recipe.",
        "",
        "## Sources",
        "",
        *_table(
            ["source", "lines", "kept", "dropped", "quarantined"],
            [
                [f"`{s}`", f"{c['lines']:,}", f"{c['kept']:,}", f"{c['dropped']:,}", f"{c['quarantined']:,}"]
                for s, c in manifest["sources"].items()
            ],
        ),
        *_skipped(manifest.get("skipped_files") or []),
        "",
        "## Why records were dropped",
        "",
        *_table(
            ["stage", "reason", "records"],
            [
                [f"`{stage}`", f"`{reason}`", f"{n:,}"]
                for stage, reasons in manifest["stages"].items()
                for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1])
            ],
        ),
    ]
    composition = manifest.get("composition")
    if composition:
        lines += [
            "",
            "## Composition",
            "",
            "Standing: the records every cleaning stage kept; released: those the selection kept too.",
            "",
        ]
        for dimension in ("domain", "language", "source"):
            lines += _mix(composition, dimension) + [""]
    lines += ["## Changes", ""]
    if diff.get("removed") is None:
        lines.append(f"{diff['added']:,} records; no earlier release to compare with.")
    else:
        lines.append(
            f"Against v{diff['previous_version']:04d}: {diff['added']:,} added, {diff['removed']:,} removed, "
            f"{diff['unchanged']:,} unchanged."
        )
    return "\n".join(lines) + "\n"
