"""Phase 2 end to end: the synthesis DAG over a small Phase-1 release, with every LLM role behind the
OpenAI-compatible double of llm_double.py (scripted per prompt; the code under test is the real one).

Specification:
* the DAG tags the release, picks seeds, evolves them for the configured rounds, answers, judges, diagnoses
  and exports `<dataset>/synthetic/vNNNN`: kept children in the record shape (source `synthetic:<operation>`,
  reward = the judge's overall, labels of their seed) next to the foundational records, labelled;
* every child is in the synthetic ledger with its parent, seed, operation, round and prompt version; each
  dropped one says which stage dropped it and why (evolution:refusal, evolution:scaffolding, response:refusal,
  judge:invalid_answer, judge:low_score ...);
* a second run makes zero new requests and gives the same release version; editing one prompt template (the
  judge's) makes exactly the requests that template builds;
* the diagnosis (where the student failed) is stored, and the run on the next release favours the seeds of its
  weak categories (a run on the same release again is a re-run: the same seeds).
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from conftest import ROOT, publish, run_dedup_steps, write_jsonl, write_recipe
from llm_double import JudgeDouble

SEEDS = {  # instruction -> its abilities (what the scripted tagger says)
    "Write a Python function that reverses a linked list.": ["Python programming", "data structures"],
    "Explain why the sky is blue during the day.": ["physics", "atmospheric science"],
    "Compute 12 * 17 and show the working.": ["arithmetic", "mathematical reasoning"],
    "Give three tips for writing a cover letter.": ["persuasive writing", "career advice"],
}
UNTAGGED = "Translate 'good morning' into Spanish."  # the tagger's answer never fits: no labels, not a seed


def scripted(body: dict) -> str:
    """The double's answer to each kind of Phase-2 request, recognised by its prompt."""
    prompt = body["messages"][-1]["content"]
    if "List the specific abilities" in prompt:
        instruction = prompt.split("Instruction:\n", 1)[1]
        return json.dumps({"abilities": SEEDS[instruction]}) if instruction in SEEDS else "no idea"
    if prompt.startswith(("You are a prompt rewriter", "You are a prompt creator")):
        parent = prompt.split("Prompt:\n", 1)[1]
        step = parent.count("Constraint") + 1
        if "sky" in parent:
            return "I'm sorry, but I can't help with that."
        if "cover letter" in parent and step == 2:
            return "Rewrite the given prompt so that it is harder: " + parent
        return f"{parent} Constraint {step}: answer in at most {120 - 20 * step} words and justify each step."
    if "Does the second ask" in prompt:
        return '{"same": false}'
    if prompt.startswith("Rate the assistant's response"):
        instruction = prompt.split("[Instruction]\n", 1)[1].split("\n\n[Response]", 1)[0]
        response = prompt.split("[Response]\n", 1)[1]
        if response.startswith("Student:"):  # diagnosis: the student fails at linked lists
            overall = 2 if "linked list" in instruction else 9
        elif "12 * 17" in instruction and "Constraint 2" in instruction:
            return "a fine answer, I would say"  # never fits the rubric, not even after the repair request
        else:
            overall = 3 if "cover letter" in instruction else 8
        return json.dumps(
            {
                "helpfulness": overall,
                "correctness": overall,
                "instruction_following": overall,
                "clarity": overall,
                "overall": overall,
                "flags": [],
                "rationale": "scripted",
            }
        )
    if body["model"] == "student-model":
        return f"Student: a short attempt at {prompt[:40]}"
    if "linked list" in prompt and "Constraint 2" in prompt:
        return "I'm sorry, but I cannot help with that request."
    return f"Here is a careful answer. First, we restate the task: {prompt[:60]}. Then we solve it step by step."


@pytest.fixture(scope="module")
def double():
    d = JudgeDouble()
    d.answer = scripted
    yield d
    d.close()


def llm_roles(url: str) -> dict:
    roles = {
        role: {"model": "writer-model", "base_url": url, "concurrency": 2, "backoff_seconds": 0.01}
        for role in ("tagger", "evolver", "responder", "judge")
    }
    roles["student"] = {"model": "student-model", "base_url": url, "backoff_seconds": 0.01}
    return {"roles": roles}


def synthesis_recipe(folder: Path, name: str, url: str, **synthesis) -> Path:
    records = [{"instruction": i, "input": "", "output": f"A good answer to: {i}"} for i in [*SEEDS, UNTAGGED]]
    src = write_jsonl(folder / "seeds.alpaca.jsonl", records)
    settings = {
        "seeds": {"max_seeds": 4, "batch_size": 2, "hardness": "proxy"},
        "evolution": {"rounds": 2, "max_parent_similarity": 0.995},
        "diagnosis": {"fail_below": 5, "weak_fail_rate": 0.5},
        **synthesis,
    }
    return write_recipe(
        folder,
        name,
        [{"name": "seeds", "path": str(src), "format": "alpaca"}],
        semantic_dedup=None,
        tagging={},
        llm=llm_roles(url),
        synthesis=settings,
    )


