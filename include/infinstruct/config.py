"""Settings and recipes.

A recipe is a YAML file validated into strict pydantic models: an unknown or misspelt key is an
error naming the key, never a silently ignored setting.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from infinstruct.curate.decontam.embedding import EmbeddingMatchSettings
from infinstruct.curate.decontam.ngrams import BenchmarkSpec, NgramSettings
from infinstruct.curate.near_dedup.minhash import NearDupSettings
from infinstruct.curate.rules.filters import RuleSettings
from infinstruct.curate.selection.quotas import SelectionSettings
from infinstruct.curate.semantic_dedup.pairs import SemanticDedupSettings
from infinstruct.errors import DataError
from infinstruct.ml.roles import LLMSettings
from infinstruct.release.writers import ReleaseSettings
from infinstruct.strict import Strict
from infinstruct.synth.settings import SynthesisSettings
from infinstruct.synth.tagging.labels import TaggingSettings

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RECIPE = PROJECT_ROOT / "include" / "recipes" / "sample.yaml"

SourceFormat = Literal["alpaca", "sharegpt", "messages", "custom"]
# dataset and source names become folder and file names: letters, digits, _ . -, and not only dots ("..": the parent)
NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"


def _folder_name(name: str) -> str:
    if not name.strip("."):
        raise ValueError(f"{name!r} is no folder name (only dots)")
    return name


CUSTOM_FIELDS = ("system", "user", "input", "assistant")


class RecipeError(DataError, ValueError):
    """The recipe file is missing, not YAML, or does not match the recipe schema."""


PARTITION = "{partition}"  # in a source path: the run's partition key (e.g. a date folder), see sources/plan.py


class Source(Strict):
    """One raw instruction source: files (a path or glob) in one format."""

    name: str = Field(pattern=NAME_PATTERN, max_length=100)
    _plain_name = field_validator("name")(_folder_name)
    path: str
    format: SourceFormat
    # custom format only: conversation field -> dotted path in the raw record (e.g. instances.0.output)
    fields: dict[str, str] | None = None
    # lower wins when the same instruction comes from several sources; default: order in the recipe
    priority: int | None = None

    @field_validator("path")
    @classmethod
    def _partition_placeholder(cls, path: str) -> str:
        """`{partition}` may name one path component's variable part: `incoming/{partition}/*.jsonl`,
        `dumps/day={partition}/part-*.parquet` (the rest of that component literal, no `**` before it)."""
        if PARTITION not in path:
            return path
        if path.count(PARTITION) > 1:
            raise ValueError(f"{path}: name the partition once ({PARTITION})")
        parts = path.replace(os.sep, "/").split("/")
        at = next(i for i, part in enumerate(parts) if PARTITION in part)
        if "**" in parts[:at] or any(c in parts[at].replace(PARTITION, "") for c in "*?["):
            raise ValueError(
                f"{path}: the path component with {PARTITION} must be otherwise literal, with no ** before it"
            )
        return path

    @model_validator(mode="after")
    def _fields_match_format(self) -> "Source":
        if self.format == "custom":
            if not self.fields or "user" not in self.fields or "assistant" not in self.fields:
                raise ValueError(
                    f"source {self.name!r}: format 'custom' needs fields with at least 'user' and 'assistant'"
                )
            unknown = set(self.fields) - set(CUSTOM_FIELDS)
            if unknown:
                raise ValueError(
                    f"source {self.name!r}: unknown custom field(s) {sorted(unknown)}; allowed: {list(CUSTOM_FIELDS)}"
                )
        elif self.fields:
            raise ValueError(f"source {self.name!r}: 'fields' only applies to format 'custom'")
        return self


class IngestSettings(Strict):
    # JSONL lines / Parquet rows per partition: 50k lets a 100k-line file use both cores of a small worker
    shard_lines: int = Field(50_000, ge=1)
    batch_size: int = Field(5_000, ge=1)  # rows per COPY batch
    max_record_chars: int = Field(200_000, ge=1)  # longer records are quarantined as too_long
    max_quarantine_ratio: float = Field(0.5, ge=0, le=1)  # above it the partition fails: likely a wrong mapping


class GateSettings(Strict):
    min_turn_chars: int = Field(1, ge=1)
    max_record_chars: int = Field(200_000, ge=1)
    # share of released records whose instruction language is allowed (or undetermined, e.g. code);
    # the rest are records the language rule was too unsure about to drop
    min_allowed_language_share: float = Field(0.95, ge=0, le=1)
    # share of the audited released records with a near-duplicate in the release (MinHash LSH, confirmed as
    # near_deduplicate confirms pairs): what the dedup stages let through, templates that differ in an
    # essential word aside; audited: the records of new release parts, at most `near_duplicate_sample`
    max_near_duplicate_share: float = Field(0.01, ge=0, le=1)
    near_duplicate_sample: int = Field(20_000, ge=1)
    # an independent, looser contamination check of released records (curate/decontam/audit.py): the share
    # it flags is reported; bounded only when set (looser means false alarms on same-topic questions)
    contamination_sample: int = Field(2_000, ge=1)
    contamination_audit_cosine: float = Field(0.8, gt=0, le=1)
    max_contamination_suspect_share: float | None = Field(None, ge=0, le=1)


class DecontamSettings(Strict):
    """Benchmarks that must never leak into a release, and how they are matched."""

    benchmarks: list[BenchmarkSpec] = []
    ngram: NgramSettings = NgramSettings()
    include_response: bool = True  # a response that quotes a benchmark item leaks it too
    # MiniLM cosine of the instruction (user turns) to every item catches paraphrases n-grams miss; null: off
    embedding: EmbeddingMatchSettings | None = EmbeddingMatchSettings()


class Recipe(Strict):
    name: str = Field(pattern=NAME_PATTERN, max_length=100)
    _plain_name = field_validator("name")(_folder_name)
    description: str = ""
    sources: list[Source] = Field(min_length=1)
    ingest: IngestSettings = IngestSettings()
    rules: RuleSettings = RuleSettings()
    decontamination: DecontamSettings = DecontamSettings()
    near_dedup: NearDupSettings = NearDupSettings()
    semantic_dedup: SemanticDedupSettings | None = SemanticDedupSettings()  # null: off
    gates: GateSettings = GateSettings()
    selection: SelectionSettings | None = None  # null: release every standing record
    release: ReleaseSettings = ReleaseSettings()  # the record formats a release holds
    stages: dict[str, dict[str, Any]] = {}  # the sections of your own stages ($INFINSTRUCT_STAGES), by task
    llm: LLMSettings = LLMSettings()  # Phase 2's LLM roles (a role left out: the embedded server)
    tagging: TaggingSettings | None = None  # Phase 2's ability tagging (null: the defaults, when synthesising)
    synthesis: SynthesisSettings | None = None  # Phase 2: seeds, evolution, responses, judging, diagnosis

    @model_validator(mode="after")
    def _unique_source_names(self) -> "Recipe":
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique; repeated: {dupes}")
        return self

    def source(self, name: str) -> Source:
        for s in self.sources:
            if s.name == name:
                return s
        raise KeyError(f"recipe {self.name!r} has no source {name!r}")

    def priority(self, name: str) -> int:
        for position, s in enumerate(self.sources):
            if s.name == name:
                return s.priority if s.priority is not None else position
        raise KeyError(name)

    def stage_settings(self, task: str) -> Any | None:
        """The validated section `stages.<task>` of a registered stage, or None when the recipe has none (off)."""
        from infinstruct.stages import stage

        spec = stage(task)
        if task not in self.stages:
            return None
        return spec.settings.model_validate(self.stages[task]) if spec.settings else self.stages[task]

    @property
    def priorities(self) -> dict[str, int]:
        """Source name -> priority (lower wins), for every source."""
        return {s.name: self.priority(s.name) for s in self.sources}


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, but a key given twice in one mapping is an error (YAML keeps the last, silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_recipe(path: str | os.PathLike) -> tuple[Recipe, Path]:
    """Load and validate a recipe; source paths are resolved relative to the recipe file."""
    path = Path(path).expanduser().resolve()
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except FileNotFoundError:
        raise RecipeError(f"recipe not found: {path}") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"recipe {path} is not valid YAML: {exc}") from None
    return parse_recipe(raw, base_dir=path.parent, origin=str(path)), path


def parse_recipe(raw: object, base_dir: Path, origin: str = "recipe") -> Recipe:
    """Validate a recipe mapping and make its source paths absolute."""
    if not isinstance(raw, dict):
        raise RecipeError(f"{origin}: a recipe is a YAML mapping, got {type(raw).__name__}")
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
        )
        raise RecipeError(f"{origin}: {problems}") from None
    _check_stage_sections(recipe, origin)
    sources = [s.model_copy(update={"path": _absolute(s.path, base_dir)}) for s in recipe.sources]
    benchmarks = [b.model_copy(update={"path": _absolute(b.path, base_dir)}) for b in recipe.decontamination.benchmarks]
    update = {
        "sources": sources,
        "decontamination": recipe.decontamination.model_copy(update={"benchmarks": benchmarks}),
    }
    if recipe.selection is not None:
        update["selection"] = _absolute_selection(recipe.selection, base_dir)
    return recipe.model_copy(update=update)


def _check_stage_sections(recipe: Recipe, origin: str) -> None:
    """Every `stages.<task>` section names a registered stage and fits its settings model."""
    from infinstruct.stages import all_stages

    registered = {s.task: s for s in all_stages() if s.settings is not None}
    for task, section in recipe.stages.items():
        if task not in registered:
            raise RecipeError(
                f"{origin}: stages.{task}: no stage of your own has that name (declared: "
                f"{sorted(registered) or 'none: modules named in INFINSTRUCT_STAGES declare them'})"
            )
        try:
            registered[task].settings.model_validate(section)
        except ValidationError as exc:
            problems = "; ".join(
                f"stages.{task}.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise RecipeError(f"{origin}: {problems}") from None


def _absolute_selection(selection: SelectionSettings, base_dir: Path) -> SelectionSettings:
    targets = {d: t.model_copy(update={"path": _absolute(t.path, base_dir)}) for d, t in selection.targets.items()}
    weak = _absolute(selection.weak_domains, base_dir) if selection.weak_domains else None
    return selection.model_copy(update={"targets": targets, "weak_domains": weak})


def _absolute(path: str, base_dir: Path) -> str:
    expanded = os.path.expanduser(path)
    return expanded if os.path.isabs(expanded) else str((base_dir / expanded).resolve())


_LATER_SECTIONS = ("stages", "release")
PHASE2_SECTIONS = ("llm", "tagging", "synthesis")


def recipe_hash(recipe: Recipe, phase2: bool = False) -> str:
    """Hash of everything that shapes Phase 1's output (with `phase2`, Phase 2's too), so a release says
    which recipe produced it."""
    # sections added later are left out while at their defaults: recipes hash as they did before they existed;
    # Phase 2's sections do not shape a Phase-1 release
    later = {
        name
        for name in _LATER_SECTIONS
        if getattr(recipe, name) == Recipe.model_fields[name].get_default(call_default_factory=True)
    } | (set() if phase2 else set(PHASE2_SECTIONS))
    dumped = recipe.model_dump(mode="json", exclude=later or None)
    canonical = json.dumps(dumped, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def infinstruct_home() -> Path:
    """Where local state lives (embedded Postgres data, Airflow home): $INFINSTRUCT_HOME or <project>/.infinstruct."""
    return Path(os.environ.get("INFINSTRUCT_HOME") or PROJECT_ROOT / ".infinstruct").resolve()
