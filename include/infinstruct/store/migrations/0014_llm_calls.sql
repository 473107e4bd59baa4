-- Every request an LLM step sends (ml/llm.py JsonChat), one row per attempt: how it ended, how long it took,
-- what it cost. A cached answer sends nothing and has no row: it was not paid for again.
create table llm_calls (
    id                bigserial primary key,
    request_hash      text not null,                 -- llm_responses.request_hash of the answer it asked for
    run_id            text,                          -- the run whose step sent it (the per-run budget sums these)
    role              text,                          -- tagger, evolver, responder, judge, student
    model             text not null,
    base_url          text not null,
    attempt           integer not null,              -- 1 = the first try
    status            text not null,                 -- ok | invalid_answer | rate_limited | server_error | connection_error | refused
    error             text,
    latency_ms        integer not null,
    prompt_tokens     integer,
    completion_tokens integer,
    cost_usd          double precision,              -- from the settings' prices; null when none are set
    called_at         timestamptz not null default now()
);
create index llm_calls_request on llm_calls (request_hash);
create index llm_calls_run on llm_calls (run_id);
