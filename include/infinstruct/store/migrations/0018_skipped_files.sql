-- Files a run's sources match that its plan left out, and why (sources.plan.SkipReason: empty_file,
-- broken_symlink): a file that yields no partition is reported, never silently missing.
create table skipped_files (
    run_id  text not null references runs on delete cascade,
    source  text not null,
    path    text not null,
    reason  text not null,
    detail  text not null,
    primary key (run_id, source, path)
);
