"""Quality and difficulty of a conversation from cheap measured signals (Phase 1 selection, step 1).

The measurement is kept apart from the formula, as in `rules`: `measure_signals(turns)` computes
named numbers once per record (stored with `SIGNALS_VERSION`); `quality_score` and
`difficulty_score` are pure formulas over them with the weights of `ScoringSettings`, so a recipe
that changes a weight or a scale re-scores stored signals without re-measuring.

Signals (stable names; "instruction" = the user turns, "response" = the assistant turns):

=======================  ==================================================================
``instruction_chars``    characters of the instruction
``instruction_words``    `filters.estimate_tokens` of the instruction (a CJK character is a word)
``response_chars``       characters of the response
``response_words``       `filters.estimate_tokens` of the response
``user_turns``           number of user turns
``response_ratio``       response_words / max(instruction_words, 1)
``list_items``           response lines that are bullets (- * + •) or numbered items (1. 2))
``headings``             response lines that are Markdown headings (#, with a letter) or a bold line
``code_blocks``          fenced code blocks in the response (an unclosed fence counts)
``code_lines``           response lines inside fences, or outside that look like program syntax
``reasoning_markers``    response words that mark an argument: step, therefore, thus, hence,
                         because, since, so, first(ly), second(ly), next, finally, then,
                         consequently, which means, we get / we have / let's
``numbered_steps``       response lines that open with "Step N" or "N." / "N)"
``equations``            response arithmetic or formulas: ``a op b = c``, ``<<48/2=24>>``,
                         LaTeX (``\\frac``, ``\\sqrt``, ``$x$`` ...)
``code_terms``           instruction words about programming (python, function, SQL, array ...)
``math_terms``           instruction words about mathematics (calculate, how many, percent ...)
``numbers``              numbers in the instruction
``questions``            question marks in the instruction
``constraints``          constraint phrases in the instruction: must, should, at least/most,
                         no more than, exactly, without, only, do not, avoid, make sure,
                         "in N words", "step by step", "in JSON", "as a table" ...
``has_code``             1 when code_blocks ≥ 1, or code_lines ≥ 2, or a code term with a code line
``has_math``             1 when equations ≥ 1, or a math term with ≥ 2 numbers in the instruction
=======================  ==================================================================

Formulas (every component lies in [0, 1]; ``sat(x, s) = 1 - exp(-x / s)`` rises from 0 and
reaches 0.63 at x = s; ``logsat(x, t) = min(1, log(1 + x) / log(1 + t))``):

Quality, the weighted mean of ``ScoringSettings.quality`` over

    length       logsat(response_words, target_response_words)        a developed answer
    elaboration  min(1, response_ratio / target_ratio)                 more than the question
    structure    sat(list_items + 2·headings + 3·code_blocks, structure_scale)
    reasoning    sat(reasoning_markers + numbered_steps + equations, reasoning_scale)
    model        signals["model_score"] (the recipe's `scorer`), only when quality.model > 0

Difficulty, the weighted mean of ``ScoringSettings.difficulty`` over

    instruction_length  logsat(instruction_words, target_instruction_words)
    constraints         sat(constraints, constraint_scale)
    multi_part          sat(max(questions - 1, 0) + user_turns - 1, multi_part_scale)
    reasoning           the quality component above: the answer needed a chain of steps
    technical           sat(code_terms + math_terms + code_blocks + equations, technical_scale)
    answer_length       logsat(response_words, target_response_words)

Both are cheap proxies: DEITA's learned scorers also correlate strongly with length; these make
the correlation explicit and tunable.

Model score: with a `scorer` section (`ScorerSettings`), score_records also measures
signals["model_score"] by that model and stores the model's name beside it (`record_scores.scorer`),
so a weight change re-derives quality from the stored score and only a model change re-scores. Kinds:
`embedding` (`EmbeddingRelevanceScorer`, offline MiniLM by default) measures whether the answer is about
the question, not whether it is right; `openai` (`LLMJudgeScorer`) asks a chat model behind any
OpenAI-compatible endpoint to rate helpfulness and correctness on 1-10 (`JUDGE_PROMPT`), through `llm`'s
retried, cached client. (No cross-encoder ships offline with the project: not a kind yet.)
"""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any, Literal, Mapping, Protocol, Sequence

import numpy as np
from pydantic import Discriminator, Field, Tag, model_validator
from sqlalchemy.engine import Engine

from infinstruct.curate.rules.filters import estimate_tokens
from infinstruct.errors import DataError
from infinstruct.ml.embeddings import EmbeddingSettings
from infinstruct.ml.llm import ChatSettings, InvalidAnswer, JsonChat
from infinstruct.strict import Strict

