"""Recipe section `selection` and its quota arithmetic (pure; no database, no model).

Specification:
* every domain of the classifier has exactly one place (shares, counts or keep_all); a misspelt or
  missing domain is an error naming it; a recipe without `selection` selects nothing away;
* shares are a mix (normalised), `size` a share of the standing pool (≤ 1) or a count (> 1);
* a weak-domain report multiplies a quota and/or adds to it; an unknown domain in it is an error;
* when a shares domain cannot fill its quota, the shares quotas shrink together (the mix holds).
"""

from __future__ import annotations

import json
import os

import pytest

from conftest import SAMPLE_RECIPE
from infinstruct.config import RecipeError, load_recipe, parse_recipe
from infinstruct.curate.selection.quotas import (
    Boost,
    SelectionError,
    SelectionSettings,
    fit_quotas,
    load_boosts,
    plan_quotas,
    planned_shares,
)
from infinstruct.record.reasons import Stage, not_selected_reason

PAPER = {"shares": {"knowledge": 0.44, "math": 0.19, "code": 0.19}, "keep_all": ["chat"]}


def test_the_sample_recipe_has_no_selection_and_the_stage_order_puts_select_last():
    recipe, _ = load_recipe(SAMPLE_RECIPE)
    assert recipe.selection is None
    assert list(Stage)[-1] == Stage.SELECT and list(Stage).index(Stage.SELECT) > list(Stage).index(Stage.SEMANTIC_DEDUP)
    assert not_selected_reason("math") == "not_selected:math"


