-- Incremental exact dedup looks up the standing records that ask a new record's instruction, instead of
-- reading every record. A hash index: equality is all it serves, and it is a third of a btree's size on
-- these 32-character hashes and cheaper for ingest's COPY to maintain.
create index records_instruction_key on records using hash (instruction_key);