# Bump whenever `measure_signals` changes what a signal means: stored signals of an older version
# are re-measured, never scored with formulas that expect the new meaning.
SIGNALS_VERSION = 1

USER, ASSISTANT = "user", "assistant"
Turns = Sequence[tuple[str, str]]
Signals = dict[str, float]


class ScoringError(DataError, ValueError):
    """Signals cannot be scored with these settings (e.g. a model weight without a model score)."""


class QualityWeights(Strict):
    length: float = Field(0.35, ge=0)
    elaboration: float = Field(0.1, ge=0)
    structure: float = Field(0.25, ge=0)
    reasoning: float = Field(0.3, ge=0)
    model: float = Field(0.0, ge=0)  # > 0 needs a `scorer` (signals["model_score"] on every record)


class DifficultyWeights(Strict):
    instruction_length: float = Field(0.2, ge=0)
    constraints: float = Field(0.2, ge=0)
    multi_part: float = Field(0.1, ge=0)
    reasoning: float = Field(0.2, ge=0)
    technical: float = Field(0.15, ge=0)
    answer_length: float = Field(0.15, ge=0)


class ScorerSettings(Strict):
    """Recipe section `scoring.scorer`: the model that measures signals["model_score"].

    kind `embedding`: cosine of the instruction and response embeddings (`EmbeddingRelevanceScorer`)
    under `embedding`; absent, the selection's own `embedding` settings, so the instruction vectors
    that semantic dedup and the domain classifier cached are reused and only responses are encoded."""

    kind: Literal["embedding"] = "embedding"
    embedding: EmbeddingSettings | None = None


class JudgeScorerSettings(ChatSettings):
    """Recipe section `scoring.scorer` of kind `openai`: an LLM judge (`LLMJudgeScorer`) behind an
    OpenAI-compatible endpoint (`llm.ChatSettings`: model, base_url, api_key_env, timeout_seconds,
    max_retries, backoff_seconds, max_backoff_seconds, concurrency)."""

    kind: Literal["openai"]
    max_chars: int = Field(4000, ge=1)  # of the instruction and of the response in the prompt


def _scorer_kind(value: Any) -> str:
    # `kind` may be left out for the embedding scorer (the first and default kind)
    return (value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)) or "embedding"


AnyScorerSettings = Annotated[
    Annotated[ScorerSettings, Tag("embedding")] | Annotated[JudgeScorerSettings, Tag("openai")],
    Discriminator(_scorer_kind),
]


class ScoringSettings(Strict):
    """Recipe section `scoring`: component weights and the scales of the saturating curves."""

    scorer: AnyScorerSettings | None = None  # measured whenever set, counted in quality only when quality.model > 0
    quality: QualityWeights = QualityWeights()
    difficulty: DifficultyWeights = DifficultyWeights()
    target_response_words: int = Field(300, ge=1)  # logsat reaches 1 here
    target_instruction_words: int = Field(150, ge=1)
    target_ratio: float = Field(4.0, gt=0)
    structure_scale: float = Field(4.0, gt=0)
    reasoning_scale: float = Field(4.0, gt=0)
    constraint_scale: float = Field(2.0, gt=0)
    multi_part_scale: float = Field(1.5, gt=0)
    technical_scale: float = Field(3.0, gt=0)

    @model_validator(mode="after")
    def _some_weight(self) -> ScoringSettings:
        for name, weights in (("quality", self.quality), ("difficulty", self.difficulty)):
            if sum(weights.model_dump().values()) <= 0:
                raise ValueError(f"scoring.{name}: at least one weight must be > 0")
        if self.quality.model > 0 and self.scorer is None:
            raise ValueError(
                "scoring.quality.model > 0 needs a model to score with: add "
                "scoring.scorer (e.g. scorer: {kind: embedding}), or set the weight to 0"
            )
        return self


# --- signals ---------------------------------------------------------------------------------

