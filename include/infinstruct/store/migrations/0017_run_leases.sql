-- One lease per dataset (the name its releases are numbered under: `<dataset>` for Phase 1,
-- `<dataset>/synthetic` for Phase 2): the run that holds it is the only run of that dataset doing work.
-- Taken at the run's first task, touched by every task of the run (and every `heartbeat` seconds while one
-- runs), deleted when the run exports or fails. A lease whose heartbeat is older than the stale limit, or whose
-- run is recorded as finished, belongs to a dead holder and is taken over (store/run_lease.py).
create table run_leases (
    dataset      text primary key,
    run_id       text not null,
    phase        text not null,                 -- curation | synthesis: whose runs table holds run_id
    holder       text not null,                 -- host:pid of the task that last touched it (for messages)
    acquired_at  timestamptz not null default now(),
    heartbeat_at timestamptz not null default now()
);
create index run_leases_run on run_leases (run_id, phase);
