"""Recipe section `synthesis`: how Phase 2 picks seeds, evolves them, answers, judges and diagnoses.

Thresholds live here, not in code. Prompts are the defaults of each stage's module unless the recipe gives
its own text under `prompts.<template>`: an edited template is a new request for exactly what it builds.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from infinstruct.ml.embeddings import EmbeddingSettings
from infinstruct.strict import Strict

OPERATIONS = ("add_constraints", "deepen", "concretise", "reasoning_steps", "complicate_input", "breadth")


class SeedSettings(Strict):
    """Which released records become seeds: the informative ones (Infinity-Instruct's seed selection)."""

    max_seeds: int = Field(16, ge=1)
    batch_size: int = Field(4, ge=1)  # seeds per mapped LLM task
    rare_label_max_count: int = Field(2, ge=1)  # a label on at most this many tagged records is long-tail
    min_categories: int = Field(2, ge=2)  # this many coarse categories: a multi-ability instruction
    # hardness: IFD from the student role's prompt log-probs where its endpoint gives them, else the proxy
    hardness: str = Field("ifd", pattern="^(ifd|proxy|off)$")
    hard_ifd: float = Field(0.9, gt=0)  # IFD at or above it: the response barely helped
    hard_proxy: float = Field(0.5, ge=0, le=1)  # proxy (see seeds/select.py) at or above it
    ifd_candidates: int = Field(64, ge=1)  # IFD is asked for the best candidates by the other signals only
    weights: dict[str, float] = Field(
        default_factory=lambda: {"rare_label": 1.0, "multi_ability": 1.0, "hard": 1.0, "weak_category": 2.0}
    )


class EvolutionSettings(Strict):
    """Evol-Instruct: rounds of in-depth and in-breadth rewrites, and the elimination of failed ones."""

    rounds: int = Field(2, ge=1, le=8)
    operations: dict[str, float] = Field(default_factory=lambda: {op: 1.0 for op in OPERATIONS})  # weights
    min_parent_similarity: float = Field(0.3, ge=-1, le=1)  # an in-depth child further away is unrelated
    min_breadth_similarity: float = Field(0.1, ge=-1, le=1)  # ... an in-breadth one (a new instruction, same domain)
    max_parent_similarity: float = Field(0.97, ge=-1, le=1)  # a child this close adds nothing
    llm_equality_check: bool = True  # also ask the judge whether the child adds anything
    min_words: int = Field(3, ge=1)  # fewer content words: empty
    embedding: EmbeddingSettings = EmbeddingSettings()

    @model_validator(mode="after")
    def _known_operations(self) -> EvolutionSettings:
        unknown = set(self.operations) - set(OPERATIONS)
        if unknown or not any(w > 0 for w in self.operations.values()):
            raise ValueError(
                f"evolution.operations: known operations are {list(OPERATIONS)} with a weight > 0 for "
                f"at least one; unknown: {sorted(unknown)}"
            )
        return self


class ResponseSettings(Strict):
    turns: int = Field(1, ge=1, le=4)  # 2-4: the responder also plays the user for follow-up questions


class JudgingSettings(Strict):
    min_reward: float = Field(5.0, ge=0, le=10)  # the judge's overall score (1-10) a kept child needs


_PHASE1_DOMAIN = {  # coarse category -> Phase 1's domain, where it is not `knowledge`
    "mathematical ability": "math",
    "logic and reasoning": "math",
    "programming and software development": "code",
    "data science and analytics": "code",
    "operation and maintenance": "code",
    "communication and social media": "chat",
    "open task completion": "chat",
    "creativity and design": "chat",
    "literary creation and artistic knowledge": "chat",
    "task generation": "chat",
    "psychological knowledge": "chat",
}


class DiagnosisSettings(Strict):
    enabled: bool = True
    fail_below: float = Field(5.0, ge=0, le=10)  # a student answer graded under this failed
    weak_fail_rate: float = Field(0.5, ge=0, le=1)  # a category whose students failed this often is weak
    min_graded: int = Field(1, ge=1)  # ... with at least this many graded answers
    # Phase 1's top-up speaks of its selection domains: the domain of each coarse category (else the default)
    phase1_domains: dict[str, str] = Field(default_factory=lambda: dict(_PHASE1_DOMAIN))
    phase1_default_domain: str = "knowledge"

    def phase1_domain(self, category: str) -> str:
        return self.phase1_domains.get(category, self.phase1_default_domain)


class SynthesisGates(Strict):
    """The Great Expectations gates between the Phase-2 stages."""

    min_labelled_share: float = Field(0.5, ge=0, le=1)  # released records with at least one ability label
    max_refusal_share: float = Field(0.5, ge=0, le=1)  # evolved children that were refusals
    min_valid_judge_share: float = Field(0.5, ge=0, le=1)  # judged children whose verdict fitted the rubric
    min_records: int = Field(1, ge=0)  # kept synthetic records


class SynthesisSettings(Strict):
    """Recipe section `synthesis` (null or absent: no Phase 2)."""

    seeds: SeedSettings = SeedSettings()
    evolution: EvolutionSettings = EvolutionSettings()
    responses: ResponseSettings = ResponseSettings()
    judging: JudgingSettings = JudgingSettings()
    diagnosis: DiagnosisSettings = DiagnosisSettings()
    gates: SynthesisGates = SynthesisGates()
    merge_foundation: bool = True  # the release holds the foundational records (with labels) as well
    prompts: dict[str, str] = {}  # template name -> your own text (names: `infinstruct prompts`)