_FENCE = re.compile(r"^[ \t]*(?:```|~~~)", re.MULTILINE)
_LIST_ITEM = re.compile(r"^[ \t]*(?:[-*+•]\s+\S|\d{1,3}[.)]\s+\S)", re.MULTILINE)
_HEADING = re.compile(  # "#### 72" (GSM8K's answer line) has no letter: not a heading
    r"^[ \t]*(?:#{1,6}\s+(?=[^\n]*[^\W\d_])\S.*|\*\*[^*\n]{1,80}\*\*:?)[ \t]*$", re.MULTILINE
)
_NUMBERED_STEP = re.compile(r"^[ \t]*(?:step\s*\d+|\d{1,3}[.)]\s)", re.MULTILINE | re.IGNORECASE)
_REASONING = re.compile(  # on lower-cased text
    r"\b(?:step|steps|therefore|thus|hence|because|since|so|first|firstly|second|secondly|third|next"
    r"|finally|then|consequently|which means|this means|we get|we have|we know|let's|let us)\b"
)
_EQUATION = re.compile(
    r"<<[^<>\n]*=[^<>\n]*>>"  # GSM8K calculator annotations
    r"|\d[\d.,]*\s*[-+*/×x÷^]\s*\(?\d[\d.,]*\)?(?:\s*[-+*/×x÷^]\s*\(?\d[\d.,]*\)?)*\s*=\s*-?\$?\d"
    r"|\\(?:frac|sqrt|sum|int|times|cdot|pi|alpha|beta|theta|leq|geq|neq)\b"
    r"|\$[^$\n]{1,80}\$|\\\(|\\\["
)
_CODE_TERMS = re.compile(
    r"\b(?:python|javascript|typescript|java|c\+\+|c#|golang|rust|ruby|php|swift|kotlin|scala|sql|html"
    r"|css|bash|shell|regex|function|functions|program|programming|code|coding|script|algorithm"
    r"|compile|debug|api|array|arrays|class|method|variable|loop|recursion|recursive|linked list"
    r"|binary tree|hash ?map|json|query|database|string|integer)\b"
)
_MATH_TERMS = re.compile(
    r"\b(?:calculate|compute|solve|evaluate|simplify|equation|equations|how many|how much|total|sum"
    r"|product|percent|percentage|average|mean|median|probability|ratio|fraction|integer|prime"
    r"|area|perimeter|volume|derivative|integral|polynomial|theorem|prove|remainder|divisible)\b|%"
)
_NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)*")
_CONSTRAINTS = re.compile(
    r"\b(?:must|should|at least|at most|no more than|no less than|fewer than|less than|more than"
    r"|exactly|without|only|do not|don't|avoid|never|make sure|ensure|include|including|limit|within"
    r"|in the style of|step by step|in (?:\d+|one|two|three|four|five|ten) (?:words|sentences|paragraphs"
    r"|lines|bullet points)|(?:in|as) (?:a )?(?:json|table|list|bullet points)|format)\b"
)


_CODE_START = re.compile(  # case-sensitive: "Return the..." and "Let's" are prose
    r"[ \t]*(?:(?:def|class|import|return|function|const|var|public|private|static|void|int|char|elif|else)\s"
    r"|from \S+ import|let \w+ ?=|(?:for|while|if|switch) ?\(|(?:SELECT|INSERT|UPDATE|DELETE|CREATE TABLE)\s"
    r"|#include|print\(|console\.)"
)
_CODE_INFIX = ("=>", "==", "!=", ":=", "+=", "</", "/>", "();")
_CALL_AT_END = re.compile(r"[A-Za-z_][\w.]*\([^()\n]*\)[;:,]?$")


def _is_code_line(line: str) -> bool:
    """A keyword opening, a statement or block end (; { }), a call ending the line: f(x), an operator."""
    s = line.rstrip()
    return bool(s) and (
        s[-1] in ";{}"
        or _CODE_START.match(s) is not None
        or any(t in s for t in _CODE_INFIX)
        or _CALL_AT_END.search(s) is not None
    )


def _code_lines(text: str) -> int:
    """Non-empty lines inside fences plus program-like lines outside them."""
    count, inside = 0, False
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            inside = not inside
        elif inside:
            count += bool(line.strip())
        else:
            count += _is_code_line(line)
    return count