@pytest.fixture(scope="module")
def released(tmp_path_factory, engine, double):
    """A Phase-1 release of the five records, and its recipe."""
    folder = tmp_path_factory.mktemp("synthesis")
    recipe = synthesis_recipe(folder, f"syn-{uuid.uuid4().hex[:6]}", double.url)
    out = folder / "releases"
    publish(run_dedup_steps(recipe), out)
    return recipe, out


@pytest.fixture(scope="module")
def dag(airflow_home):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    return bag.dags["infinstruct_synthesis"]


def test_the_dag_is_the_declared_stages_scheduled_on_the_release_asset(dag):
    from infinstruct.stages import LLM_POOL, SYNTHESIS_STAGES, Kind

    for spec in SYNTHESIS_STAGES:  # mapped over the release's files (the plan) or the seed batches
        task = dag.task_dict[spec.task]
        assert task.is_mapped == spec.mapped
        assert task.upstream_task_ids == set(spec.after) | ({spec.over or "plan_release"} if spec.mapped else set())
        assert task.pool == (spec.pool or "default_pool")
    assert {s.task for s in SYNTHESIS_STAGES if s.kind is Kind.BATCH} == {"evolve", "respond", "judge", "diagnose"}
    assert all(dag.task_dict[t].pool == LLM_POOL for t in ("tag_records", "evolve", "respond", "judge", "diagnose"))
    assert "infinstruct_release" in str(dag.timetable.asset_condition)  # each release triggers a run
    assert set(dag.params.keys()) == {"recipe", "release", "out_dir"}


def synthesize(dag, recipe: Path, out: Path):
    dag_run = dag.test(run_conf={"recipe": str(recipe), "release": str(out), "out_dir": str(out)})
    failed = {ti.task_id for ti in dag_run.get_task_instances() if str(ti.state) != "success"}
    assert str(dag_run.state) == "success", failed
    return dag_run.run_id


def children(engine, run_id: str) -> dict[str, dict]:
    """instruction -> its row in synth_children."""
    with engine.connect() as conn:
        rows = conn.execute(sa.text("select * from synth_children where run_id = :r"), {"r": run_id}).mappings()
        return {r["instruction"]: dict(r) for r in rows}


def test_the_dag_evolves_answers_judges_and_exports_every_child_with_its_reason(dag, engine, released, double):
    recipe, out = released
    run_id = synthesize(dag, recipe, out)
    made = children(engine, run_id)
    outcome = {
        (re.sub(r" Constraint.*", "", text)[:20], row["round"]): (row["verdict"], row["reason"])
        for text, row in made.items()
    }
    assert outcome == {
        ("Write a Python funct", 1): ("kept", None),
        ("Write a Python funct", 2): ("dropped", "response:refusal"),
        ("I'm sorry, but I can", 1): ("dropped", "evolution:refusal"),
        ("Compute 12 * 17 and ", 1): ("kept", None),
        ("Compute 12 * 17 and ", 2): ("dropped", "judge:invalid_answer"),
        ("Give three tips for ", 1): ("dropped", "judge:low_score"),
        ("Rewrite the given pr", 2): ("dropped", "evolution:scaffolding"),
    }
    with engine.connect() as conn:
        seeds = dict(
            conn.execute(
                sa.text("select instruction, record_id from synth_seeds where run_id = :r"), {"r": run_id}
            ).all()
        )
    assert set(seeds) == set(SEEDS)  # the record the tagger could not label is no seed
    for row in made.values():  # lineage: round 1 from its seed, round 2 from a round-1 child of the same seed
        parent = seeds.get(next(i for i, r in seeds.items() if r == row["root_id"]))
        assert (
            row["parent_id"] == parent
            if row["round"] == 1
            else row["parent_id"] in {c["child_id"] for c in made.values()}
        )
        assert row["prompt_version"].startswith("evolve_") and row["operation"] in row["prompt_version"]

    release = Path(
        json.loads((out / Path(recipe).stem / "synthetic" / "v0001" / "manifest.json").read_text())["foundation"][
            "path"
        ]
    )
    folder = out / Path(recipe).stem / "synthetic" / "v0001"
    records = pd.read_parquet(folder / "data")
    synthetic = records[records.source.str.startswith("synthetic:")]
    assert len(synthetic) == 2 and synthetic.reward.tolist() == [8.0, 8.0]
    assert all(len(c) == 2 and c[0]["from"] == "human" and c[1]["from"] == "gpt" for c in synthetic.conversations)
    labels = {tuple(label["ability_en"]) for label in synthetic.label}
    assert labels == {("python programming", "data structure"), ("arithmetic", "mathematical reasoning")}
    foundation = records[~records.source.str.startswith("synthetic:")]
    assert len(foundation) == len(pd.read_parquet(release / "data")) == 5
    assert sum(1 for label in foundation.label if len(label["ability_en"])) == 4  # labelled where the tagger could
    ledger = pd.read_parquet(folder / "ledger.parquet")
    assert len(ledger) == len(made) and set(ledger.record_id) == {r["child_id"] for r in made.values()}
    assert ledger[ledger.verdict == "dropped"].reason.notna().all()
    card = (folder / "README.md").read_text()
    assert "evolution:refusal" in card and "## Diagnosis" in card

    # a second run asks nothing again and gives the same release
    sent = double.count()
    again = synthesize(dag, recipe, out)
    assert double.count() == sent
    assert not (out / Path(recipe).stem / "synthetic" / "v0002").exists()
    assert {(r["instruction"], r["verdict"], r["reason"]) for r in children(engine, again).values()} == {
        (r["instruction"], r["verdict"], r["reason"]) for r in made.values()
    }


