-- Rule statistics carry one version per measurement (curate/rules/filters.MEASUREMENTS): a new or changed
-- measurement is taken for the stored records alone. NULL: stored under the former single version (`version`).
alter table record_stats add column versions jsonb;
