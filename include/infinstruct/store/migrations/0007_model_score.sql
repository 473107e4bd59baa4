-- The model score of Phase 1 scoring: signals->'model_score' is measured by the model named here
-- (scoring.EmbeddingRelevanceScorer.name ...); null = no model score measured. Kept apart from the
-- weights (scores_key): a weight change re-derives quality from it, a model change re-scores.
alter table record_scores add column scorer text;
