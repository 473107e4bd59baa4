"""Plan partitions: expand each source's path/glob into files, and files into shards.

* JSONL (.jsonl, .ndjson, .jsonl.txt): shards of `ingest.shard_lines` lines, by byte offsets,
  found in one streaming pass that also checksums each shard. A file that grows keeps its earlier
  shards (and their checksums), so only the changed tail is ingested again.
* Parquet (.parquet): shards of whole row groups holding about `shard_lines` rows.
* JSON array (.json): one shard per file (a JSON document has no line boundaries to split on).
"""
from __future__ import annotations

import glob
import hashlib
from dataclasses import dataclass
from pathlib import Path

from .config import Recipe, Source

READ_CHUNK = 1 << 20


class SourceError(ValueError):
    """A source path matches no file or a file has a type we cannot read."""


@dataclass(frozen=True)
class PartitionPlan:
    partition_id: str
    dataset: str
    source: str
    path: str
    shard: int
    format: str
    start_offset: int
    end_offset: int
    first_line: int
    checksum: str


def file_kind(path: str) -> str:
    name = path.lower()
    if name.endswith((".jsonl", ".ndjson", ".jsonl.txt")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".json"):
        return "json"
    raise SourceError(f"{path}: unknown file type; use .jsonl/.ndjson (JSON lines), .json (JSON array) or .parquet")


def source_files(source: Source) -> list[str]:
    """The files a source names, sorted so partition numbering is stable."""
    pattern = source.path
    files = sorted(p for p in glob.glob(pattern, recursive=True) if Path(p).is_file()) if glob.has_magic(pattern) else (
        [pattern] if Path(pattern).is_file() else [])
    if not files:
        raise SourceError(f"source {source.name!r}: no file matches {pattern}")
    for f in files:
        file_kind(f)
    return files


def partition_id(dataset: str, source: str, path: str, shard: int) -> str:
    return hashlib.sha256(f"{dataset}\x1f{source}\x1f{path}\x1f{shard}".encode()).hexdigest()[:20]


def jsonl_shards(path: str, shard_lines: int) -> list[tuple[int, int, int, str]]:
    """(start byte, end byte, first line number, sha256) per shard of `shard_lines` lines."""
    shards, start, offset, lines, digest = [], 0, 0, 0, hashlib.sha256()
    with open(path, "rb") as fh:
        for line in fh:
            digest.update(line)
            offset += len(line)
            lines += 1
            if lines % shard_lines == 0:
                shards.append((start, offset, lines - shard_lines + 1, digest.hexdigest()))
                start, digest = offset, hashlib.sha256()
    if offset > start:
        shards.append((start, offset, len(shards) * shard_lines + 1, digest.hexdigest()))
    return shards


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def parquet_shards(path: str, shard_lines: int) -> list[tuple[int, int, int, str]]:
    """(first row group, last row group + 1, first row number, file sha256) per shard."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    checksum, shards, start, rows, first_row = file_sha256(path), [], 0, 0, 1
    for group in range(meta.num_row_groups):
        rows += meta.row_group(group).num_rows
        if rows >= shard_lines:
            shards.append((start, group + 1, first_row, checksum))
            start, first_row, rows = group + 1, first_row + rows, 0
    if start < meta.num_row_groups or not shards:
        shards.append((start, meta.num_row_groups, first_row, checksum))
    return shards


def plan_source(dataset: str, source: Source, shard_lines: int) -> list[PartitionPlan]:
    plans = []
    for path in source_files(source):
        kind = file_kind(path)
        if kind == "jsonl":
            shards = jsonl_shards(path, shard_lines)
        elif kind == "parquet":
            shards = parquet_shards(path, shard_lines)
        else:
            shards = [(0, Path(path).stat().st_size, 1, file_sha256(path))]
        for shard, (start, end, first, checksum) in enumerate(shards):
            plans.append(PartitionPlan(partition_id(dataset, source.name, path, shard), dataset, source.name,
                                       path, shard, kind, start, end, first, checksum))
    return plans


def plan_recipe(recipe: Recipe) -> list[PartitionPlan]:
    """Every partition the recipe's sources currently consist of."""
    return [p for source in recipe.sources for p in plan_source(recipe.name, source, recipe.ingest.shard_lines)]
