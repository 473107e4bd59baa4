"""Ability tagging's pure core: the tagger's answer, its labels normalised, and each mapped to a coarse category.

The tagger (an LLM role) names the fine-grained abilities and knowledge an instruction needs, as JSON
(`TagAnswer`). Labels from a model are noisy: case, punctuation, plurals, synonyms and near-identical wordings
("python programming", "programming in Python"). So a label is

1. normalised (`normalise_label`): lower case, punctuation and extra spaces out, a trailing plural "s" of a
   last word folded, then the recipe's synonyms applied (whole label);
2. merged with a near-identical label already known (`LabelMerger`): the MiniLM cosine of the two labels at
   or above `merge_threshold` (0.9); the first wording seen stays the canonical one;
3. mapped to the nearest of the recipe's coarse categories (`coarse_category`: MiniLM cosine to the
   category's name and the words it covers), the Infinity-Instruct `cate_ability_en` vocabulary by default.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, Field, field_validator

from infinstruct.ml.embeddings import EmbeddingSettings, encode
from infinstruct.strict import Strict

# The coarse ability categories of the public Infinity-Instruct release (`label.cate_ability_en`), each with
# the words a label about it tends to use: a label is matched against "name: description", not the bare name
# (on names alone MiniLM put "solving quadratic equations" under "problem solving and support").
DEFAULT_CATEGORIES = {
    "information processing and integration": "summarising, extracting, organising and combining information",
    "logic and reasoning": "logical reasoning, deduction, inference, puzzles, critical thinking",
    "mathematical ability": "arithmetic, algebra, equations, geometry, calculus, probability, math word problems",
    "programming and software development": "programming, coding, algorithms, debugging, software engineering",
    "problem solving and support": "troubleshooting, advice on practical problems, customer support",
    "data science and analytics": "data analysis, statistics, machine learning, databases, SQL, visualisation",
    "natural language processing and understanding": "text classification, sentiment, entities, parsing text",
    "linguistic knowledge, multilingual and multicultural understanding": "translation, grammar, languages, cultures",
    "creativity and design": "design, brainstorming, creative ideas, visual and product design",
    "literary creation and artistic knowledge": "poetry, fiction, story writing, literature, music and art",
    "education and consulting": "teaching, tutoring, study plans, career and professional consulting",
    "humanities, history, philosophy, and sociology knowledge": "history, philosophy, sociology, religion, politics",
    "life knowledge and skills": "cooking, travel, fitness, household, everyday life skills",
    "medical, pharmaceutical and health knowledge": "medicine, diseases, drugs, nutrition, health care",
    "stem knowledge": "physics, chemistry, biology, engineering, astronomy, earth science",
    "open knowledge q&a": "general knowledge questions and facts, trivia",
    "communication and social media": "emails, letters, social media posts, conversation, etiquette",
    "project and task management": "planning, scheduling, project management, productivity, workflows",
    "financial, financial and business knowledge": "finance, economics, business, marketing, accounting, investing",
    "legal knowledge": "law, contracts, regulations, rights, legal procedures",
    "legal and safety knowledge": "safety, security, privacy, harmful or dangerous requests, compliance",
    "psychological knowledge": "psychology, emotions, mental health, behaviour, relationships",
    "analysis and research": "research methods, comparing, evaluating, investigating a topic",
    "task generation": "generating questions, prompts, instructions, exercises or examples",
    "open task completion": "open-ended requests and general assistance",
    "operation and maintenance": "system administration, devops, deployment, servers, networks, IT operations",
}


class TaggingSettings(Strict):
    """Recipe section of the tagging stage."""

    categories: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_CATEGORIES), min_length=1)  # name: words
    synonyms: dict[str, str] = Field(default_factory=dict)  # normalised label -> the label it means
    merge_threshold: float = Field(0.9, gt=0, le=1)  # MiniLM cosine at which two labels are one
    max_labels: int = Field(8, ge=1)  # per instruction, the tagger's first ones
    embedding: EmbeddingSettings = EmbeddingSettings()


class TagAnswer(BaseModel):
    """What the tagger answers: the abilities an instruction needs (JSON)."""

    abilities: list[str] = Field(min_length=1)

    @field_validator("abilities")
    @classmethod
    def _some_text(cls, labels: list[str]) -> list[str]:
        kept = [label for label in labels if isinstance(label, str) and label.strip()]
        if not kept:
            raise ValueError("no non-empty ability label")
        return kept


_PUNCTUATION = re.compile(r"[^\w\s&+#/-]+")  # keep c++, c#, q&a, ci/cd, self-driving
_SPACES = re.compile(r"\s+")
_MARKDOWN_LEAD = re.compile(r"^(?:#+\s+|[-*>]+\s*)+")  # "### French", "- algebra", "> logic"
MAX_LABEL_WORDS = 6  # longer is a sentence, not an ability


def normalise_label(label: str, synonyms: dict[str, str] | None = None) -> str:
    """A label as it is compared and stored: NFKC, lower case, without punctuation or a plural last word;
    "" for what is not a label (no letter, such as "..." or "1.5", or a sentence)."""
    text = _MARKDOWN_LEAD.sub("", unicodedata.normalize("NFKC", label).casefold().strip())
    text = _SPACES.sub(" ", _PUNCTUATION.sub(" ", text)).strip(" -/")
    if not any(ch.isalpha() for ch in text) or len(text.split(" ")) > MAX_LABEL_WORDS:
        return ""
    words = text.split(" ")
    last = words[-1] if words else ""
    if len(last) > 3 and last.endswith("s") and not last.endswith(("ss", "us", "is", "ics")):
        words[-1] = last[:-1]
    text = " ".join(words)
    return (synonyms or {}).get(text, text)


class LabelMerger:
    """Near-identical labels merged onto the first wording seen (MiniLM cosine >= the threshold)."""

    def __init__(self, settings: TaggingSettings, known: Sequence[str] = ()):
        self.settings = settings
        self.labels: list[str] = []
        self._vectors = np.zeros((0, 0), dtype=np.float32)
        self.canonical: dict[str, str] = {}
        self.add(list(known))

    def add(self, labels: Sequence[str]) -> dict[str, str]:
        """Canonical label of each (normalised) label, in order; new ones join the known set."""
        new = list(dict.fromkeys(label for label in labels if label not in self.canonical))
        if new:
            vectors = encode(new, self.settings.embedding)
            for label, vector in zip(new, vectors):
                match = None
                if len(self.labels):
                    sims = self._vectors @ vector
                    best = int(np.argmax(sims))
                    if sims[best] >= self.settings.merge_threshold:
                        match = self.labels[best]
                if match is None:
                    self.labels.append(label)
                    self._vectors = vector[None, :] if not self._vectors.size else np.vstack([self._vectors, vector])
                self.canonical[label] = match or label
        return {label: self.canonical[label] for label in labels}


def coarse_category(labels: Sequence[str], settings: TaggingSettings) -> list[str]:
    """The nearest coarse category (MiniLM cosine to "name: description") of each label."""
    if not labels:
        return []
    names = list(settings.categories)
    described = [f"{name}: {words}" for name, words in settings.categories.items()]
    sims = encode(list(labels), settings.embedding) @ encode(described, settings.embedding).T
    return [names[i] for i in np.argmax(sims, axis=1)]
