"""Plan partitions: expand each source's path/glob into files, and files into shards.

* JSONL (.jsonl, .ndjson, .jsonl.txt): shards of `ingest.shard_lines` lines, by byte offsets,
  found in one streaming pass that also checksums each shard. A file that grows keeps its earlier
  shards (and their checksums), so only the changed tail is ingested again.
* Parquet (.parquet): shards of whole row groups holding about `shard_lines` rows.
* JSON array (.json): one shard per file (a JSON document has no line boundaries to split on).

A source path may name the partition a file belongs to (`incoming/{partition}/*.jsonl`, one folder per
night): a run with a partition key (the nightly schedule's, a backfill's, `infinstruct run --partition`)
plans the files of the partitions up to its key, a run without one every file.

A matched file with nothing to read is not planned but reported (`SkippedFile`, with a `SkipReason`): an
empty file, a symlink to nothing. A file that is missing, forbidden or not valid Parquet fails the plan with
a `SourceError` naming it (retrying cannot fix it); other OS errors (EIO, a stale network mount) propagate.

Reading every file to checksum it is the one cost of a nightly run that grows with the whole pool, so
`plan_recipe` takes what the previous plan found (`ScannedFile`, kept in the `source_files` table) and
reuses a file's shards while its size, mtime, ctime and inode are unchanged, as make and git do. Like
git, it distrusts a file modified within `RACY_NS` before it was scanned (a write in the same clock tick
leaves the mtime unchanged); `touch` a file to have it read again.
"""

from __future__ import annotations

import glob
import hashlib
import os
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Mapping

from infinstruct.config import PARTITION, Recipe, Source
from infinstruct.errors import DataError, permanent_os_error

READ_CHUNK = 1 << 20
RACY_NS = 2_000_000_000  # the coarsest common file timestamp granularity (FAT: 2 s)


class SourceError(DataError, ValueError):
    """A source path matches no file or a file has a type we cannot read."""


class SkipReason(StrEnum):
    EMPTY_FILE = "empty_file"  # 0 bytes: no line to account for
    BROKEN_SYMLINK = "broken_symlink"  # matched by the source's path, but points to nothing


@dataclass(frozen=True)
class SkippedFile:
    """A file a source matches that plan leaves out, and why (`pipeline.plan` logs and records it per run)."""

    source: str
    path: str
    reason: SkipReason
    detail: str


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


@dataclass(frozen=True)
class FileState:
    """What stat says about a file: equal states mean unchanged content, unless the file is racy."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int

    @classmethod
    def of(cls, path: str) -> "FileState":
        st = os.stat(path)
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


@dataclass(frozen=True)
class ScannedFile:
    """A file's shards as one plan found them, with the file's state and the clock just before reading."""

    source: str
    path: str
    state: FileState
    shard_lines: int
    scanned_at_ns: int
    shards: tuple[tuple[int, int, int, str], ...]

    def reusable(self, state: FileState, shard_lines: int) -> bool:
        """The shards still describe the file: same state, same shard size, and not modified so close to
        the scan that a later write could have kept the same timestamps."""
        return state == self.state and shard_lines == self.shard_lines and state.mtime_ns < self.scanned_at_ns - RACY_NS


def file_kind(path: str) -> str:
    name = path.lower()
    if name.endswith((".jsonl", ".ndjson", ".jsonl.txt")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".json"):
        return "json"
    raise SourceError(f"{path}: unknown file type; use .jsonl/.ndjson (JSON lines), .json (JSON array) or .parquet")


def partition_of(pattern: str, path: str) -> str:
    """The partition a file matched by a source path with `{partition}` belongs to: that component's variable part."""
    parts, matched = pattern.split("/"), path.split("/")
    at = next(i for i, part in enumerate(parts) if PARTITION in part)
    prefix, suffix = parts[at].split(PARTITION)
    component = matched[at]
    return component[len(prefix) : len(component) - len(suffix)]


def matched_files(source: Source, partition: str | None = None) -> tuple[list[str], list[SkippedFile]]:
    """The files a source names, sorted so partition numbering is stable, and the matches that are broken
    symlinks (folders are not matches). A file is named by its real path (symlinks, `.`, `..` and `//`
    resolved), so two spellings of one file are one file with one set of partitions.

    A path with `{partition}` (`incoming/{partition}/*.jsonl`) matches every partition's files; with the run's
    `partition` key, only those of the partitions up to it (compared as strings: ISO dates sort as days do), so
    a run for a past night, a backfill, sees the dataset as it was that night."""
    pattern = source.path
    template = PARTITION in pattern
    matches = pattern.replace(PARTITION, "*") if template else pattern
    candidates = sorted(glob.glob(matches, recursive=True)) if glob.has_magic(matches) else [matches]
    if template and partition is not None:
        candidates = [p for p in candidates if partition_of(pattern, p) <= partition]
    files, broken = [], []
    for p in candidates:
        if Path(p).is_file():
            files.append(p)
        elif Path(p).is_symlink():  # is_file follows the link: this one leads nowhere (or in a loop)
            broken.append(
                SkippedFile(
                    source.name, p, SkipReason.BROKEN_SYMLINK, f"symlink to {os.readlink(p)}, which does not exist"
                )
            )
    files = sorted({os.path.realpath(p) for p in files})  # one file, one identity, however it is spelled
    if not files:
        why = f"; {broken[0].path} is a {broken[0].detail}" if broken else ""
        upto = f" for partitions up to {partition!r}" if template and partition is not None else ""
        raise SourceError(f"source {source.name!r}: no file matches {pattern}{upto}{why}")
    for f in files:
        file_kind(f)
    return files, broken


