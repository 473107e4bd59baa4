"""A synthesis run: which Phase-1 release it works on, and the recipe snapshot every task of it reads.

The release is a folder `<out>/<dataset>/vNNNN` written by the curation DAG (its `manifest.json` names the
dataset and version); its record files (`data/*.parquet`) are what Phase 2 tags and picks seeds from, so
Phase 2 works on exactly what was released, whatever the store has decided since.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from infinstruct.config import Recipe, load_recipe, recipe_hash
from infinstruct.errors import DataError
from infinstruct.record.conversation import ASSISTANT, EXPORT_ROLE, instruction_text
from infinstruct.store import run_lease
from infinstruct.synth.settings import SynthesisSettings

log = logging.getLogger(__name__)

_ROLE_OF_EXPORTED = {exported: role for role, exported in EXPORT_ROLE.items()}


class SynthesisError(DataError, ValueError):
    """The synthesis run cannot start: no release to work on, or a recipe without a `synthesis` section."""


@dataclass(frozen=True)
class SynthesisRun:
    run_id: str
    dataset: str
    release_version: int
    release_path: Path
    recipe: Recipe

    @property
    def settings(self) -> SynthesisSettings:
        return self.recipe.synthesis or SynthesisSettings()


def release_folder(path: str | os.PathLike, dataset: str | None = None) -> Path:
    """A release folder: `path` itself when it holds a manifest, else its dataset's LATEST release."""
    folder = Path(path).expanduser().resolve()
    if (folder / "manifest.json").is_file():
        return folder
    for candidate in ([folder / dataset] if dataset else []) + [folder]:
        latest = candidate / "LATEST"
        if latest.is_file():
            return (candidate / latest.read_text().strip()).resolve()
    raise SynthesisError(
        f"no release at {folder}: give a release folder (with manifest.json), or the folder that "
        f"holds <dataset>/LATEST; run the curation DAG first (infinstruct run)"
    )


def start_synthesis(engine: Engine, run_id: str, recipe_path: str | os.PathLike, release: str | os.PathLike) -> dict:
    """Record the run: its release and a snapshot of the recipe (a retry replaces them)."""
    recipe, _ = load_recipe(recipe_path)
    if recipe.synthesis is None:
        raise SynthesisError(
            f"recipe {recipe.name!r} has no `synthesis` section: add one (`synthesis: {{}}` takes "
            "every default) to run Phase 2"
        )
    folder = release_folder(release, recipe.name)
    manifest = json.loads((folder / "manifest.json").read_text())
    if manifest["dataset"] != recipe.name:
        raise SynthesisError(f"release {folder} is of dataset {manifest['dataset']!r}, the recipe is {recipe.name!r}")
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "insert into synth_runs (run_id, dataset, release_version, release_path, recipe, recipe_hash)"
                " values (:run, :d, :v, :p, cast(:r as jsonb), :h) on conflict (run_id) do update set"
                " release_version = excluded.release_version, release_path = excluded.release_path,"
                " recipe = excluded.recipe, recipe_hash = excluded.recipe_hash, status = 'running', finished_at = null"
            ),
            {
                "run": run_id,
                "d": recipe.name,
                "v": manifest["version"],
                "p": str(folder),
                "r": json.dumps(recipe.model_dump(mode="json")),
                "h": recipe_hash(recipe, phase2=True),
            },
        )
    log.info(
        "synthesis %s: release %s v%04d (%s records)",
        run_id,
        recipe.name,
        manifest["version"],
        manifest["totals"]["kept"],
    )
    return {
        "run_id": run_id,
        "dataset": recipe.name,
        "release_version": manifest["version"],
        "release_path": str(folder),
        "records": manifest["totals"]["kept"],
    }


def synthesis_run(engine: Engine, run_id: str) -> SynthesisRun:
    with engine.connect() as conn:
        row = conn.execute(
            sa.text("select dataset, release_version, release_path, recipe from synth_runs where run_id = :r"),
            {"r": run_id},
        ).first()
    if row is None:
        raise LookupError(f"synthesis run {run_id!r} was never started (no row in synth_runs): start_synthesis first")
    return SynthesisRun(
        run_id, row.dataset, row.release_version, Path(row.release_path), Recipe.model_validate(row.recipe)
    )


def release_parts(folder: Path) -> list[str]:
    """The release's record files (relative names): what tagging is mapped over."""
    return sorted(str(p.relative_to(folder)) for p in (folder / "data").glob("*.parquet"))


def released_records(folder: Path, parts: list[str] | None = None, batch_size: int = 5_000) -> Iterator[dict[str, Any]]:
    """The release's records (id, conversation as (role, content) turns, instruction), streamed in batches."""
    for name in parts if parts is not None else release_parts(folder):
        for batch in pq.ParquetFile(folder / name).iter_batches(batch_size, columns=["id", "conversations"]):
            for row in batch.to_pylist():
                turns = [(_ROLE_OF_EXPORTED[t["from"]], t["value"]) for t in row["conversations"]]
                yield {
                    "id": row["id"],
                    "turns": turns,
                    "instruction": instruction_text(turns),
                    "response": next((c for r, c in turns if r == ASSISTANT), ""),
                }  # the first answer


def finish_synthesis(engine: Engine, run_id: str, status: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "update synth_runs set status = :s, finished_at = now() where run_id = :r and status <> 'succeeded'"
            ),
            {"s": status, "r": run_id},
        )
        run_lease.release(conn, run_id, "synthesis")  # the next synthesis run of the dataset may start
