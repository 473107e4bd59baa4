-- Phase 1 cleaning: measurements stored apart from thresholds, and the contamination audit.

-- Per-record measurements, keyed by content: a conversation is measured once, whatever file it is in;
-- a new `version` of the measuring code re-measures. Thresholds are applied to these at every run.
create table record_stats (
    record_id   text primary key,
    version     integer not null,
    stats       jsonb not null,
    measured_at timestamptz not null default now()
);

-- Which benchmark item a record matched, how and how closely: why a `contaminated:<benchmark>` drop happened.
create table contamination (
    partition_id text not null,
    line_no      bigint not null,
    benchmark    text not null,
    item_id      text not null,
    method       text not null,                   -- ngram | containment | embedding
    score        double precision not null,
    run_id       text not null,
    primary key (partition_id, line_no, benchmark, item_id, method)
);
create index contamination_item on contamination (benchmark, item_id);

-- What exactly a decision measured when it is not a number (the refusal phrase, the language, the
-- match method); the ledger shows it in `detail`, beside quarantine errors.
alter table decisions add column detail text;

-- A per-partition stage that already ran on the same input with the same settings is skipped: a nightly
-- run touches only new or changed partitions (datatrove's completion markers, in the store).
create table stage_completions (
    partition_id text not null,
    stage        text not null,
    fingerprint  text not null,                   -- hash of the partition content + the stage's settings
    run_id       text not null,
    result       jsonb not null,                  -- the counts the stage returned
    completed_at timestamptz not null default now(),
    primary key (partition_id, stage)
);

-- MinHash LSH band keys per record line (NearDupSettings.bands int64 values, little-endian bytes: read
-- straight into numpy), kept so that a nightly run computes signatures only for new partitions and finds
-- candidates against everything standing.
create table lsh_keys (
    partition_id text not null,
    line_no      bigint not null,
    keys         bytea not null,
    primary key (partition_id, line_no)
);
