-- Release parts: one partition's share of a release (its kept records as JSONL + Parquet, its ledger
-- rows), written once per content and hard-linked into every release that has it, so a nightly release
-- costs only its new partitions. See release_parts.py.
create table release_parts (
    dataset      text not null,
    partition_id text not null,
    fingerprint  text not null,                   -- hash of everything the part is made of (release_parts.fingerprints)
    path         text not null,                   -- folder holding the part's files
    summary      jsonb not null,                  -- counts, reasons, composition counts, file checksums
    checked_key  text,                            -- the release gate's key it passed under; null: not validated yet
    run_id       text not null,
    written_at   timestamptz not null default now(),
    primary key (dataset, partition_id)
);

-- The release gate counts a new part's records' copies in the whole release by id (and by instruction:
-- records_instruction_key, 0009). A hash index: equality is all it serves.
create index records_record_id on records using hash (record_id);
