-- What plan found in each source file (partitions.ScannedFile): a nightly plan reuses a file's shards
-- and checksums while its size, mtime, ctime and inode are unchanged instead of reading it again.
create table source_files (
    dataset       text not null,
    source        text not null,
    path          text not null,
    size          bigint not null,
    mtime_ns      bigint not null,
    ctime_ns      bigint not null,
    inode         bigint not null,
    shard_lines   integer not null,
    scanned_at_ns bigint not null,   -- the clock just before the file was read (for the racy check)
    shards        jsonb not null,    -- [[start, end, first line, sha256], ...] per shard
    primary key (dataset, source, path)
);