def measure_signals(turns: Turns) -> Signals:
    """Every signal of the module docstring for one conversation of (role, content) turns."""
    users = [c for r, c in turns if r == USER]
    answers = [c for r, c in turns if r == ASSISTANT]
    instruction, response = "\n".join(users), "\n".join(answers)
    lower_instruction, lower_response = instruction.lower(), response.lower()
    instruction_words = estimate_tokens(instruction)
    response_words = estimate_tokens(response)
    fences = len(_FENCE.findall(response))
    code_blocks = (fences + 1) // 2
    code_lines = _code_lines(response)
    code_terms = len(_CODE_TERMS.findall(lower_instruction))
    math_terms = len(_MATH_TERMS.findall(lower_instruction))
    numbers = len(_NUMBER.findall(instruction))
    equations = len(_EQUATION.findall(response))
    return {
        "instruction_chars": len(instruction),
        "instruction_words": instruction_words,
        "response_chars": len(response),
        "response_words": response_words,
        "user_turns": len(users),
        "response_ratio": round(response_words / max(instruction_words, 1), 4),
        "list_items": len(_LIST_ITEM.findall(response)),
        "headings": len(_HEADING.findall(response)),
        "code_blocks": code_blocks,
        "code_lines": code_lines,
        "reasoning_markers": len(_REASONING.findall(lower_response)),
        "numbered_steps": len(_NUMBERED_STEP.findall(response)),
        "equations": equations,
        "code_terms": code_terms,
        "math_terms": math_terms,
        "numbers": numbers,
        "questions": instruction.count("?") + instruction.count("？"),
        "constraints": len(_CONSTRAINTS.findall(lower_instruction)),
        "has_code": int(code_blocks >= 1 or code_lines >= 2 or (code_terms >= 1 and code_lines >= 1)),
        "has_math": int(equations >= 1 or (math_terms >= 1 and numbers >= 2)),
    }


# --- formulas --------------------------------------------------------------------------------


def _sat(x: float, scale: float) -> float:
    return 1.0 - math.exp(-max(x, 0.0) / scale)


def _logsat(x: float, target: float) -> float:
    return min(1.0, math.log1p(max(x, 0.0)) / math.log1p(target))


def _weighted_mean(components: Mapping[str, float], weights: Mapping[str, float]) -> float:
    total = sum(weights[name] for name in components)
    return round(sum(weights[name] * value for name, value in components.items()) / total, 6)


def quality_components(signals: Mapping[str, float], settings: ScoringSettings) -> dict[str, float]:
    """The quality components of the module docstring, each in [0, 1] (model only when weighted)."""
    s = settings
    out = {
        "length": _logsat(signals["response_words"], s.target_response_words),
        "elaboration": min(1.0, signals["response_ratio"] / s.target_ratio),
        "structure": _sat(
            signals["list_items"] + 2 * signals["headings"] + 3 * signals["code_blocks"], s.structure_scale
        ),
        "reasoning": _sat(
            signals["reasoning_markers"] + signals["numbered_steps"] + signals["equations"], s.reasoning_scale
        ),
    }
    if s.quality.model > 0:
        if "model_score" not in signals:
            raise ScoringError(
                "scoring.quality.model > 0 but the signals have no model_score "
                "(score the records with the configured ModelScorer first)"
            )
        out["model"] = min(1.0, max(0.0, float(signals["model_score"])))
    return out


def difficulty_components(signals: Mapping[str, float], settings: ScoringSettings) -> dict[str, float]:
    """The difficulty components of the module docstring, each in [0, 1]."""
    s = settings
    return {
        "instruction_length": _logsat(signals["instruction_words"], s.target_instruction_words),
        "constraints": _sat(signals["constraints"], s.constraint_scale),
        "multi_part": _sat(max(signals["questions"] - 1, 0) + signals["user_turns"] - 1, s.multi_part_scale),
        "reasoning": _sat(
            signals["reasoning_markers"] + signals["numbered_steps"] + signals["equations"], s.reasoning_scale
        ),
        "technical": _sat(
            signals["code_terms"] + signals["math_terms"] + signals["code_blocks"] + signals["equations"],
            s.technical_scale,
        ),
        "answer_length": _logsat(signals["response_words"], s.target_response_words),
    }


def quality_score(signals: Mapping[str, float], settings: ScoringSettings = ScoringSettings()) -> float:
    """Weighted mean of the quality components: a number in [0, 1]."""
    return _weighted_mean(quality_components(signals, settings), settings.quality.model_dump())


def difficulty_score(signals: Mapping[str, float], settings: ScoringSettings = ScoringSettings()) -> float:
    """Weighted mean of the difficulty components: a number in [0, 1]."""
    return _weighted_mean(difficulty_components(signals, settings), settings.difficulty.model_dump())


# --- model score hook ------------------------------------------------------------------------


class ModelScorer(Protocol):
    """A model that scores (instruction, response) pairs in [0, 1]; its `name` is stored beside
    the score (as signals["model_score"]) so a changed model means a re-score."""

    name: str

    def score(self, instructions: Sequence[str], responses: Sequence[str]) -> np.ndarray: ...