def test_an_edited_template_asks_again_exactly_what_it_builds(dag, engine, released, double, tmp_path):
    import yaml

    from infinstruct.synth.prompts import TEMPLATES

    recipe, out = released
    synthesize(dag, recipe, out)  # everything cached
    edited = TEMPLATES["judge"].replace("Rate the assistant's response", "Rate the assistant's response carefully")
    raw = yaml.safe_load(Path(recipe).read_text())
    raw["synthesis"]["prompts"] = {"judge": edited}
    edited_recipe = tmp_path / Path(recipe).name  # the same dataset, one template edited
    edited_recipe.write_text(yaml.safe_dump(raw))
    before = double.count()
    run_id = synthesize(dag, edited_recipe, out)
    new = double.requests[before:]
    judged = [r for r in children(engine, run_id).values() if r["stage"] == "judging"]
    graded = [r for r in judged if r["student"] is not None]
    # the judge's requests (one repair for the verdict that does not fit), and the grades of the students' answers
    assert new and all(
        r["body"]["messages"][0]["content"].startswith("Rate the assistant's response carefully") for r in new
    )
    assert len(new) == len(judged) + 1 + len(graded)


def test_the_diagnosis_steers_the_next_run_to_the_weak_categories(dag, engine, released):
    recipe, out = released
    first = synthesize(dag, recipe, out)
    from infinstruct.synth.diagnosis.stage import diagnosis_report

    report = {r["category"]: r for r in diagnosis_report(engine, first)}
    weak = {c for c, r in report.items() if r["weak"]}
    assert weak and all(report[c]["failed"] == report[c]["graded"] for c in weak)  # linked lists: every answer failed
    folder = out / Path(recipe).stem / "synthetic"
    latest = folder / (folder / "LATEST").read_text().strip()
    from infinstruct.synth.settings import DiagnosisSettings

    assert "programming and software development" in weak  # Phase 1's top-up: 1 + the fail rate, by Phase-1 domain
    assert json.loads((latest / "weak_domains.json").read_text()) == {
        DiagnosisSettings().phase1_domain(c): 2.0 for c in weak
    } and "code" in {DiagnosisSettings().phase1_domain(c) for c in weak}
    from infinstruct.curate.scoring.domains import DomainSettings
    from infinstruct.curate.selection.quotas import load_boosts

    assert load_boosts(str(latest / "weak_domains.json"), list(DomainSettings().resolved()))  # Phase 1 reads it
    rerun = synthesize(dag, recipe, out)  # the same release again: a re-run, the same seeds
    with engine.connect() as conn:
        assert "weak_category" not in {
            w
            for (why,) in conn.execute(sa.text("select why from synth_seeds where run_id = :r"), {"r": rerun})
            for w in why
        }
    source = Path(recipe).parent / "seeds.alpaca.jsonl"  # the next night: one more record, a new Phase-1 release
    source.write_text(
        source.read_text()
        + json.dumps({"instruction": "Name a prime number above 100.", "input": "", "output": "101"})
        + "\n"
    )
    publish(run_dedup_steps(recipe), out)
    nxt = synthesize(dag, recipe, out)
    with engine.connect() as conn:
        seeds = conn.execute(
            sa.text("select instruction, why, rank from synth_seeds where run_id = :r order by rank"), {"r": nxt}
        ).all()
    assert seeds[0].instruction == "Write a Python function that reverses a linked list."
    assert "weak_category" in seeds[0].why and all("weak_category" not in s.why for s in seeds[1:])


