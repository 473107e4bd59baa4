"""The Phase-2 release: the kept synthetic records (and the foundational ones, labelled) in the record shape.

    <out>/<dataset>/synthetic/vNNNN/
        data/synthetic.parquet      kept children: source `synthetic:<operation>`, reward = the judge's overall,
                                    label = their seed's abilities and categories
        data/foundation-*.parquet   with `synthesis.merge_foundation`: the Phase-1 release's records with their
                                    labels filled in (label.ability_en, label.cate_ability_en)
        jsonl/…                     the same records as JSON lines (the formats: `release.formats`)
        ledger.parquet              every child, kept or dropped: parent, root seed, operation, round, prompt
                                    version, which stage decided, why, score, reward
        diagnosis.json              the per-category report of the students' failures
        weak_domains.json           the weak categories as Phase 1's `selection.weak_domains` input
        manifest.json, README.md
    <out>/<dataset>/synthetic/LATEST

Versions are numbered in `releases` under the dataset name `<dataset>/synthetic`; a run whose files are the
same as the last release's gives that version again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from infinstruct.ml.langid import detect
from infinstruct.release import card
from infinstruct.release.assemble import replace_folder, restore_replaced, store_release
from infinstruct.release.parts import LABEL_FIELDS, RECORD_SCHEMA, release_record, sha256_file
from infinstruct.release.writers import RecordFiles, writer_class
from infinstruct.store import run_lease
from infinstruct.store.stage_state import stream
from infinstruct.synth.diagnosis.stage import diagnosis_report
from infinstruct.synth.run import SynthesisRun, release_parts
from infinstruct.synth.tagging.stage import tagger_of

LEDGER_SCHEMA = pa.schema(
    [
        ("record_id", pa.string()),
        ("root_id", pa.string()),
        ("parent_id", pa.string()),
        ("round", pa.int64()),
        ("operation", pa.string()),
        ("prompt_version", pa.string()),
        ("verdict", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("score", pa.float64()),
        ("reward", pa.float64()),
        ("detail", pa.string()),
        ("run_id", pa.string()),
    ]
)
BATCH = 5_000


def _labels(abilities: list[str] | None, categories: list[str] | None) -> dict[str, list[str]]:
    return {
        **{f: [] for f in LABEL_FIELDS},
        "ability_en": list(abilities or []),
        "cate_ability_en": list(categories or []),
    }


def _tags(engine: Engine, tagger: str, ids: list[str]) -> dict[str, tuple[list[str], list[str]]]:
    with engine.connect() as conn:
        return {
            r.record_id: (r.abilities, r.categories)
            for r in conn.execute(
                sa.text(
                    "select record_id, abilities, categories from record_tags where tagger = :t and record_id = any(:ids)"
                ),
                {"t": tagger, "ids": ids},
            )
        }


def _write_synthetic(engine: Engine, run: SynthesisRun, staging: Path, tagger: str) -> tuple[int, Counter]:
    """The kept children as records, streamed in batches."""
    writer = RecordFiles(staging, "synthetic", run.recipe.release.formats, RECORD_SCHEMA, by_format=True)
    by_operation: Counter = Counter()
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "select child_id, root_id, operation, conversation, reward from synth_children where run_id = :r"
                " and verdict = 'kept' order by child_id"
            ),
            {"r": run.run_id},
            execution_options=stream(BATCH),
        )
        for children in rows.partitions(BATCH):
            tags = _tags(engine, tagger, sorted({c.root_id for c in children}))
            records = []
            for c in children:
                language = detect(c.conversation[0]["content"])[0]
                record = release_record(c.child_id, c.conversation, f"synthetic:{c.operation}", language)
                records.append({**record, "label": _labels(*tags.get(c.root_id, ([], []))), "reward": c.reward})
                by_operation[c.operation] += 1
            writer.write(records)
    writer.close()
    return writer.count, by_operation


def _write_foundation(engine: Engine, run: SynthesisRun, staging: Path, tagger: str) -> int:
    """The Phase-1 release's records, their labels filled in from record_tags (streamed, batch by batch)."""
    total = 0
    for part in release_parts(run.release_path):
        writer = RecordFiles(
            staging, "foundation-" + Path(part).stem, run.recipe.release.formats, RECORD_SCHEMA, by_format=True
        )
        for batch in pq.ParquetFile(run.release_path / part).iter_batches(BATCH):
            records = batch.to_pylist()
            tags = _tags(engine, tagger, [r["id"] for r in records])
            writer.write([{**r, "label": _labels(*tags[r["id"]]) if r["id"] in tags else r["label"]} for r in records])
        writer.close()
        total += writer.count
    return total


def _write_ledger(engine: Engine, run: SynthesisRun, staging: Path) -> tuple[Counter, str]:
    """Every child into ledger.parquet; returns the outcomes and a digest of the rows without their run id."""
    with engine.connect() as conn:
        rows = (
            conn.execute(
                sa.text(
                    "select child_id as record_id, root_id, parent_id, round, operation, prompt_version, verdict, stage, reason,"
                    " score, reward, detail, run_id from synth_children where run_id = :r order by round, child_id"
                ),
                {"r": run.run_id},
            )
            .mappings()
            .all()
        )
    pq.write_table(pa.Table.from_pylist([dict(r) for r in rows], schema=LEDGER_SCHEMA), staging / "ledger.parquet")
    digest = hashlib.sha256(orjson.dumps([[v for k, v in r.items() if k != "run_id"] for r in rows])).hexdigest()
    return Counter(r["reason"] or r["verdict"] for r in rows), digest


