-- Ability tags per record (synth/tagging/stage.py), once per content and tagger: `tagger` hashes what produced
-- them (the tagger role's model and sampling, the prompt version, the normalisation and the categories), so a
-- re-run tags nothing twice and a changed tagger tags again. A record whose answer did not fit, even after its
-- repair request, has no labels and says why in `error`.
create table record_tags (
    record_id   text not null,
    tagger      text not null,
    abilities   text[] not null default '{}',   -- fine-grained labels, normalised and merged (label.ability_en)
    categories  text[] not null default '{}',   -- their coarse categories, distinct, in label order (label.cate_ability_en)
    raw         text,                           -- the tagger's answer as it came
    error       text,
    run_id      text,
    tagged_at   timestamptz not null default now(),
    primary key (record_id, tagger)
);
