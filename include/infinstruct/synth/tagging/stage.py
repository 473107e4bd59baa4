"""The tagging step: ability labels for released records, from the tagger role.

For every record given that has no tags from this tagger yet (synth.pipeline gives a release file's), the
tagger is asked (one structured request per record, cached, repaired once) which abilities the instruction
needs; the labels are normalised, merged onto known wordings and given coarse categories (`labels`), and
stored per record id in `record_tags`. A record whose answer does not fit is stored with its error and no
labels: recorded, never a crash of the batch.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from infinstruct.config import Recipe
from infinstruct.ml.roles import Role, planned
from infinstruct.synth.tagging.labels import LabelMerger, TagAnswer, TaggingSettings, coarse_category, normalise_label

log = logging.getLogger(__name__)

TAG_PROMPT_VERSION = 2  # 2: one worked example (small models copied the "..." placeholders of v1's format line)
TAG_SYSTEM = "You label instructions with the abilities and the knowledge needed to answer them well."
TAG_PROMPT = (
    "List the specific abilities and knowledge areas needed to answer the instruction below, as 2 to 6 "
    'short noun phrases. Answer with only a JSON object with the key "abilities".\n\nInstruction:\n'
)
EXAMPLE = (
    "Write a SQL query that lists each customer's total spending, highest first.",
    '{"abilities": ["sql", "database querying", "data aggregation"]}',
)
MAX_INSTRUCTION_CHARS = 4_000


def tag_messages(instruction: str) -> list[dict[str, str]]:
    """The tagger's request: the task, one worked example, then the instruction (the last message)."""
    return [
        {"role": "system", "content": TAG_SYSTEM},
        {"role": "user", "content": TAG_PROMPT + EXAMPLE[0]},
        {"role": "assistant", "content": EXAMPLE[1]},
        {"role": "user", "content": TAG_PROMPT + instruction[:MAX_INSTRUCTION_CHARS]},
    ]


def tagger_key(settings: TaggingSettings, chat_settings: Any) -> str:
    """What produced a record's tags: the tagger's model and sampling, the prompt, the label rules."""
    blob = json.dumps(
        [
            TAG_PROMPT_VERSION,
            chat_settings.model,
            chat_settings.temperature,
            chat_settings.top_p,
            chat_settings.max_tokens,
            settings.model_dump(mode="json"),
        ],
        sort_keys=True,
    )
    return f"{chat_settings.model}:prompt=v{TAG_PROMPT_VERSION}:{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def _known_labels(conn: Connection, tagger: str) -> list[str]:
    """This tagger's labels so far, first tagged first (the first wording of a label stays canonical)."""
    return (
        conn.execute(
            sa.text(
                "select label from (select distinct on (label) label, tagged_at from record_tags, unnest(abilities) label"
                " where tagger = :t order by label, tagged_at) x order by tagged_at, label"
            ),
            {"t": tagger},
        )
        .scalars()
        .all()
    )


def tagger_of(recipe: Recipe) -> str:
    """The tagger key of a recipe's tagging (its defaults when the section is absent), without starting a server."""
    return tagger_key(recipe.tagging or TaggingSettings(), planned(recipe.llm.role(Role.TAGGER)))


def tag_records(
    engine: Engine, settings: TaggingSettings, chat: Any, run_id: str, records: list[tuple[str, str]]
) -> dict[str, Any]:
    """Tag (record id, instruction) pairs that this tagger has not tagged yet; returns counts."""
    tagger = tagger_key(settings, chat.settings)
    with engine.connect() as conn:
        done = set(
            conn.execute(
                sa.text("select record_id from record_tags where tagger = :t and record_id = any(:ids)"),
                {"t": tagger, "ids": [r for r, _ in records]},
            ).scalars()
        )
        known = _known_labels(conn, tagger)
    todo = [(record_id, text) for record_id, text in dict(records).items() if record_id not in done]
    if not todo:
        return {"tagged": 0, "failed": 0, "already_tagged": len(done), "tagger": tagger}
    seeds = [int(record_id[:8], 16) for record_id, _ in todo]  # a sampled tagger samples per record, repeatably
    answers = chat.ask_structured(
        [tag_messages(text) for _, text in todo], f"tag-v{TAG_PROMPT_VERSION}", TagAnswer, seeds
    )
    merger = LabelMerger(settings, known)
    stored = []
    for (record_id, _), answer in zip(todo, answers):
        if answer.value is None:
            stored.append({"r": record_id, "a": [], "c": [], "raw": answer.text, "e": answer.error})
            continue
        normalised = list(
            dict.fromkeys(filter(None, (normalise_label(label, settings.synonyms) for label in answer.value.abilities)))
        )[: settings.max_labels]
        if not normalised:  # placeholders, numbers or sentences only: recorded like an answer that did not fit
            stored.append({"r": record_id, "a": [], "c": [], "raw": answer.text, "e": "no usable label in the answer"})
            continue
        canonical = list(dict.fromkeys(merger.add(normalised).values()))
        categories = list(dict.fromkeys(coarse_category(canonical, settings)))
        stored.append({"r": record_id, "a": canonical, "c": categories, "raw": answer.text, "e": None})
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "insert into record_tags (record_id, tagger, abilities, categories, raw, error, run_id)"
                " values (:r, :t, :a, :c, :raw, :e, :run) on conflict (record_id, tagger) do nothing"
            ),
            [{**row, "t": tagger, "run": run_id} for row in stored],
        )
    failed = sum(1 for row in stored if row["e"])
    log.info("tagging: %d records tagged, %d without usable labels (tagger %s)", len(stored) - failed, failed, tagger)
    return {"tagged": len(stored) - failed, "failed": failed, "already_tagged": len(done), "tagger": tagger}
