-- The partition key a run was made for (a night's date from the schedule or a backfill, or
-- `infinstruct run --partition`): its plan reads the sources' `{partition}` folders up to it. NULL: all.
alter table runs add column partition_key text;
