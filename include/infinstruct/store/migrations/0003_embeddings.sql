-- Sentence embeddings, computed once: the model is the expensive part of embedding decontamination and
-- semantic dedup (MiniLM ~130 texts/s on 2 cores), so a record's vector is kept for every later stage and run.

-- One vector per (model, record). Portable on purpose: bytea, not pgvector's `vector`, so any PostgreSQL
-- (the machine's 15 has no pgvector) holds it; a pgvector search index is built from it where available.
-- Rows are facts about content, not decisions of a partition: never deleted by a re-run.
create table embedding_cache (
    model      text not null,                   -- EmbeddingSettings.fingerprint: what produced the vector
    record_id  text not null,                   -- the record whose instruction (user turns joined by "\n") was embedded
    vector     bytea not null,                  -- float32 little-endian; dimension = octet_length(vector) / 4
    created_at timestamptz not null default now(),
    primary key (model, record_id)
);
