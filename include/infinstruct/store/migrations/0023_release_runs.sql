-- Every run that made each release version. A run whose release has the content of the newest version already
-- re-uses that version (and `releases.run_id` moves to it); this table keeps all of them, so an older run's page,
-- `status` and `explain` still show the release it made. `run_releases`: a run's release(s), with the manifest.
create table release_runs (
    run_id   text not null,
    dataset  text not null,
    version  integer not null,
    made_at  timestamptz not null default now(),
    primary key (run_id, dataset),
    foreign key (dataset, version) references releases (dataset, version) on delete cascade
);
insert into release_runs (run_id, dataset, version, made_at)
select run_id, dataset, version, created_at from releases;

create view run_releases as
select rr.run_id, r.dataset, r.version, r.content_hash, r.path, r.manifest, r.created_at
from release_runs rr join releases r on r.dataset = rr.dataset and r.version = rr.version;
