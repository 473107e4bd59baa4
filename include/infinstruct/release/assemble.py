"""Write a versioned release in the public Infinity-Instruct record shape.

    <out>/<dataset>/v0001/
        data/<source>-<partition>.parquet   the kept records, one file per partition: id, conversations[{from, value}],
                                            label, langdetect, source, reward (read the folder: pd.read_parquet(".../data"))
        jsonl/<source>-<partition>.jsonl    the same records as JSON lines (the formats: `release.formats`)
        ledger.parquet                      one row per input line: why it is, or is not, in the release
        manifest.json                       counts per source / stage / reason, composition, recipe hash, run id,
                                            checksums of every file, parts, diff to the last release,
                                            files the plan left out (skipped_files, when any)
        README.md                           the dataset card, laid out from the manifest (card.py)
    <out>/<dataset>/LATEST   the newest version's folder name

The record files are the partitions' release parts (release_parts.py), hard-linked: a nightly release
writes only its new partitions' files and links the rest. A release's version is a sequence number per
dataset; a run whose kept set and recipe are unchanged re-writes the same version instead of minting a new
one. Files are put together in a temporary folder and moved into place, so a crash never leaves a
half-written release behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from infinstruct.config import Recipe, recipe_hash
from infinstruct.gates.checks import release_gate_key
from infinstruct.record.reasons import Verdict
from infinstruct.release import card
from infinstruct.release.composition import composition, selection_summary
from infinstruct.release.parts import LEDGER_SCHEMA, ReleasePartError, current_parts, sha256_file
from infinstruct.release.writers import writer_class
from infinstruct.store import run_lease


def part_name(part: dict) -> str:
    """The file stem of a part in the release: its source and the start of its partition id."""
    return f"{part['summary']['source']}-{part['partition_id'][:12]}"


def _link(src: Path, dst: Path) -> None:
    """A hard link (the part's bytes are shared, not copied); a copy across file systems."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _release_files(parts: list[dict], staging: Path, formats: list[str]) -> dict[str, dict]:
    """Link the parts' record files into the formats' folders (staging/data, staging/jsonl) and concatenate
    their ledgers into staging/ledger.parquet; returns {relative path: {sha256, bytes, records}}."""
    writers = [writer_class(fmt) for fmt in formats]
    for writer in writers:
        (staging / writer.folder).mkdir()
    files: dict[str, dict] = {}
    with pq.ParquetWriter(staging / "ledger.parquet", LEDGER_SCHEMA) as ledger:
        for part in parts:
            folder, summary = Path(part["path"]), part["summary"]
            ledger.write_table(pq.read_table(folder / "ledger.parquet", schema=LEDGER_SCHEMA))
            kept = summary["counts"][Verdict.KEPT.value]
            if kept == 0:
                continue
            for writer in writers:
                name, relative = f"records{writer.suffix}", f"{writer.folder}/{part_name(part)}{writer.suffix}"
                _link(folder / name, staging / relative)
                files[relative] = {**summary["files"][name], "records": kept}
    files["ledger.parquet"] = {
        "sha256": sha256_file(staging / "ledger.parquet"),
        "bytes": (staging / "ledger.parquet").stat().st_size,
    }
    return files


def _totals(parts: list[dict]) -> tuple[dict, dict, dict]:
    """Counts per source (lines and verdicts), reasons per source, reasons per stage, over the parts."""
    counts: dict[str, Counter] = defaultdict(Counter)
    reasons: dict[str, Counter] = defaultdict(Counter)
    stages: dict[str, Counter] = defaultdict(Counter)
    for part in parts:
        summary = part["summary"]
        counts[summary["source"]].update(summary["counts"])
        for source, why in summary["reasons"].items():
            reasons[source].update(why)
        for stage, why in summary["stages"].items():
            stages[stage].update(why)
    return (
        {source: {k: c[k] for k in ("lines", *(v.value for v in Verdict))} for source, c in sorted(counts.items())},
        {k: dict(sorted(v.items())) for k, v in reasons.items()},
        {k: dict(sorted(v.items())) for k, v in sorted(stages.items())},
    )


def _ids(folder: Path, relative_paths: list[str]) -> set[str]:
    return {i for path in relative_paths for i in pq.read_table(folder / path, columns=["id"]).column("id").to_pylist()}


def _diff(previous: dict | None, parts: list[dict], staging: Path, kept: int) -> dict:
    """added / removed / unchanged record ids against the previous release. Parts whose ids are the same
    in both releases count as unchanged without being read; only the other parts' id columns are."""
    unknown = {"previous_version": previous and previous["version"], "added": kept, "removed": None, "unchanged": None}
    if previous is None or not Path(previous["path"]).is_dir():  # the first release, or the last one was deleted
        return unknown
    folder, before_parts = Path(previous["path"]), previous["manifest"].get("parts", {})
    same = {
        p["partition_id"]
        for p in parts
        if before_parts.get(p["partition_id"], {}).get("ids_hash") == p["summary"]["ids_hash"]
    }
    before_files = (
        [f"data/{meta['name']}.parquet" for pid, meta in before_parts.items() if pid not in same and meta["kept"]]
        if before_parts
        else ["data.parquet"]
    )  # a release written before parts: one data.parquet
    after_files = [
        f"data/{part_name(p)}.parquet"
        for p in parts
        if p["partition_id"] not in same and p["summary"]["counts"][Verdict.KEPT.value]
    ]
    try:
        before = _ids(folder, before_files)
    except FileNotFoundError:
        return unknown
    after = _ids(staging, after_files)
    unchanged = sum(p["summary"]["counts"][Verdict.KEPT.value] for p in parts if p["partition_id"] in same)
    return {
        "previous_version": previous["version"],
        "added": len(after - before),
        "removed": len(before - after),
        "unchanged": unchanged + len(after & before),
    }


def _folder_versions(dataset_dir: Path) -> list[int]:
    return [int(p.name[1:]) for p in dataset_dir.glob("v[0-9][0-9][0-9][0-9]*") if p.name[1:].isdigit()]


def _folder_holds(dataset_dir: Path, version: int, content_hash: str) -> bool:
    """True when the version's folder is absent or holds this content (so rewriting it loses nothing)."""
    manifest = dataset_dir / f"v{version:04d}" / "manifest.json"
    return not manifest.exists() or json.loads(manifest.read_text()).get("content_hash") == content_hash


def replace_folder(new: Path, folder: Path) -> None:
    """Put the folder `new` in place of `folder`. An existing one is moved aside first and deleted only once the
    new one is in place: a crash in between leaves it beside (`.replaced-<name>`), where `restore_replaced`
    finds it, never a version that LATEST and the store point to with nothing there."""
    old = folder.with_name(f".replaced-{folder.name}")
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
    new.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def restore_replaced(dataset_dir: Path) -> None:
    """Finish a replacement a crash cut short: an old version folder left aside goes back where it was when
    nothing took its place, and is deleted when something did."""
    for old in dataset_dir.glob(".replaced-v*"):
        target = dataset_dir / old.name.removeprefix(".replaced-")
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.rename(target)


def store_release(conn, manifest: dict, folder: Path) -> None:
    """Record a release (its dataset, version, run, content hash and manifest) in `releases`, and the run that made
    it in `release_runs`; a version written again is replaced (and keeps the runs that made it before)."""
    conn.execute(
        sa.text(
            "insert into releases (dataset, version, run_id, content_hash, path, manifest)"
            " values (:d, :v, :run, :h, :path, cast(:m as jsonb))"
            " on conflict (dataset, version) do update set run_id = excluded.run_id, path = excluded.path,"
            " manifest = excluded.manifest, created_at = now()"
        ),
        {
            "d": manifest["dataset"],
            "v": manifest["version"],
            "run": manifest["run_id"],
            "h": manifest["content_hash"],
            "path": str(folder),
            "m": json.dumps(manifest),
        },
    )
    conn.execute(  # every run that made the version (the newest is releases.run_id): migrations/0023
        sa.text(
            "insert into release_runs (run_id, dataset, version) values (:run, :d, :v)"
            " on conflict (run_id, dataset) do update set version = excluded.version, made_at = now()"
        ),
        {"run": manifest["run_id"], "d": manifest["dataset"], "v": manifest["version"]},
    )


def export_release(engine: Engine, recipe: Recipe, run_id: str, out_dir: str | os.PathLike) -> dict[str, Any]:
    """Put the run's release together under out_dir/<dataset>/ from its validated parts; returns the manifest."""
    with engine.connect() as conn:
        parts = current_parts(conn, recipe, run_id)
        selection = selection_summary(conn, run_id)
        skipped = [
            dict(r)
            for r in conn.execute(
                sa.text(  # files the plan left out (empty, broken symlinks)
                    "select source, path, reason, detail from skipped_files where run_id = :run order by source, path"
                ),
                {"run": run_id},
            ).mappings()
        ]
        partition = conn.execute(  # the night a scheduled or backfilled run read up to, if any
            sa.text("select partition_key from runs where run_id = :run"), {"run": run_id}
        ).scalar()
    key = release_gate_key(recipe)
    unchecked = [p["partition_id"] for p in parts if p["checked_key"] != key]
    if unchecked:
        raise ReleasePartError(
            f"{len(unchecked)} release part(s) were not validated by check_release (e.g. "
            f"{unchecked[0]}): run check_release before export_release"
        )
    dataset_dir = Path(out_dir).resolve() / recipe.name
    if dataset_dir.is_dir():
        restore_replaced(dataset_dir)
    staging = dataset_dir / f".staging-{hashlib.sha256(run_id.encode()).hexdigest()[:12]}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    files = _release_files(parts, staging, recipe.release.formats)
    counts, reasons, stages = _totals(parts)
    kept = sum(c[Verdict.KEPT.value] for c in counts.values())
    ids = [[p["partition_id"], p["summary"]["ids_hash"]] for p in parts if p["summary"]["counts"][Verdict.KEPT.value]]
    content_hash = hashlib.sha256(json.dumps([ids, recipe_hash(recipe)]).encode()).hexdigest()[:16]

    with engine.begin() as conn:
        conn.execute(sa.text("select pg_advisory_xact_lock(hashtext(:d))"), {"d": recipe.name})
        # the version is numbered under the run's lease of the dataset (released below, in this transaction)
        run_lease.claim_for_release(conn, recipe.name, run_id, "curation")
        last = (
            conn.execute(
                sa.text(
                    "select version, content_hash, path, manifest from releases where dataset = :d order by version desc limit 1"
                ),
                {"d": recipe.name},
            )
            .mappings()
            .first()
        )
        same = (
            last is not None
            and last["content_hash"] == content_hash
            and _folder_holds(dataset_dir, last["version"], content_hash)
        )
        # a new version is numbered past both the store's and the folder's releases: never overwrite another's
        version = last["version"] if same else max([last["version"] if last else 0, *_folder_versions(dataset_dir)]) + 1
        folder = dataset_dir / f"v{version:04d}"
        # the same release again: its diff to the one before still holds
        diff = last["manifest"]["diff"] if same else _diff(last, parts, staging, kept)
        manifest = {
            "dataset": recipe.name,
            "version": version,
            "run_id": run_id,
            **({"partition": partition} if partition else {}),
            "recipe_hash": recipe_hash(recipe),
            "content_hash": content_hash,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "totals": {
                key: sum(c[key] for c in counts.values()) for key in ("lines", "kept", "dropped", "quarantined")
            },
            "sources": {source: {**c, "reasons": reasons.get(source, {})} for source, c in counts.items()},
            "stages": stages,
            "composition": composition((row for p in parts for row in p["summary"]["composition"]), selection),
            "diff": diff,
            **({"skipped_files": skipped} if skipped else {}),
            "files": files,
            "parts": {
                p["partition_id"]: {
                    "name": part_name(p),
                    "source": p["summary"]["source"],
                    "kept": p["summary"]["counts"][Verdict.KEPT.value],
                    "ids_hash": p["summary"]["ids_hash"],
                    "fingerprint": p["fingerprint"],
                }
                for p in parts
            },
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        (staging / "README.md").write_text(card.render(manifest))
        replace_folder(staging, folder)
        (dataset_dir / "LATEST").write_text(folder.name + "\n")
        store_release(conn, manifest, folder)
        conn.execute(
            sa.text("update runs set status = 'succeeded', finished_at = now() where run_id = :run"), {"run": run_id}
        )
        run_lease.release(conn, run_id, "curation")
    return {**manifest, "path": str(folder)}
