-- The funnel as each run saw it: when a deciding stage's step returns, the counts of the run's partitions at that
-- stage are stored here (store/stage_counts.py), never recomputed later. One row per (run, stage, partition):
-- the records standing before the stage (ingest: the input lines), the lines it dropped by reason (ingest: the
-- quarantined ones), and those standing after it. A stage of a running run with fewer rows than the run has
-- partitions is not finished: the run's page shows it pending instead of counting undecided records as kept.
-- No foreign key to partitions: a past run's counts outlive a partition that a later plan forgets.
create table run_stage_counts (
    run_id        text not null references runs on delete cascade,
    stage         text not null,                   -- a ledger stage (stages.ledger_order)
    partition_id  text not null,
    source        text not null,
    standing_in   bigint not null,
    dropped       jsonb not null,                  -- {reason: lines}
    standing_out  bigint not null,
    taken_at      timestamptz not null default now(),
    primary key (run_id, stage, partition_id)
);
