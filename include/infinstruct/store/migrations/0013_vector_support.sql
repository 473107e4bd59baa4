-- Whether pgvector really works on this server (vector_probe.py), proven once per server start: a pgvector
-- built for another CPU passes `create extension`, then kills its backend on the first real distance.
create table vector_support (
    server_started_at timestamptz not null,      -- pg_postmaster_start_time(): a restarted server probes again
    probe             text not null,             -- hash of the probe's steps: a changed probe runs again
    ok                boolean not null,
    detail            text not null,             -- what the probe showed, or which step failed and how
    cpu               text not null,             -- the probing machine's CPU (the server's, when it is local)
    probed_at         timestamptz not null default now(),
    primary key (server_started_at, probe)
);
