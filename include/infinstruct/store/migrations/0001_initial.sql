-- infinstruct metadata store, version 1: runs, partitions, records, quarantine, decisions, gates, releases.

create table runs (
    run_id       text primary key,
    dataset      text not null,
    recipe       jsonb not null,
    recipe_hash  text not null,
    status       text not null default 'running',   -- running | succeeded | failed
    started_at   timestamptz not null default now(),
    finished_at  timestamptz
);

-- A partition is one shard of one source file: the unit of ingest, retry and backfill.
create table partitions (
    partition_id      text primary key,            -- hash of (dataset, source, path, shard)
    dataset           text not null,
    source            text not null,
    path              text not null,
    shard             integer not null,
    format            text not null,
    start_offset      bigint not null,              -- JSONL: byte offset; Parquet: first row group
    end_offset        bigint not null,              -- JSONL: byte offset (exclusive); Parquet: last row group + 1
    first_line        bigint not null,              -- line (JSONL), row (Parquet) or element (JSON array) number of the first item
    checksum          text not null,                -- of the shard's bytes as planned
    ingested_checksum text,                         -- of the content now in `records`; equal = nothing to do
    status            text not null default 'planned',  -- planned | ingested | failed
    lines             bigint,
    records           bigint,
    quarantined       bigint,
    run_id            text,
    updated_at        timestamptz not null default now()
);
create index partitions_dataset on partitions (dataset, source);

-- Which partitions make up a run's dataset (everything the recipe matches, new or not).
create table run_partitions (
    run_id       text not null references runs on delete cascade,
    partition_id text not null references partitions on delete cascade,
    primary key (run_id, partition_id)
);

-- One row per input line that parsed into a conversation. Tuned for bulk COPY (measured in
-- bench/RESULTS.md): no foreign key to partitions (ingest writes a partition's rows in the transaction
-- that checked it exists), `json` not `jsonb` (keeps the canonical bytes, so sha256(conversation)
-- verifies record_id), and no index on the hashes until a query needs one (dedup sorts).
create table records (
    partition_id    text not null,
    line_no         bigint not null,
    record_id       text not null,                 -- content hash of the normalised conversation
    instruction_key text not null,                 -- hash of the user turns, case/whitespace folded
    source          text not null,
    conversation    json not null,                 -- [{"role": system|user|assistant, "content": ...}]
    role_pattern    text not null,                 -- e.g. "ua", "sua", "uaua"
    min_turn_chars  integer not null,
    total_chars     integer not null,
    created_at      timestamptz not null default now(),
    primary key (partition_id, line_no)
);

-- One row per input line that could not become a record.
create table quarantine (
    partition_id text not null,
    line_no      bigint not null,
    source       text not null,
    reason       text not null,                    -- quarantine:<code>, see reasons.py
    error        text not null,                    -- what exactly was wrong, for a human
    excerpt      text not null,                    -- the start of the raw line
    created_at   timestamptz not null default now(),
    primary key (partition_id, line_no)
);

-- The decision ledger: what a stage decided about a record line, why, with which score.
create table decisions (
    partition_id text not null,
    line_no      bigint not null,
    stage        text not null,
    verdict      text not null,                    -- kept | dropped
    reason       text,
    score        double precision,
    duplicate_of text,                             -- the kept record id (or benchmark item) it matched
    run_id       text not null,
    decided_at   timestamptz not null default now(),
    primary key (partition_id, line_no, stage),
    foreign key (partition_id, line_no) references records on delete cascade
);

create table gate_results (
    id          bigserial primary key,
    run_id      text not null,
    gate        text not null,
    scope       text not null,                     -- partition id, or 'release'
    success     boolean not null,
    statistics  jsonb not null,
    failures    jsonb not null,                    -- [{expectation, column, unexpected_count, sample}]
    created_at  timestamptz not null default now()
);
create index gate_results_run on gate_results (run_id, gate);

create table releases (
    dataset      text not null,
    version      integer not null,
    run_id       text not null,
    content_hash text not null,
    path         text not null,
    manifest     jsonb not null,
    created_at   timestamptz not null default now(),
    primary key (dataset, version)
);
