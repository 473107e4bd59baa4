-- Semantic dedup: the records it accepted, per dataset and embedding model. A new record is compared
-- with these (nearest neighbours of its instruction embedding), so a nightly run continues from what
-- earlier runs accepted. Vectors stay in embedding_cache; with pgvector the stage also keeps an HNSW
-- index table per dataset and model (created by the stage, see semantic_dedup.py), without it the
-- search is exact over the vectors of these rows.
create table semantic_accepted (
    dataset      text not null,
    model        text not null,                   -- EmbeddingSettings.fingerprint
    record_id    text not null,
    instruction  text not null,                   -- for the essential-word guard against a new record
    run_id       text not null,
    primary key (dataset, model, record_id)
);
