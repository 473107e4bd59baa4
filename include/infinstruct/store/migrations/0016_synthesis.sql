-- Phase 2 (synth/): one synthesis run per run of the infinstruct_synthesis DAG, on one Phase-1 release.
create table synth_runs (
    run_id          text primary key,
    dataset         text not null,
    release_version integer not null,
    release_path    text not null,
    recipe          jsonb not null,                -- the snapshot every task of the run reads
    recipe_hash     text not null,
    status          text not null default 'running',   -- running | succeeded | failed
    started_at      timestamptz not null default now(),
    finished_at     timestamptz
);

-- The seeds a run evolves (synth/seeds): released records picked for rare labels, several abilities,
-- hardness and the weak categories of the last diagnosis; `batch` is what the LLM tasks are mapped over.
create table synth_seeds (
    run_id        text not null,
    record_id     text not null,
    batch         integer not null,
    rank          integer not null,
    score         double precision not null,
    why           text[] not null,                -- rare_label | multi_ability | hard | weak_category
    categories    text[] not null default '{}',
    hardness      double precision,
    hardness_kind text,                           -- ifd | proxy
    instruction   text not null,
    primary key (run_id, record_id)
);
create index synth_seeds_batch on synth_seeds (run_id, batch);

-- Every child an evolution produced, kept or dropped, and what became of it: the synthetic ledger.
-- A task replaces its batch's rows (evolve) or columns (respond, judge, diagnose), so a re-run is safe.
create table synth_children (
    run_id         text not null,
    child_id       text not null,                 -- hash of parent, operation, round and the evolved text
    batch          integer not null,
    root_id        text not null,                 -- the seed: a record id of the Phase-1 release
    parent_id      text not null,                 -- the seed, or the child it evolved from
    round          integer not null,              -- 1 = evolved from the seed
    operation      text not null,                 -- add_constraints | deepen | concretise | reasoning_steps | complicate_input | breadth
    prompt_version text not null,                 -- the template's name and the hash of its text
    instruction    text not null,
    verdict        text not null,                 -- kept | dropped
    stage          text not null,                 -- the stage that decided last: evolution | response | judging
    reason         text,                          -- why it was dropped (evolution:*, response:*, judge:*)
    score          double precision,              -- evolution: cosine to the parent; judging: the reward
    detail         text,
    conversation   jsonb,                         -- the child's conversation once answered: [{role, content}]
    judge          jsonb,                         -- per-dimension scores, flags, rationale
    reward         double precision,
    student        jsonb,                         -- diagnosis: the student's answer and its grade
    primary key (run_id, child_id)
);
create index synth_children_batch on synth_children (run_id, batch);

-- Categories where the students failed (synth/diagnosis): the report of a run, and the next run's seeds.
create table synth_diagnosis (
    run_id     text not null,
    dataset    text not null,
    category   text not null,
    graded     integer not null,
    failed     integer not null,
    fail_rate  double precision not null,
    mean_score double precision,
    weak       boolean not null,
    primary key (run_id, category)
);

-- The records of the release a run works on (filled by its tagging tasks, part by part): what its gates and
-- seed selection join, instead of shipping a million ids around.
create table synth_release_records (
    run_id    text not null,
    record_id text not null,
    part      text not null,
    primary key (run_id, record_id)
);