@pytest.mark.parametrize(
    "selection, message",
    [
        ({"shares": {"knowledge": 1, "math": 1, "code": 1}}, "['chat'] need a place"),
        ({**PAPER, "counts": {"math": 10}}, "more than one of"),
        ({**PAPER, "targets": {"maths": {"path": "x.jsonl", "fields": ["q"]}}}, "unknown domain 'maths'"),
        ({**PAPER, "tolerence": 0.1}, "tolerence"),
        ({**PAPER, "scoring": {"quality": {"model": 0.5}}}, "needs a model to score with"),
    ],
)
def test_bad_selection_sections_are_errors_naming_the_problem(tmp_path, selection, message):
    raw = {"name": "x", "sources": [{"name": "a", "path": "a.jsonl", "format": "alpaca"}], "selection": selection}
    with pytest.raises(RecipeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_recipe(raw, tmp_path)


def test_target_and_report_paths_are_relative_to_the_recipe(tmp_path):
    raw = {
        "name": "x",
        "sources": [{"name": "a", "path": "a.jsonl", "format": "alpaca"}],
        "selection": {
            **PAPER,
            "targets": {"math": {"path": "t/gsm8k_train.jsonl", "fields": ["question"]}},
            "weak_domains": "weak.json",
        },
    }
    selection = parse_recipe(raw, tmp_path).selection
    assert selection.targets["math"].path == str(tmp_path / "t" / "gsm8k_train.jsonl")
    assert selection.weak_domains == str(tmp_path / "weak.json")


def test_shares_are_a_mix_of_a_size_given_as_a_share_of_the_pool_or_a_count():
    settings = SelectionSettings(**PAPER, size=0.5)
    available = {"knowledge": 600, "math": 200, "code": 200, "chat": 77}
    quotas = plan_quotas(settings, available)
    assert quotas == {"knowledge": 268, "math": 116, "code": 116}  # 500 in the paper's 44:19:19
    assert plan_quotas(SelectionSettings(**PAPER, size=82), available) == {"knowledge": 44, "math": 19, "code": 19}
    mixed = SelectionSettings(shares={"knowledge": 1, "chat": 1}, counts={"math": 7, "code": 0}, size=10)
    assert plan_quotas(mixed, available) == {"knowledge": 5, "chat": 5, "math": 7, "code": 0}
    assert planned_shares({"a": 1, "b": 3}) == {"a": 0.25, "b": 0.75}


def test_a_weak_domain_report_raises_quotas(tmp_path):
    report = tmp_path / "weak.json"
    report.write_text(json.dumps({"math": 1.5, "code": {"extra": 10}}))
    boosts = load_boosts(str(report), ["math", "code", "knowledge", "chat"])
    assert boosts == {"math": Boost(factor=1.5), "code": Boost(extra=10)}
    quotas = plan_quotas(SelectionSettings(**PAPER, size=82), {"knowledge": 100}, boosts)
    assert quotas == {"knowledge": 44, "math": 28, "code": 29}
    report.write_text(json.dumps({"poetry": 2}))
    with pytest.raises(SelectionError, match="unknown domain 'poetry'"):
        load_boosts(str(report), ["math"])
    with pytest.raises(SelectionError, match="not found"):
        load_boosts(str(tmp_path / "absent.json"), ["math"])
    report.write_bytes(b'{"math": "\xff"}')  # not UTF-8: a data error naming the report, not a crash
    with pytest.raises(SelectionError, match="weak.json.* is not JSON"):
        load_boosts(str(report), ["math"])


def test_reading_selection_files_only_a_transient_os_error_is_left_to_the_retries(tmp_path, monkeypatch):
    import errno
    from pathlib import Path

    from infinstruct.curate.selection.stage import _fingerprint

    report = tmp_path / "weak.json"
    report.write_text("{}")
    settings = SelectionSettings(**PAPER, targets={"math": {"path": str(report), "fields": ["q"]}})

    def fails(code):
        def read(self, *args, **kwargs):
            raise OSError(code, os.strerror(code))

        return read

    monkeypatch.setattr(Path, "read_bytes", fails(errno.EIO))
    monkeypatch.setattr(Path, "read_text", fails(errno.EIO))
    with pytest.raises(OSError) as raised:  # EIO may pass: retried, not a SelectionError
        _fingerprint(settings)
    assert not isinstance(raised.value, SelectionError)
    with pytest.raises(OSError) as raised:
        load_boosts(str(report), ["math"])
    assert not isinstance(raised.value, SelectionError)
    monkeypatch.setattr(Path, "read_bytes", fails(errno.EACCES))
    monkeypatch.setattr(Path, "read_text", fails(errno.EACCES))
    with pytest.raises(SelectionError, match="selection.targets.math: cannot read .*Permission denied"):
        _fingerprint(settings)
    with pytest.raises(SelectionError, match="selection.weak_domains: cannot read .*Permission denied"):
        load_boosts(str(report), ["math"])


def test_a_short_domain_shrinks_every_share_quota_together():
    settings = SelectionSettings(shares={"knowledge": 2, "math": 1}, counts={"code": 5}, keep_all=["chat"])
    quotas = {"knowledge": 200, "math": 100, "code": 5}
    assert fit_quotas(settings, quotas, {"knowledge": 200, "math": 100, "code": 3}) == quotas  # counts never scale
    assert fit_quotas(settings, quotas, {"knowledge": 200, "math": 40, "code": 5}) == {
        "knowledge": 80,
        "math": 40,
        "code": 5,
    }


def test_an_unreadable_target_is_a_selection_error(tmp_path):
    from infinstruct.curate.selection.stage import _fingerprint, target_texts

    settings = SelectionSettings(**PAPER, targets={"math": {"path": str(tmp_path / "absent.jsonl"), "fields": ["q"]}})
    with pytest.raises(SelectionError, match="selection.targets.math"):
        _fingerprint(settings)
    (tmp_path / "t.jsonl").write_text('{"question": "How many apples?"}\n')
    settings = SelectionSettings(**PAPER, targets={"math": {"path": str(tmp_path / "t.jsonl"), "fields": ["q"]}})
    with pytest.raises(SelectionError, match="no field 'q'"):
        target_texts(settings, "math")