def phase1_weak_domains(run: SynthesisRun, report: list[dict]) -> dict[str, float]:
    """Phase 1's top-up input ({domain: factor}, `selection.weak_domains`): each weak category's Phase-1 domain
    asks for 1 + its fail rate more records (the highest of its categories). Only domains the recipe's
    selection knows, when it has one: the top-up rejects any other."""
    settings, boosts = run.settings.diagnosis, {}
    known = set(run.recipe.selection.domains.resolved()) if run.recipe.selection is not None else None
    for row in report:
        domain = settings.phase1_domain(row["category"])
        if row["weak"] and (known is None or domain in known):
            boosts[domain] = max(boosts.get(domain, 1.0), round(1.0 + row["fail_rate"], 3))
    return dict(sorted(boosts.items()))


def export_synthesis(engine: Engine, run: SynthesisRun, out_dir: str | os.PathLike) -> dict[str, Any]:
    """Write the run's release folder and record it; returns its manifest (with `path`)."""
    tagger = tagger_of(run.recipe)
    name = run_lease.lease_name(run.dataset, "synthesis")  # `<dataset>/synthetic`: its releases and its lease
    root = Path(out_dir).resolve() / run.dataset / "synthetic"
    if root.is_dir():
        restore_replaced(root)
    staging = root / f".staging-{hashlib.sha256(run.run_id.encode()).hexdigest()[:12]}"
    shutil.rmtree(staging, ignore_errors=True)
    for fmt in run.recipe.release.formats:
        (staging / writer_class(fmt).folder).mkdir(parents=True)
    synthetic, by_operation = _write_synthetic(engine, run, staging, tagger)
    foundation = _write_foundation(engine, run, staging, tagger) if run.settings.merge_foundation else 0
    outcomes, ledger_digest = _write_ledger(engine, run, staging)
    report = diagnosis_report(engine, run.run_id)
    (staging / "diagnosis.json").write_text(json.dumps(report, indent=2) + "\n")
    (staging / "weak_domains.json").write_text(json.dumps(phase1_weak_domains(run, report), indent=2) + "\n")
    files = {
        str(p.relative_to(staging)): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(staging.rglob("*"))
        if p.is_file()
    }
    # the same records and outcomes from another run are the same release (the ledger's run ids aside)
    content = {k: v["sha256"] for k, v in files.items() if k != "ledger.parquet"} | {"ledger": ledger_digest}
    content_hash = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]
    with engine.begin() as conn:
        conn.execute(sa.text("select pg_advisory_xact_lock(hashtext(:d))"), {"d": name})
        run_lease.claim_for_release(conn, name, run.run_id, "synthesis")  # numbered under the run's lease
        last = conn.execute(
            sa.text("select version, content_hash from releases where dataset = :d order by version desc limit 1"),
            {"d": name},
        ).first()
        on_disk = [int(p.name[1:]) for p in root.glob("v[0-9][0-9][0-9][0-9]*") if p.name[1:].isdigit()]
        same = last is not None and last.content_hash == content_hash
        version = last.version if same else max([last.version if last else 0, *on_disk]) + 1
        folder = root / f"v{version:04d}"
        manifest = {
            "dataset": name,
            "version": version,
            "run_id": run.run_id,
            "content_hash": content_hash,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "foundation": {
                "dataset": run.dataset,
                "version": run.release_version,
                "path": str(run.release_path),
                "records": foundation,
                "merged": run.settings.merge_foundation,
            },
            "totals": {
                "synthetic": synthetic,
                "foundation": foundation,
                "children": sum(outcomes.values()),
                "outcomes": dict(sorted(outcomes.items())),
            },
            "operations": dict(sorted(by_operation.items())),
            "weak_categories": [r["category"] for r in report if r["weak"]],
            "files": files,
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        (staging / "README.md").write_text(render_card(manifest, report))
        replace_folder(staging, folder)
        (root / "LATEST").write_text(folder.name + "\n")
        store_release(conn, manifest, folder)
        conn.execute(
            sa.text("update synth_runs set status = 'succeeded', finished_at = now() where run_id = :r"),
            {"r": run.run_id},
        )
        run_lease.release(conn, run.run_id, "synthesis")
    return {**manifest, "path": str(folder)}


def render_card(manifest: dict, report: list[dict]) -> str:
    totals, foundation = manifest["totals"], manifest["foundation"]
    lines = [
        *card.heading(manifest),
        f"Synthetic instruction-tuning conversations evolved by infinstruct's Phase 2 (run `{manifest['run_id']}`, "
        f"{manifest['created_at']}) from seeds of `{foundation['dataset']}` v{foundation['version']:04d}.",
        "",
        f"**{totals['synthetic']:,} synthetic records** kept of {totals['children']:,} evolved children"
        + (f", with the {foundation['records']:,} foundational records, labelled" if foundation["merged"] else "")
        + ". `ledger.parquet` has one row per child: its parent, seed, operation, round, prompt version, and which "
        "stage dropped it and why.",
        "",
        "## What became of the children",
        "",
        "| outcome | children |",
        "|---|---|",
        *(f"| `{k}` | {v:,} |" for k, v in totals["outcomes"].items()),
        "",
        "## Diagnosis: where the student failed",
        "",
        "| category | graded | failed | fail rate | weak |",
        "|---|---|---|---|---|",
        *(
            f"| {r['category']} | {r['graded']} | {r['failed']} | {r['fail_rate']:.2f} | {'yes' if r['weak'] else ''} |"
            for r in report
        ),
        "",
        "Weak categories steer the next run's seeds, and `weak_domains.json` is Phase 1's top-up input.",
        "",
    ]
    return "\n".join(lines)