def with_synthesis(recipe: Path, folder: Path, roles: dict | None = None, **synthesis) -> Path:
    """The recipe with some `synthesis` settings (and LLM roles) changed, written to `folder`."""
    import yaml

    raw = yaml.safe_load(recipe.read_text())
    raw["synthesis"] = {**raw["synthesis"], **synthesis}
    for role, settings in (roles or {}).items():
        raw["llm"]["roles"][role] |= settings
    path = folder / recipe.name
    path.write_text(yaml.safe_dump(raw))
    return path


def test_conversations_continue_for_the_turns_the_recipe_asks(dag, engine, released, tmp_path):
    recipe, out = released
    run_id = synthesize(dag, with_synthesis(Path(recipe), tmp_path, responses={"turns": 2}), out)
    with engine.connect() as conn:
        kept = (
            conn.execute(
                sa.text("select conversation from synth_children where run_id = :r and verdict = 'kept'"), {"r": run_id}
            )
            .scalars()
            .all()
        )
    assert kept and all([t["role"] for t in c] == ["user", "assistant", "user", "assistant"] for c in kept)
    assert all(c[2]["content"] == "Here is a careful answer." or c[2]["content"] for c in kept)


def test_a_budget_cap_stops_the_step_cleanly_and_the_next_run_continues(dag, engine, released, double, tmp_path):
    recipe, out = released
    capped = with_synthesis(
        Path(recipe),
        tmp_path,
        roles={"evolver": {"model": "budget-model", "concurrency": 1, "max_tokens_per_step": 100}},
    )
    dag_run = dag.test(run_conf={"recipe": str(capped), "release": str(out), "out_dir": str(out)})
    states = {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}
    assert str(dag_run.state) == "failed" and states["export_synthesis"] == "upstream_failed"
    stopped = [
        ti.try_number for ti in dag_run.get_task_instances() if ti.task_id == "evolve" and str(ti.state) == "failed"
    ]
    assert stopped and set(stopped) == {1}  # each batch's step stopped at its cap, and was not retried
    with engine.connect() as conn:
        paid = conn.execute(
            sa.text("select count(*) from llm_calls where run_id = :r and role = 'evolver'"), {"r": dag_run.run_id}
        ).scalar()
        status = conn.execute(
            sa.text("select status from synth_runs where run_id = :r"), {"r": dag_run.run_id}
        ).scalar()
    assert paid >= 2 and status == "failed"  # each answer costs the double's 55 tokens: the third is not sent
    uncapped = with_synthesis(Path(recipe), tmp_path, roles={"evolver": {"model": "budget-model"}})
    run_id = synthesize(dag, uncapped, out)
    with engine.connect() as conn:
        again = conn.execute(
            sa.text("select count(*) from llm_calls where run_id = :r and role = 'evolver'"), {"r": run_id}
        ).scalar()
        children_made = conn.execute(
            sa.text("select count(*) from synth_children where run_id = :r"), {"r": run_id}
        ).scalar()
    assert again + paid == children_made  # one evolver request per child, none paid twice


def test_the_ui_shows_a_synthesis_run(dag, engine, released):
    import importlib.util

    from fastapi.testclient import TestClient

    recipe, out = released
    run_id = synthesize(dag, recipe, out)
    spec = importlib.util.spec_from_file_location("infinstruct_views", ROOT / "plugins" / "infinstruct_views.py")
    plugin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin)
    plugin.app.dependency_overrides[plugin.get_user] = lambda: None  # past Airflow's login
    client = TestClient(plugin.app)
    assert run_id in client.get("/synthesis/").text
    page = client.get(f"/synthesis/run/{run_id}").text
    assert "evolution:refusal</code>" in page and "judge:low_score</code>" in page  # why children were dropped
    assert "every answer came from the cache" in page and "programming and software development" in page
    with engine.connect() as conn:  # a run that paid for its answers shows them by role
        paid = conn.execute(
            sa.text(
                "select c.run_id from llm_calls c join synth_runs s using (run_id) where"
                " s.dataset = :d and c.role = 'evolver' limit 1"
            ),
            {"d": Path(recipe).stem},
        ).scalar()
    page = client.get(f"/synthesis/run/{paid}").text
    assert "<td>evolver</td>" in page and "<td>judge</td>" in page and "<td>tagger</td>" in page
    assert client.get("/synthesis/run/no-such-run").status_code == 404
