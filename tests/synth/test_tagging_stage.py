"""The tagging step over a release's files: labels per released record from the tagger role, on a real PostgreSQL.

Specification (the tagger is the OpenAI-compatible double, then the real embedded SmolLM2):
* every record of the release gets one row of `record_tags` for this tagger: its labels normalised and
  merged, with their coarse categories, or, when the answer does not fit even after its repair, the error
  and no labels; dropped records are not tagged;
* a second pass asks nothing (tags are kept per record and tagger);
* with the embedded SmolLM2 as the tagger, whatever it answers, every kept record ends with a row.
"""

from __future__ import annotations

import json
import uuid

import pytest
import sqlalchemy as sa

from conftest import kept_record_ids, publish, run_dedup_steps, sample_recipe, write_jsonl, write_recipe
from infinstruct.ml.llm import BASE_URL_ENV
from infinstruct.ml.llm_server import stop_local_llm
from infinstruct.synth import pipeline as synthesis
from llm_double import JudgeDouble

FIRST_USER_TURN = "(select e->>'content' from json_array_elements(r.conversation) e where e->>'role' = 'user' limit 1)"


def tags(engine, run_id: str) -> dict[str, tuple]:
    """record id -> (its first user turn, labels, categories, error) of the run's tagged records."""
    with engine.connect() as conn:
        return {
            row[0]: tuple(row[1:])
            for row in conn.execute(
                sa.text(
                    f"select distinct r.record_id, {FIRST_USER_TURN}, t.abilities, t.categories, t.error from record_tags t"
                    " join records r on r.record_id = t.record_id join run_partitions rp on rp.partition_id = r.partition_id"
                    " and rp.run_id = :r"
                ),
                {"r": run_id},
            )
        }


def by_instruction(tagged: dict[str, tuple]) -> dict[str, tuple]:
    return {instruction: rest for instruction, *rest in tagged.values()}


def tag_release(recipe, out) -> list[dict]:
    """The synthesis DAG's first tasks over the release in `out`: start, plan, tag every release file."""
    run_id = f"tags-{uuid.uuid4().hex[:8]}"
    synthesis.start_synthesis(run_id, recipe, out)
    return [synthesis.tag_release_part(run_id, part) for part in synthesis.plan_release(run_id)]


@pytest.fixture
def double():
    d = JudgeDouble()
    yield d
    d.close()


def test_every_kept_record_is_tagged_once_with_labels_or_its_error(engine, double, tmp_path):
    def answer(body):
        asked = next(m["content"] for m in reversed(body["messages"]) if "Instruction:\n" in m["content"])
        instruction = asked.split("Instruction:\n", 1)[1]  # the record's (a repair request asks about it again)
        if "French" in instruction:
            return "I think it needs French."  # never JSON, not even after the repair request
        if "python" in instruction.lower() or "code" in instruction.lower():
            return json.dumps({"abilities": ["Python Programming.", "programming in Python", "Debugging"]})
        return json.dumps({"abilities": ["General Knowledge", "Explanations"]})

    double.answer = answer
    name = f"tags-{uuid.uuid4().hex[:6]}"
    extra = write_jsonl(
        tmp_path / "extra.alpaca.jsonl",
        [
            {"instruction": "Write Python code that reverses a string.", "input": "", "output": "s[::-1] reverses it."},
            {
                "instruction": "Translate 'the cat sleeps on the warm windowsill' into French.",
                "input": "",
                "output": "Le chat dort sur le rebord chaud de la fenêtre.",
            },
        ],
    )
    recipe = sample_recipe(name)
    recipe["sources"].append({"name": "extra", "path": str(extra), "format": "alpaca"})
    recipe["llm"] = {
        "roles": {
            "tagger": {"base_url": double.url, "model": "tagger-double", "concurrency": 2, "backoff_seconds": 0.001}
        }
    }
    recipe["tagging"] = {}
    recipe["gates"] = {"min_allowed_language_share": 0.9}  # the French line is one of 30 released records
    path = write_recipe(tmp_path, **recipe)
    run_id = run_dedup_steps(path)
    publish(run_id, tmp_path / "out")

    results = tag_release(path, tmp_path / "out")
    tagged = tags(engine, run_id)
    assert set(tagged) == kept_record_ids(engine, run_id)  # every kept record, and only those
    assert sum(r["tagged"] + r["failed"] for r in results) == len(tagged)
    tagged = by_instruction(tagged)
    abilities, categories, error = tagged["Write Python code that reverses a string."]
    assert abilities == ["python programming", "debugging"] and error is None  # merged, normalised, deduplicated
    assert "programming and software development" in categories
    abilities, categories, error = tagged["Translate 'the cat sleeps on the warm windowsill' into French."]
    assert abilities == [] and categories == [] and "Invalid JSON" in error  # kept with its error, no labels
    before = double.count()
    assert all(r["tagged"] == r["failed"] == 0 for r in tag_release(path, tmp_path / "out"))  # asks nothing again
    assert double.count() == before


def test_the_embedded_smollm2_tags_without_breaking_anything(engine, tmp_path, monkeypatch):
    monkeypatch.setenv("INFINSTRUCT_HOME", str(tmp_path))  # its own embedded server, stopped at the end
    monkeypatch.delenv(BASE_URL_ENV, raising=False)
    name = f"smol-{uuid.uuid4().hex[:6]}"
    src = write_jsonl(
        tmp_path / "few.alpaca.jsonl",
        [
            {
                "instruction": "Explain how a binary search works.",
                "input": "",
                "output": "It halves the range each step.",
            },
            {
                "instruction": "Give three tips for a job interview.",
                "input": "",
                "output": "Prepare, listen, follow up.",
            },
        ],
    )
    path = write_recipe(
        tmp_path,
        name,
        [{"name": "few", "path": str(src), "format": "alpaca"}],
        semantic_dedup=None,
        tagging={},
        synthesis={},
    )
    try:
        run_id = run_dedup_steps(path)
        publish(run_id, tmp_path / "out")
        tag_release(path, tmp_path / "out")
        tagged = tags(engine, run_id)
        assert set(tagged) == kept_record_ids(engine, run_id) and len(tagged) == 2
        assert all(
            (abilities and categories and error is None) or (not abilities and error)
            for _, abilities, categories, error in tagged.values()
        )
    finally:
        stop_local_llm()