def source_files(source: Source, partition: str | None = None) -> list[str]:
    """The files a source names, sorted so partition numbering is stable."""
    return matched_files(source, partition)[0]


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
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path).metadata
    except (pa.ArrowException, OSError) as exc:  # pyarrow's OSError without an errno is a corrupt file, too
        if isinstance(exc, OSError) and exc.errno is not None:
            raise
        raise SourceError(f"{path}: not a readable Parquet file ({exc})") from None
    checksum, shards, start, rows, first_row = file_sha256(path), [], 0, 0, 1
    for group in range(meta.num_row_groups):
        rows += meta.row_group(group).num_rows
        if rows >= shard_lines:
            shards.append((start, group + 1, first_row, checksum))
            start, first_row, rows = group + 1, first_row + rows, 0
    if start < meta.num_row_groups or not shards:
        shards.append((start, meta.num_row_groups, first_row, checksum))
    return shards


def scan_file(source: str, path: str, shard_lines: int) -> ScannedFile:
    """Read the file once: its shards with their checksums."""
    scanned_at, state, kind = time.time_ns(), FileState.of(path), file_kind(path)
    if kind == "jsonl":
        shards = jsonl_shards(path, shard_lines)
    elif kind == "parquet":
        shards = parquet_shards(path, shard_lines)
    else:
        shards = [(0, state.size, 1, file_sha256(path))]
    return ScannedFile(source, path, state, shard_lines, scanned_at, tuple(map(tuple, shards)))


def plan_source(
    dataset: str,
    source: Source,
    shard_lines: int,
    known: Mapping[tuple[str, str], ScannedFile] | None = None,
    partition: str | None = None,
) -> tuple[list[PartitionPlan], list[ScannedFile], list[SkippedFile]]:
    """The source's partitions, each file's scan (reused from `known` when the file is unchanged), and the
    files left out (`partition`: the run's partition key, see `matched_files`)."""
    plans, scans = [], []
    files, skipped = matched_files(source, partition)
    for path in files:
        before = (known or {}).get((source.name, path))
        try:
            state = FileState.of(path)
            if state.size == 0:
                skipped.append(SkippedFile(source.name, path, SkipReason.EMPTY_FILE, "the file is empty (0 bytes)"))
                continue
            scan = (
                before
                if before is not None and before.reusable(state, shard_lines)
                else (scan_file(source.name, path, shard_lines))
            )
        except OSError as exc:
            if not permanent_os_error(exc):
                raise
            raise SourceError(f"source {source.name!r}: cannot read {path}: {exc.strerror}") from exc
        scans.append(scan)
        for shard, (start, end, first, checksum) in enumerate(scan.shards):
            plans.append(
                PartitionPlan(
                    partition_id(dataset, source.name, path, shard),
                    dataset,
                    source.name,
                    path,
                    shard,
                    file_kind(path),
                    start,
                    end,
                    first,
                    checksum,
                )
            )
    return plans, scans, skipped


def plan_recipe(
    recipe: Recipe, known: Mapping[tuple[str, str], ScannedFile] | None = None, partition: str | None = None
) -> tuple[list[PartitionPlan], list[ScannedFile], list[SkippedFile]]:
    """Every partition the recipe's sources currently consist of (up to the run's `partition` key, for the
    sources whose path names it), the scans of their files, and the files the sources match that hold
    nothing to read."""
    plans, scans, skipped, owner = [], [], [], {}
    for source in recipe.sources:
        source_plans, source_scans, source_skipped = plan_source(
            recipe.name, source, recipe.ingest.shard_lines, known, partition
        )
        for scan in source_scans:  # one file in two sources would be two partitions: each record twice
            if owner.setdefault(scan.path, source.name) != source.name:
                raise SourceError(
                    f"{scan.path} is a file of source {owner[scan.path]!r} and of source {source.name!r}:"
                    " a file belongs to one source; narrow the path or glob of one of them"
                )
        plans += source_plans
        scans += source_scans
        skipped += source_skipped
    return plans, scans, skipped


def other_spellings(planned: set[tuple[str, str]], stored: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """The stored (source, path) pairs that name a planned (source, real path) by another spelling (through a
    symlink, or written before real paths were a file's identity): their partitions hold its records twice."""
    return {(source, path) for source, path in stored - planned if (source, os.path.realpath(path)) in planned}
