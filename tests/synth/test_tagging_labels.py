"""Ability tagging's core: the tagger's labels normalised, near-identical ones merged, each given a coarse
category (the real MiniLM).

Specification:
* case, punctuation, extra spaces and a plural last word do not make a new label; language names such as
  C++, C# and Q&A keep their symbols; the recipe's synonyms apply to whole labels;
* a rewording of a known label is merged onto the first wording seen; a different ability is not;
* a label goes to the coarse category it is about (the Infinity-Instruct vocabulary by default);
* a tagger answer without any label is invalid.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from infinstruct.synth.tagging.labels import (
    DEFAULT_CATEGORIES,
    LabelMerger,
    TagAnswer,
    TaggingSettings,
    coarse_category,
    normalise_label,
)


@pytest.mark.parametrize(
    "raw, label",
    [
        ("  Mathematical Reasoning. ", "mathematical reasoning"),
        ("Python programming!!", "python programming"),
        ("Algebraic Equations", "algebraic equation"),
        ("Data Analysis", "data analysis"),  # -is is not a plural
        ("C++ Programming", "c++ programming"),
        ("C# delegates", "c# delegate"),
        ("Statistics", "statistics"),  # a field, not a plural
        ("open Q&A", "open q&a"),
        ("ＦＵＬＬ-width  Text", "full-width text"),
    ],
)
def test_labels_are_normalised(raw, label):
    assert normalise_label(raw) == label


def test_synonyms_replace_whole_labels():
    assert normalise_label("Coding", {"coding": "programming"}) == "programming"
    assert normalise_label("Coding style", {"coding": "programming"}) == "coding style"


def test_a_rewording_is_merged_onto_the_first_wording_and_a_different_ability_is_not():
    merger = LabelMerger(TaggingSettings(), known=["python programming"])
    merged = merger.add(["programming in python", "python programming", "cooking recipes"])
    assert merged["programming in python"] == "python programming"
    assert merged["cooking recipes"] == "cooking recipes"
    assert merger.labels == ["python programming", "cooking recipes"]


def test_labels_go_to_the_coarse_category_they_are_about():
    settings = TaggingSettings()
    assert len(DEFAULT_CATEGORIES) == 26
    expected = {
        "python programming": "programming and software development",
        "solving quadratic equations": "mathematical ability",
        "contract law": "legal knowledge",
        "poetry writing": "literary creation and artistic knowledge",
        "translation from french to english": "linguistic knowledge, multilingual and multicultural understanding",
        "cooking pasta": "life knowledge and skills",
        "diagnosing diabetes symptoms": "medical, pharmaceutical and health knowledge",
        "kubernetes deployment": "operation and maintenance",
        "investment portfolio advice": "financial, financial and business knowledge",
        "world war ii history": "humanities, history, philosophy, and sociology knowledge",
        "sentiment classification": "natural language processing and understanding",
        "anxiety and stress coping": "psychological knowledge",
        "generating quiz questions": "task generation",
        "summarizing an article": "information processing and integration",
    }
    assert dict(zip(expected, coarse_category(list(expected), settings))) == expected


def test_a_tagger_answer_needs_a_label():
    assert TagAnswer.model_validate_json('{"abilities": ["math", " "]}').abilities == ["math"]
    with pytest.raises(ValidationError):
        TagAnswer.model_validate_json('{"abilities": ["", "  "]}')
    with pytest.raises(ValidationError):
        TagAnswer.model_validate_json('{"skills": ["math"]}')
