"""Specification of recipes: `config.load_recipe(path)` returns `(Recipe, resolved path)` or raises
RecipeError with a message naming the problem; `config.recipe_hash` identifies what shapes the output;
`plan.source_files` expands a source's path or glob into files.

Pure unit tests on small files under tmp_path; no database.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import SAMPLE_RECIPE, write_jsonl, write_recipe
from infinstruct.config import RecipeError, load_recipe, recipe_hash
from infinstruct.sources import plan

ALPACA_SOURCE = {"name": "tasks", "path": "data/tasks.jsonl", "format": "alpaca"}


@pytest.fixture
def folder(tmp_path) -> Path:
    """A recipe folder with a data/ subfolder holding one small alpaca file."""
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "tasks.jsonl", [{"instruction": "Say hi.", "output": "Hi!"}])
    return tmp_path


def error_of(path: Path) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    return str(info.value)


# --------------------------------------------------------------------------------------------------
# Valid recipes
# --------------------------------------------------------------------------------------------------


def test_a_valid_recipe_resolves_relative_source_paths_against_its_folder(folder, monkeypatch):
    path = write_recipe(
        folder,
        "demo",
        [
            ALPACA_SOURCE,
            {
                "name": "qa",
                "path": "data/*.json",
                "format": "custom",
                "fields": {"user": "question", "assistant": "answer"},
            },
            {"name": "abs", "path": str(folder / "data" / "tasks.jsonl"), "format": "alpaca"},
        ],
        ingest={"shard_lines": 5},
    )
    monkeypatch.chdir("/")  # the working directory plays no part

    recipe, resolved = load_recipe(path)

    assert resolved == path.resolve()
    assert recipe.name == "demo"
    assert [s.path for s in recipe.sources] == [
        str((folder / "data" / "tasks.jsonl").resolve()),
        str((folder / "data").resolve() / "*.json"),
        str(folder / "data" / "tasks.jsonl"),
    ]
    assert recipe.source("qa").fields == {"user": "question", "assistant": "answer"}
    assert recipe.ingest.shard_lines == 5
    assert recipe.ingest.batch_size == 5_000, "unset settings keep their defaults"
    assert plan.source_files(recipe.source("tasks")) == [str((folder / "data" / "tasks.jsonl").resolve())]


def test_source_priority_defaults_to_the_order_in_the_recipe(folder):
    path = write_recipe(
        folder,
        "demo",
        [ALPACA_SOURCE, {**ALPACA_SOURCE, "name": "second"}, {**ALPACA_SOURCE, "name": "preferred", "priority": -1}],
    )
    recipe, _ = load_recipe(path)
    assert [recipe.priority(s.name) for s in recipe.sources] == [0, 1, -1]


def test_the_bundled_sample_recipe_loads_and_its_files_exist():
    recipe, _ = load_recipe(SAMPLE_RECIPE)
    assert recipe.name == "sample"
    assert {s.format for s in recipe.sources} == {"alpaca", "sharegpt", "messages", "custom"}
    for source in recipe.sources:
        assert Path(source.path).is_absolute()
        assert plan.source_files(source), source.name


# --------------------------------------------------------------------------------------------------
# Invalid recipes: a RecipeError naming what is wrong
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, bad_key",
    [
        ({"sources_extra": []}, "sources_extra"),
        ({"ingest": {"shard_line": 5}}, "shard_line"),
        ({"gates": {"min_turn_char": 2}}, "min_turn_char"),
    ],
    ids=["top-level", "ingest", "gates"],
)
def test_an_unknown_key_is_an_error_naming_it(folder, extra, bad_key):
    message = error_of(write_recipe(folder, "demo", [ALPACA_SOURCE], **extra))
    assert bad_key in message
    assert "demo.yaml" in message, "the message names the recipe file"


def test_a_misspelt_source_key_is_an_error_naming_it(folder):
    source = {"name": "tasks", "path": "data/tasks.jsonl", "fromat": "alpaca"}
    message = error_of(write_recipe(folder, "demo", [source]))
    assert "fromat" in message
    assert "format" in message.replace("fromat", ""), "the required key it replaced is reported missing too"


def test_custom_format_without_fields_fails(folder):
    message = error_of(write_recipe(folder, "demo", [{"name": "qa", "path": "data/qa.json", "format": "custom"}]))
    assert "custom" in message and "fields" in message


def test_custom_fields_need_user_and_assistant(folder):
    source = {"name": "qa", "path": "data/qa.json", "format": "custom", "fields": {"user": "question"}}
    assert "assistant" in error_of(write_recipe(folder, "demo", [source]))


def test_custom_fields_must_be_known_conversation_fields(folder):
    source = {
        "name": "qa",
        "path": "data/qa.json",
        "format": "custom",
        "fields": {"user": "q", "assistant": "a", "context": "c"},
    }
    assert "context" in error_of(write_recipe(folder, "demo", [source]))


def test_fields_on_a_non_custom_format_fails(folder):
    source = {**ALPACA_SOURCE, "fields": {"user": "instruction", "assistant": "output"}}
    message = error_of(write_recipe(folder, "demo", [source]))
    assert "fields" in message and "custom" in message


def test_an_unknown_format_fails(folder):
    assert "format" in error_of(write_recipe(folder, "demo", [{**ALPACA_SOURCE, "format": "dolly"}]))


def test_duplicate_source_names_fail(folder):
    message = error_of(write_recipe(folder, "demo", [ALPACA_SOURCE, {**ALPACA_SOURCE, "path": "data/other.jsonl"}]))
    assert "unique" in message and "tasks" in message


@pytest.mark.parametrize("name", ["..", ".", "x" * 101])
def test_a_name_that_is_no_plain_folder_name_fails(folder, name):
    # a dataset named ".." would put its release in the parent of --out; a source name becomes a file name
    assert error_of(write_recipe(folder, name, [ALPACA_SOURCE]))
    assert error_of(write_recipe(folder, "demo", [{**ALPACA_SOURCE, "name": name}]))


def test_a_recipe_without_sources_fails(folder):
    assert "sources" in error_of(write_recipe(folder, "demo", []))


def test_an_out_of_range_setting_fails(folder):
    assert "shard_lines" in error_of(write_recipe(folder, "demo", [ALPACA_SOURCE], ingest={"shard_lines": 0}))


def test_a_missing_recipe_file_fails(tmp_path):
    missing = tmp_path / "nope.yaml"
    message = error_of(missing)
    assert "not found" in message and str(missing) in message


@pytest.mark.parametrize("text", ["name: [unclosed\n", "- just\n- a list\n", ""], ids=["bad-yaml", "list", "empty"])
def test_a_file_that_is_not_a_recipe_mapping_fails(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    error_of(path)


# --------------------------------------------------------------------------------------------------
# recipe_hash
# --------------------------------------------------------------------------------------------------


def test_recipe_hash_is_stable_for_the_same_recipe(folder):
    path = write_recipe(folder, "demo", [ALPACA_SOURCE])
    assert recipe_hash(load_recipe(path)[0]) == recipe_hash(load_recipe(path)[0])


@pytest.mark.parametrize(
    "changed",
    [
        {"gates": {"min_turn_chars": 2}},
        {"gates": {"max_record_chars": 1000}},
        {"ingest": {"max_quarantine_ratio": 0.1}},
        {"ingest": {"max_record_chars": 1000}},
    ],
    ids=["gates.min_turn_chars", "gates.max_record_chars", "ingest.max_quarantine_ratio", "ingest.max_record_chars"],
)
def test_recipe_hash_changes_when_a_threshold_changes(folder, changed):
    base = recipe_hash(load_recipe(write_recipe(folder, "demo", [ALPACA_SOURCE]))[0])
    assert recipe_hash(load_recipe(write_recipe(folder, "demo", [ALPACA_SOURCE], **changed))[0]) != base


def test_recipe_hash_does_not_change_when_a_default_is_spelt_out(folder):
    base = recipe_hash(load_recipe(write_recipe(folder, "demo", [ALPACA_SOURCE]))[0])
    explicit = write_recipe(folder, "demo", [ALPACA_SOURCE], gates={"min_turn_chars": 1})
    assert recipe_hash(load_recipe(explicit)[0]) == base


# --------------------------------------------------------------------------------------------------
# source_files
# --------------------------------------------------------------------------------------------------


def test_a_glob_that_matches_nothing_is_a_source_error_naming_the_pattern(folder):
    recipe, _ = load_recipe(write_recipe(folder, "demo", [{**ALPACA_SOURCE, "path": "data/*.ndjson"}]))
    with pytest.raises(plan.SourceError) as info:
        plan.source_files(recipe.sources[0])
    assert str((folder / "data").resolve() / "*.ndjson") in str(info.value)
    assert "tasks" in str(info.value)


def test_a_missing_plain_path_is_a_source_error(folder):
    recipe, _ = load_recipe(write_recipe(folder, "demo", [{**ALPACA_SOURCE, "path": "data/absent.jsonl"}]))
    with pytest.raises(plan.SourceError, match="absent.jsonl"):
        plan.source_files(recipe.sources[0])


def test_a_glob_lists_files_sorted_and_recursively(folder):
    for name in ["b.jsonl", "a.jsonl", "sub/c.jsonl"]:
        (folder / "data" / name).parent.mkdir(exist_ok=True)
        write_jsonl(folder / "data" / name, [{"instruction": "x", "output": "y"}])
    recipe, _ = load_recipe(write_recipe(folder, "demo", [{**ALPACA_SOURCE, "path": "data/**/*.jsonl"}]))
    data = (folder / "data").resolve()
    assert plan.source_files(recipe.sources[0]) == [
        str(data / "a.jsonl"),
        str(data / "b.jsonl"),
        str(data / "sub" / "c.jsonl"),
        str(data / "tasks.jsonl"),
    ]


def test_a_matched_file_of_unknown_type_is_a_source_error(folder):
    (folder / "data" / "notes.txt").write_text("hello")
    recipe, _ = load_recipe(write_recipe(folder, "demo", [{**ALPACA_SOURCE, "path": "data/*"}]))
    with pytest.raises(plan.SourceError, match="notes.txt"):
        plan.source_files(recipe.sources[0])


def test_a_key_given_twice_fails_instead_of_the_last_one_winning(folder):
    path = folder / "twice.yaml"
    path.write_text(
        "name: demo\nsources:\n  - {name: tasks, path: data/tasks.jsonl, format: alpaca}\n"
        "gates: {min_turn_chars: 2}\ngates: {min_turn_chars: 3}\n"
    )
    assert "given twice" in error_of(path)


def test_a_yes_is_no_number(folder):
    message = error_of(write_recipe(folder, "demo", [ALPACA_SOURCE], gates={"min_allowed_language_share": True}))
    assert "min_allowed_language_share" in message and "expected a number" in message


def test_inputs_a_stage_could_not_use_fail_the_run_at_its_start(folder):
    from infinstruct import pipeline
    from infinstruct.config import RecipeError

    bad_field = write_jsonl(folder / "bench.jsonl", [{"question": "What is 2+2?"}])
    cases = {
        "no_bench": {
            "decontamination": {"benchmarks": [{"name": "b", "path": "nowhere.jsonl", "fields": ["question"]}]}
        },
        "bad_field": {"decontamination": {"benchmarks": [{"name": "b", "path": str(bad_field), "fields": ["prompt"]}]}},
        "no_target": {
            "selection": {
                "keep_all": ["math", "code", "knowledge", "chat"],
                "targets": {"math": {"path": "nowhere.jsonl", "fields": ["question"]}},
            }
        },
    }
    for name, extra in cases.items():
        recipe = write_recipe(folder, f"pre-{name}", [ALPACA_SOURCE], **extra)
        with pytest.raises(RecipeError) as info:
            pipeline.start_run(f"pre-{name}-run", recipe)
        assert ("nowhere.jsonl" in str(info.value)) or ("no field 'prompt'" in str(info.value)), str(info.value)


# --------------------------------------------------------------------------------------------------
# Date partitions: a source path may name the partition its files belong to
# --------------------------------------------------------------------------------------------------


def test_a_path_naming_the_partition_reads_the_partitions_up_to_the_runs_key(tmp_path):
    for night in ("2026-12-01", "2026-12-02", "2026-12-03"):
        (tmp_path / "incoming" / night).mkdir(parents=True)
        write_jsonl(
            tmp_path / "incoming" / night / "chat.jsonl", [{"instruction": f"Night {night}?", "output": "Yes."}]
        )
    path = write_recipe(
        tmp_path, "nightly", [{"name": "chat", "path": "incoming/{partition}/*.jsonl", "format": "alpaca"}]
    )
    recipe, _ = load_recipe(path)
    source = recipe.source("chat")
    night = lambda f: Path(f).parent.name  # noqa: E731
    assert [night(f) for f in plan.source_files(source)] == ["2026-12-01", "2026-12-02", "2026-12-03"]  # no key: all
    assert [night(f) for f in plan.source_files(source, "2026-12-02")] == ["2026-12-01", "2026-12-02"]
    assert [night(f) for f in plan.source_files(source, "2026-12-01")] == ["2026-12-01"]
    with pytest.raises(plan.SourceError, match="up to '2026-11-30'"):
        plan.source_files(source, "2026-11-30")
    assert plan.partition_of(source.path, plan.source_files(source)[0]) == "2026-12-01"


@pytest.mark.parametrize(
    "bad, message",
    [
        ("in/{partition}/{partition}.jsonl", "once"),
        ("**/{partition}/*.jsonl", "no \\*\\* before it"),
        ("in/day-*-{partition}/*.jsonl", "otherwise literal"),
    ],
)
def test_the_partition_names_one_otherwise_literal_path_component(tmp_path, bad, message):
    path = write_recipe(tmp_path, "bad", [{"name": "chat", "path": bad, "format": "alpaca"}])
    assert message.replace("\\", "") in error_of(path)
