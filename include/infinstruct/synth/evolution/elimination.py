"""Evol-Instruct's elimination of failed evolutions (pure): why an evolved instruction is not kept.

evolution:empty        nothing left after the evolver's wrapping is removed, or only stop words
evolution:scaffolding  the evolver copied the words of its own prompt into the output
evolution:refusal      the evolver refused instead of rewriting
evolution:unrelated    MiniLM cosine to the parent under the threshold (lower for in-breadth)
evolution:no_gain      the same as the parent: identical text, cosine over `max_parent_similarity`,
                       or the judge's equality check says it asks for nothing new
"""

from __future__ import annotations

import re
from enum import StrEnum

from infinstruct.curate.rules.filters import refusal_phrase
from infinstruct.record.normalise import normalise_text
from infinstruct.synth.prompts import SCAFFOLDING_MARKERS
from infinstruct.synth.settings import EvolutionSettings


class Elimination(StrEnum):
    EMPTY = "evolution:empty"
    SCAFFOLDING = "evolution:scaffolding"
    REFUSAL = "evolution:refusal"
    UNRELATED = "evolution:unrelated"
    NO_GAIN = "evolution:no_gain"


STOP_WORDS = frozenset(
    "a an the and or but if then else of to in on at by for with about from into over under as is are was were be "
    "been being it its this that these those there here what which who whom whose when where why how i you he she "
    "we they me him her us them my your his our their do does did done can could will would shall should may might "
    "must not no yes so very too just also than such please".split()
)

# the evolver's wrapping around its answer: a leading label ("#Rewritten Prompt#:", "Rewritten prompt:",
# "Here is the rewritten prompt:") and quotes around the whole
_LEADING_LABEL = re.compile(
    r"^\s*(?:#+\s*)?(?:here(?:'s| is) (?:the |a |my )?)?(?:rewritten|new|created|evolved)"
    r"\s+(?:prompt|instruction)\s*#*\s*[:：]?\s*",
    re.IGNORECASE,
)
_WORD = re.compile(r"\w+", re.UNICODE)


def clean_evolved(text: str) -> str:
    """The evolved instruction without the evolver's leading label and enclosing quotes, normalised as an
    ingested turn is (`normalise_text`: control characters, ANSI escapes, chat-template tokens go)."""
    text = _LEADING_LABEL.sub("", normalise_text(text), count=1).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1].strip()
    return text


def content_words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.casefold()) if w not in STOP_WORDS]


def text_check(child: str, parent: str, settings: EvolutionSettings) -> tuple[Elimination, str] | None:
    """The elimination reasons that need no model, with a detail; None when the child passes them."""
    if len(content_words(child)) < settings.min_words:
        return Elimination.EMPTY, f"{len(content_words(child))} content words"
    lowered = child.casefold()
    copied = next((m for m in SCAFFOLDING_MARKERS if m in lowered), None)
    if copied:
        return Elimination.SCAFFOLDING, f"contains {copied!r}"
    refusal = refusal_phrase(child)
    if refusal:
        return Elimination.REFUSAL, refusal
    if " ".join(content_words(child)) == " ".join(content_words(parent)):
        return Elimination.NO_GAIN, "the same words as the parent"
    return None


def similarity_check(similarity: float, operation: str, settings: EvolutionSettings) -> tuple[Elimination, str] | None:
    """Unrelated to the parent, or too close to add anything (MiniLM cosine)."""
    floor = settings.min_breadth_similarity if operation == "breadth" else settings.min_parent_similarity
    if similarity < floor:
        return Elimination.UNRELATED, f"cosine to the parent {similarity:.3f} < {floor}"
    if similarity > settings.max_parent_similarity:
        return Elimination.NO_GAIN, f"cosine to the parent {similarity:.3f} > {settings.max_parent_similarity}"
    return None
