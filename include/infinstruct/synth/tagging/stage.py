"""The tagging step: ability labels for the kept records of a partition, from the tagger role.

For every record of the partition that no stage dropped and that has no tags from this tagger yet, the
tagger is asked (one structured request per record, cached, repaired once) which abilities the instruction
needs; the labels are normalised, merged onto known wordings and given coarse categories (`labels`), and
stored per record id in `record_tags`. A record whose answer does not fit is stored with its error and no
labels: recorded, never a crash of the partition.
"""
from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from infinstruct.config import Recipe
from infinstruct.ml.roles import Role, chat_for
from infinstruct.record.conversation import instruction_text
from infinstruct.synth.tagging.labels import LabelMerger, TagAnswer, TaggingSettings, coarse_category, normalise_label

log = logging.getLogger(__name__)

TAG_PROMPT_VERSION = 1
TAG_SYSTEM = "You label instructions with the abilities and the knowledge needed to answer them well."
TAG_PROMPT = ("List the specific abilities and knowledge areas needed to answer the instruction below, as 2 to 6 "
              "short noun phrases (for example \"python programming\", \"algebra\", \"persuasive writing\"). "
              "Answer with only a JSON object: {\"abilities\": [\"...\", \"...\"]}\n\nInstruction:\n")
MAX_INSTRUCTION_CHARS = 4_000


def tag_messages(instruction: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": TAG_SYSTEM},
            {"role": "user", "content": TAG_PROMPT + instruction[:MAX_INSTRUCTION_CHARS]}]


def tagger_key(settings: TaggingSettings, chat_settings: Any) -> str:
    """What produced a record's tags: the tagger's model and sampling, the prompt, the label rules."""
    blob = json.dumps([TAG_PROMPT_VERSION, chat_settings.model, chat_settings.temperature, chat_settings.top_p,
                       chat_settings.max_tokens, settings.model_dump(mode="json")], sort_keys=True)
    return f"{chat_settings.model}:prompt=v{TAG_PROMPT_VERSION}:{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def _known_labels(conn: Connection, tagger: str) -> list[str]:
    """This tagger's labels so far, first tagged first (the first wording of a label stays canonical)."""
    return conn.execute(sa.text(
        "select label from (select distinct on (label) label, tagged_at from record_tags, unnest(abilities) label"
        " where tagger = :t order by label, tagged_at) x order by tagged_at, label"), {"t": tagger}).scalars().all()


# the partition's records that no stage dropped (the release's) and that this tagger has not tagged
_UNTAGGED = sa.text("""
select r.record_id, r.conversation::text from records r
where r.partition_id = :p
  and not exists (select 1 from decisions d where d.partition_id = r.partition_id and d.line_no = r.line_no
                  and d.verdict = 'dropped')
  and not exists (select 1 from record_tags t where t.record_id = r.record_id and t.tagger = :t)
order by r.line_no""")


def tag_partition(engine: Engine, recipe: Recipe, run_id: str, partition_id: str) -> dict[str, Any]:
    """Tag the partition's kept records that this tagger has not tagged; returns counts."""
    settings = recipe.tagging
    if settings is None:
        return {"partition_id": partition_id, "disabled": True}
    chat = chat_for(recipe.llm, Role.TAGGER, engine, run_id=run_id)
    tagger = tagger_key(settings, chat.settings)
    with engine.connect() as conn:
        rows = conn.execute(_UNTAGGED, {"p": partition_id, "t": tagger}).all()
        known = _known_labels(conn, tagger)
    todo = list({record_id: orjson.loads(conversation) for record_id, conversation in rows}.items())   # one per content
    if not todo:
        return {"partition_id": partition_id, "tagged": 0, "failed": 0, "tagger": tagger}
    instructions = [instruction_text((t["role"], t["content"]) for t in conversation) for _, conversation in todo]
    seeds = [int(record_id[:8], 16) for record_id, _ in todo]   # a sampled tagger samples per record, repeatably
    answers = chat.ask_structured([tag_messages(text) for text in instructions], f"tag-v{TAG_PROMPT_VERSION}",
                                  TagAnswer, seeds)
    merger = LabelMerger(settings, known)
    stored = []
    for (record_id, _), answer in zip(todo, answers):
        if answer.value is None:
            stored.append({"r": record_id, "a": [], "c": [], "raw": answer.text, "e": answer.error})
            continue
        normalised = list(dict.fromkeys(filter(None, (normalise_label(label, settings.synonyms)
                                                      for label in answer.value.abilities))))[:settings.max_labels]
        canonical = list(dict.fromkeys(merger.add(normalised).values()))
        categories = list(dict.fromkeys(coarse_category(canonical, settings)))
        stored.append({"r": record_id, "a": canonical, "c": categories, "raw": answer.text, "e": None})
    with engine.begin() as conn:
        conn.execute(sa.text(
            "insert into record_tags (record_id, tagger, abilities, categories, raw, error, run_id)"
            " values (:r, :t, :a, :c, :raw, :e, :run) on conflict (record_id, tagger) do nothing"),
            [{**row, "t": tagger, "run": run_id} for row in stored])
    failed = sum(1 for row in stored if row["e"])
    log.info("tagging %s: %d records tagged, %d without usable labels (tagger %s)", partition_id,
             len(stored) - failed, failed, tagger)
    return {"partition_id": partition_id, "tagged": len(stored) - failed, "failed": failed, "tagger": tagger}