class EmbeddingRelevanceScorer:
    """Relevance of the answer to the question: cosine of their sentence embeddings, clipped to
    [0, 1] (offline MiniLM by default). Low for an answer about something else; says nothing
    about correctness. Costs two embeddings per record (~50-130 texts/s on this machine), one
    when the instruction's vector is already cached (`score_vectors`)."""

    def __init__(self, settings: EmbeddingSettings = EmbeddingSettings()):
        self.settings = settings.model_copy(update={"normalize": True})  # unit vectors: dot = cosine
        self.name = f"relevance:{self.settings.fingerprint}"

    def score(self, instructions: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        from infinstruct.ml.embeddings import encode

        if len(instructions) != len(responses):
            raise ValueError(f"{len(instructions)} instructions but {len(responses)} responses")
        return self.score_vectors(encode(list(instructions), self.settings), responses)

    def score_vectors(self, instruction_vectors: np.ndarray, responses: Sequence[str]) -> np.ndarray:
        """Like `score`, with the instructions' unit vectors under `self.settings` already at hand."""
        from infinstruct.ml.embeddings import encode

        if len(instruction_vectors) != len(responses):
            raise ValueError(f"{len(instruction_vectors)} instructions but {len(responses)} responses")
        b = encode(list(responses), self.settings)
        return np.clip(np.einsum("ij,ij->i", np.asarray(instruction_vectors, dtype=np.float32), b), 0.0, 1.0)


# The judge's prompt. Changing a word of it (or of `_judge_messages`) means bumping JUDGE_PROMPT_VERSION: the
# version is in the scorer's name, so every record is scored again under the new prompt, and in the cache key.
JUDGE_PROMPT_VERSION = 1
JUDGE_PROMPT = (
    "You are a strict evaluator of answers written by AI assistants. You are given a user's instruction and an "
    "assistant's response. Rate how well the response answers the instruction: whether it is helpful (does what "
    "was asked, completely and clearly) and correct (facts, reasoning, code and arithmetic are right). "
    "Use an integer from 1 (useless, wrong or off-topic) to 10 (excellent: complete, correct and clear). "
    'Reply with JSON only, exactly of the form {"score": <integer 1-10>}, and nothing else.'
)


def _judge_messages(instruction: str, response: str, max_chars: int) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": JUDGE_PROMPT},
        {"role": "user", "content": f"[Instruction]\n{instruction[:max_chars]}\n\n[Response]\n{response[:max_chars]}"},
    ]


def parse_judge_score(content: str) -> int:
    """The score of a judge's answer: JSON {"score": n} with n an integer 1..10, else `InvalidAnswer`."""
    try:
        answer = json.loads(content)
    except ValueError:
        raise InvalidAnswer("not JSON") from None
    score = answer.get("score") if isinstance(answer, dict) else None
    if isinstance(score, float) and score.is_integer():
        score = int(score)  # 7.0 is the integer 7; 7.5 is not a score
    if isinstance(score, bool) or not isinstance(score, int) or not 1 <= score <= 10:
        raise InvalidAnswer(f"score {score!r} is not an integer from 1 to 10")
    return score


class LLMJudgeScorer:
    """Helpfulness and correctness of the answer as rated by a chat model (`JUDGE_PROMPT`, 1-10), mapped to
    [0, 1] by (score - 1) / 9. One request per record, answers cached in Postgres (`llm.JsonChat`)."""

    def __init__(self, settings: JudgeScorerSettings, engine: Engine | None = None):
        self.settings, self.engine = settings, engine
        self.name = f"judge:{settings.model}:prompt=v{JUDGE_PROMPT_VERSION}:chars={settings.max_chars}"

    def score(self, instructions: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        if len(instructions) != len(responses):
            raise ValueError(f"{len(instructions)} instructions but {len(responses)} responses")
        if self.engine is None:
            raise ValueError("LLMJudgeScorer needs the engine of its response cache to score")
        chat = JsonChat(self.settings, self.engine)
        requests = [_judge_messages(i, r, self.settings.max_chars) for i, r in zip(instructions, responses)]
        scores = chat.ask_many(requests, f"judge-v{JUDGE_PROMPT_VERSION}", parse_judge_score)
        return (np.asarray(scores, dtype=np.float64) - 1.0) / 9.0


def model_scorer(
    settings: ScoringSettings, embedding: EmbeddingSettings, engine: Engine | None = None
) -> EmbeddingRelevanceScorer | LLMJudgeScorer | None:
    """The scorer the settings name (None without a `scorer`); `embedding` is the selection's, the default;
    `engine` holds the LLM judge's response cache (needed to score, not to name). Building a scorer loads
    nothing and calls nothing: the model loads, or the endpoint is resolved, on the first score."""
    if settings.scorer is None:
        return None
    if isinstance(settings.scorer, JudgeScorerSettings):
        return LLMJudgeScorer(settings.scorer, engine)
    return EmbeddingRelevanceScorer(settings.scorer.embedding or embedding)
