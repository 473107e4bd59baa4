"""Domains: keyword rules + MiniLM nearest-centroid, combined into a domain and a confidence."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from conftest import SHARED_DATA
from infinstruct.curate.scoring.domains import (
    BUILTIN_DOMAINS,
    DomainClassifier,
    DomainLabel,
    DomainSettings,
)
from infinstruct.ml.embeddings import encode
from infinstruct.record.conversation import instruction_text

CLEAR = {  # none of these is an exemplar
    "math": [
        "A recipe needs 3 eggs for every 2 cups of flour. How many eggs are needed for 10 cups?",
        "Solve the system of equations 2x + y = 7 and x - y = 2.",
        "What is the sum of the interior angles of a hexagon?",
    ],
    "code": [
        "Write a Go program that reads a file line by line.",
        "What does the `yield` keyword do in Python?",
        "My React component re-renders endlessly. Here is the useEffect hook: useEffect(() => { setCount(count + 1) })",
    ],
    "knowledge": [
        "Why did the Roman Empire decline?",
        "What is the function of the ozone layer?",
        "Describe how the human heart pumps blood.",
    ],
    "chat": [
        "Write a limerick about a forgetful wizard.",
        "I just moved to a new city and feel lonely. How can I make friends?",
        "Can you help me write a thank-you note to my grandmother for the sweater?",
    ],
}


@pytest.fixture(scope="module")
def classifier():
    return DomainClassifier()


def test_built_in_domains_are_math_code_knowledge_chat_with_exemplars():
    assert list(BUILTIN_DOMAINS) == ["math", "code", "knowledge", "chat"]
    assert all(10 <= len(spec.exemplars) <= 20 and spec.patterns for spec in BUILTIN_DOMAINS.values())


def test_clear_prompts_land_in_their_domain(classifier):
    texts = [t for prompts in CLEAR.values() for t in prompts]
    labels = classifier.classify(texts)
    assert [label.domain for label in labels] == [d for d, prompts in CLEAR.items() for _ in prompts]
    assert all(isinstance(label, DomainLabel) and 0.5 < label.confidence <= 1.0 for label in labels)


def test_rule_evidence_sums_the_weights_of_the_patterns_found(classifier):
    evidence = dict(zip(classifier.names, classifier.rule_evidence(["Calculate 15% of 80."])[0]))
    assert evidence == {"math": 2.5, "code": 0.0, "knowledge": 0.0, "chat": 0.0}  # calculate 1.5, "15%" 1.0
    evidence = dict(zip(classifier.names, classifier.rule_evidence(["Write a Python function to sort a list."])[0]))
    assert evidence["code"] == 5.5 and evidence["math"] == 0.0  # language 2.5, write..function 2.0, function 1.0


def test_probabilities_are_a_softmax_of_centroid_cosines_plus_rule_evidence(classifier):
    texts = CLEAR["math"] + CLEAR["chat"]
    vectors = encode(texts)
    p = classifier.probabilities(texts, vectors)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-6)
    logits = vectors @ classifier.centroids.T / 0.08 + classifier.rule_evidence(texts)
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(p, expected / expected.sum(axis=1, keepdims=True), atol=1e-5)
    np.testing.assert_allclose(p, classifier.probabilities(texts), atol=1e-5)  # vectors given = vectors made
    np.testing.assert_allclose(np.linalg.norm(classifier.centroids, axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="2 texts but 6 vectors"):
        classifier.probabilities(texts[:2], vectors)


def test_centroids_alone_when_rule_scale_is_zero(classifier):
    text = ["Calculate 15% of 80."]
    centroid_only = DomainClassifier(DomainSettings(rule_scale=0))
    vectors = encode(text)
    logits = vectors @ centroid_only.centroids.T / 0.08
    expected = np.exp(logits - logits.max())
    np.testing.assert_allclose(centroid_only.probabilities(text, vectors), expected / expected.sum(), atol=1e-5)
    assert classifier.probabilities(text, vectors)[0, 0] > centroid_only.probabilities(text, vectors)[0, 0]


def test_a_recipe_adds_a_domain_and_extends_a_built_in_one():
    settings = DomainSettings(
        domains={
            "medical": {
                "patterns": {r"\b(?:symptoms?|diagnos\w*|dosage|treatment)\b": 2.0},
                "exemplars": [
                    "What are the symptoms of type 2 diabetes?",
                    "What is a safe dosage of ibuprofen?",
                    "How is pneumonia diagnosed and treated?",
                ],
            },
            "code": {"patterns": {r"\bterraform\b": 3.0}, "exemplars": ["Write a Terraform module for an S3 bucket."]},
        }
    )
    specs = settings.resolved()
    assert list(specs) == ["math", "code", "knowledge", "chat", "medical"]
    assert r"\bterraform\b" in specs["code"].patterns and len(specs["code"].exemplars) == 17
    labels = DomainClassifier(settings).classify(
        ["What are the early symptoms of measles, and what is the treatment?", "Set up a terraform backend in GCS."]
    )
    assert [label.domain for label in labels] == ["medical", "code"]


def test_domain_settings_are_checked_at_load():
    with pytest.raises(ValidationError, match="not a valid regular expression"):
        DomainSettings(domains={"code": {"patterns": {"(unclosed": 1.0}}})
    with pytest.raises(ValidationError, match="lower case"):
        DomainSettings(domains={"code": {"patterns": {r"\bSELECT\b": 1.0}}})
    with pytest.raises(ValidationError, match="needs at least one exemplar"):
        DomainSettings(domains={"legal": {"patterns": {"contract": 1.0}}})
    with pytest.raises(ValidationError, match="lower-case"):
        DomainSettings(domains={"Legal Advice": {"exemplars": ["Is a verbal contract binding?"]}})
    with pytest.raises(ValidationError, match="at least two domains"):
        DomainSettings(builtin=False, domains={"legal": {"exemplars": ["Is a verbal contract binding?"]}})
    with pytest.raises(ValidationError):
        DomainSettings(temprature=0.1)


def test_the_classified_text_is_the_user_turns():
    turns = (
        ("system", "You are terse."),
        ("user", "Sort this list"),
        ("assistant", "[1, 2]"),
        ("user", "Now reverse it"),
    )
    assert instruction_text(turns) == "Sort this list\nNow reverse it"


@pytest.mark.shared_data
@pytest.mark.skipif(not (SHARED_DATA / "pool").is_dir(), reason="../shared/data/pool is not present")
def test_accuracy_on_labelled_real_prompts(classifier):
    pool = SHARED_DATA / "pool"
    gsm8k = [json.loads(line)["question"] for line in pool.joinpath("gsm8k_train.custom.jsonl").open()][:100]
    code = []
    for line in list(pool.joinpath("code_alpaca_2k.alpaca.jsonl").open())[:100]:
        row = json.loads(line)
        code.append(row["instruction"] + (f"\n\n{row['input']}" if row["input"] else ""))
    math_acc = np.mean([label.domain == "math" for label in classifier.classify(gsm8k)])
    code_acc = np.mean([label.domain == "code" for label in classifier.classify(code)])
    assert math_acc >= 0.95, math_acc  # measured 1.00 (0.9995 on all 7,473)
    assert code_acc >= 0.9, code_acc  # measured 0.94 (0.929 on all 2,017)
