-- Phase 1 selection: per-record scores (measured once, re-derived when the recipe's weights change)
-- and the persistent selection a nightly run continues from.

-- Facts about a record's content. `signals` are scoring.measure_signals (version SIGNALS_VERSION);
-- quality/difficulty are the formulas over them under the weights hashed in `scores_key`; domain and
-- confidence come from the classifier hashed in `domain_key`. A new key re-derives only its columns.
create table record_scores (
    record_id       text primary key,
    signals_version integer not null,
    signals         jsonb not null,
    scores_key      text not null,                  -- hash of ScoringSettings
    quality         real not null,
    difficulty      real not null,
    domain_key      text not null,                  -- hash of DomainSettings + embedding model
    domain          text not null,
    confidence      real not null,
    scored_at       timestamptz not null default now()
);

-- The records selected for a dataset, per domain in the order they were accepted: a nightly run keeps
-- them (the first `quota` of each domain) and fills only what the quotas still require.
create table selection (
    dataset     text not null,
    record_id   text not null,
    domain      text not null,
    position    integer not null,                    -- 1-based order of acceptance within the domain
    rank_score  real not null,
    run_id      text not null,                       -- the run that first selected it
    primary key (dataset, record_id)
);
create index selection_domain on selection (dataset, domain, position);

-- What the persisted selection was ranked with: a change (weights, domains, targets, seed, threshold)
-- starts the selection over. `result` is the last pass's summary (quotas, counts, DSIR shift) for the gate.
create table selection_state (
    dataset     text primary key,
    fingerprint text not null,
    run_id      text not null,
    result      jsonb not null,
    updated_at  timestamptz not null default now()
);
