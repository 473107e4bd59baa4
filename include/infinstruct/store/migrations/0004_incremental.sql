-- Incremental whole-dataset stages (dedup, near_dedup, ...): which full pass the stored decisions
-- belong to. A stage's per-partition completion fingerprint includes this generation, so a full pass
-- (first run, changed settings, a changed or removed partition) invalidates every later stage's
-- completions, while a pass that only decided new partitions keeps them.
create table dataset_stages (
    dataset     text not null,
    stage       text not null,
    generation  text not null,                    -- run id of the stage's last full pass over the dataset
    updated_at  timestamptz not null default now(),
    primary key (dataset, stage)
);
