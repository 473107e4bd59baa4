-- Every answer an LLM endpoint gave that parsed (llm.JsonChat): looked up before a request is sent, so a
-- re-run, a retried task or a backfill never pays twice. request_hash = sha256 of (base_url, model, prompt
-- version, the exact messages, the request's parameters); response = the whole chat completion as returned,
-- usage = its token counts.
create table llm_responses (
    request_hash text primary key,
    model        text not null,
    response     jsonb not null,
    usage        jsonb,
    created_at   timestamptz not null default now()
);
