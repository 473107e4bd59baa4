"""Recipe section `selection` and the quota arithmetic of Phase 1 selection (pure functions).

A selection picks a balanced foundational set from the standing pool (what survived cleaning and
dedup), per domain:

* **Quotas.** `shares` are the mix of the selection (normalised to sum 1: the paper's 44/19/19 can be
  written as is); `size` is the size of that part: a share of the standing records of those domains
  (≤ 1.0) or a record count (> 1). `counts` are absolute quotas per domain. `keep_all` domains are
  selected whole, outside the quotas: Infinity-Instruct keeps its chat/subjective records in the
  foundational set, as the seeds of Phase 2. Every domain of the classifier is in exactly one of the three.
* **Top-up.** `weak_domains` names a JSON report, e.g. from an evaluation run or Phase 2's diagnosis:
  ``{"math": 1.5, "code": {"factor": 1.2, "extra": 200}}``; a domain's quota becomes
  ``round(quota · factor) + extra`` on the next run.
* **Fit.** When a `shares` domain has fewer acceptable records than its quota, every `shares` quota is
  scaled down by the same factor (a greedy selection cut short is still a greedy selection), so the
  mix holds and the selection is as large as the pool allows (`size: 1.0` = as large as possible).
* **Rank.** Within a domain records are walked by a rank score: the weighted mean of quality,
  difficulty and, when the domain has a DSIR `target`, the importance: the percentile of the record's
  Gumbel-top-k key ``log w + G`` (DSIR resampling toward the target, seeded per record id).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from infinstruct.curate.scoring.domains import DomainSettings
from infinstruct.curate.scoring.signals import ScoringSettings
from infinstruct.curate.selection.dsir import DsirSettings
from infinstruct.errors import DataError, permanent_os_error
from infinstruct.ml.embeddings import EmbeddingSettings
from infinstruct.strict import Strict


class SelectionError(DataError, ValueError):
    """The selection cannot run as configured (unknown domain in a report, records never scored ...)."""


class TargetSpec(Strict):
    """A DSIR target: a JSONL file and the dotted paths of its text (like a decontamination benchmark).
    Use train-side files or a subset of the pool: never a benchmark's test items."""

    path: str
    fields: list[str] = Field(min_length=1)


class RankWeights(Strict):
    quality: float = Field(1.0, ge=0)
    difficulty: float = Field(0.0, ge=0)
    importance: float = Field(1.0, ge=0)  # DSIR toward the domain's target; ignored without a target


class SelectionSettings(Strict):
    """Recipe section `selection` (null or absent: every standing record is released)."""

    scoring: ScoringSettings = ScoringSettings()  # with `scorer`: a model score too (its embedding defaults to ours)
    domains: DomainSettings = DomainSettings()
    embedding: EmbeddingSettings = EmbeddingSettings()  # vectors for domains and diversity (cached per record)
    size: float = Field(1.0, gt=0)  # ≤ 1: share of the standing records of `shares` domains; > 1: a count
    shares: dict[str, float] = {}  # domain -> proportion of the selection (normalised)
    counts: dict[str, int] = {}  # domain -> absolute quota
    keep_all: list[str] = []  # domains selected whole, outside the quotas (Phase 2 seeds)
    tolerance: float = Field(0.05, ge=0, le=1)  # gate: |achieved share - planned share| per quota domain
    targets: dict[str, TargetSpec] = {}  # domain -> DSIR target
    dsir: DsirSettings = DsirSettings()
    rank: RankWeights = RankWeights()
    diversity_threshold: float = Field(0.9, ge=-1, le=1)  # cosine to the selected set at which a record is redundant
    # the selected set's persistent index, as semantic_dedup.index (auto: pgvector HNSW when the server has it)
    index: Literal["auto", "pgvector", "exact"] = "auto"
    seed: int = Field(0, ge=0)
    weak_domains: str | None = None  # path of a weak-domain report (JSON), relative to the recipe
    min_quality_margin: float = 0.0  # gate: selected mean quality >= pool mean + margin

    @model_validator(mode="after")
    def _every_domain_once(self) -> SelectionSettings:
        names = list(self.domains.resolved())
        places: dict[str, list[str]] = {}
        for key, domains in (
            ("shares", self.shares),
            ("counts", self.counts),
            ("keep_all", self.keep_all),
            ("targets", self.targets),
        ):
            for d in domains:
                if d not in names:
                    raise ValueError(f"selection.{key}: unknown domain {d!r}; domains: {names}")
                if key != "targets":
                    places.setdefault(d, []).append(key)
        twice = {d: k for d, k in places.items() if len(k) > 1}
        if twice:
            raise ValueError(f"selection: domain(s) in more than one of shares/counts/keep_all: {twice}")
        missing = [d for d in names if d not in places]
        if missing:
            raise ValueError(f"selection: domain(s) {missing} need a place in shares, counts or keep_all")
        if any(v < 0 for v in self.shares.values()) or (self.shares and sum(self.shares.values()) <= 0):
            raise ValueError("selection.shares: proportions must be >= 0 with a positive sum")
        if any(v < 0 for v in self.counts.values()):
            raise ValueError("selection.counts: quotas must be >= 0")
        return self

    def ranking(self) -> dict:
        """What the order of candidates depends on: a change starts the persisted selection over."""
        return self.model_dump(
            mode="json",
            include={"scoring", "domains", "embedding", "targets", "dsir", "rank", "diversity_threshold", "seed"},
        )


class Boost(Strict):
    factor: float = Field(1.0, ge=0)
    extra: int = Field(0, ge=0)


def load_boosts(path: str | None, domains: list[str]) -> dict[str, Boost]:
    """The weak-domain report: domain -> factor, or {factor, extra}. Missing file or unknown domain: error."""
    if path is None:
        return {}
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SelectionError(f"selection.weak_domains: report {path!r} not found (write {{}} for no boosts)") from None
    except OSError as exc:
        if not permanent_os_error(exc):
            raise  # EIO, a stale NFS handle: the task's retry may read it
        raise SelectionError(f"selection.weak_domains: cannot read {path!r}: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SelectionError(f"selection.weak_domains: {path!r} is not JSON (UTF-8): {exc}") from None
    if not isinstance(raw, dict):
        raise SelectionError(f"selection.weak_domains: {path!r} must be a JSON object of domain -> boost")
    out = {}
    for domain, value in raw.items():
        if domain not in domains:
            raise SelectionError(f"selection.weak_domains: unknown domain {domain!r} in {path!r}; domains: {domains}")
        try:
            out[domain] = Boost(factor=value) if isinstance(value, (int, float)) else Boost.model_validate(value)
        except ValueError as exc:
            raise SelectionError(f"selection.weak_domains: {path!r}, domain {domain!r}: {exc}") from None
    return out


def plan_quotas(
    settings: SelectionSettings, available: dict[str, int], boosts: dict[str, Boost] | None = None
) -> dict[str, int]:
    """Quota per quota domain (not keep_all) before fitting: shares of `size`, counts, then boosts."""
    boosts = boosts or {}
    quotas: dict[str, int] = {}
    if settings.shares:
        pool = sum(available.get(d, 0) for d in settings.shares)
        total = settings.size if settings.size > 1 else settings.size * pool
        norm = sum(settings.shares.values())
        quotas.update({d: int(round(total * s / norm)) for d, s in settings.shares.items()})
    quotas.update(settings.counts)
    for domain, boost in boosts.items():
        if domain in quotas:
            quotas[domain] = int(round(quotas[domain] * boost.factor)) + boost.extra
    return quotas


def fit_quotas(settings: SelectionSettings, quotas: dict[str, int], reachable: dict[str, int]) -> dict[str, int]:
    """Scale the `shares` quotas down together when a domain cannot reach its own (see the module docstring)."""
    scale = min([reachable.get(d, 0) / q for d, q in quotas.items() if d in settings.shares and q > 0], default=1.0)
    if scale >= 1:
        return dict(quotas)
    return {d: (math.floor(q * scale + 1e-9) if d in settings.shares else q) for d, q in quotas.items()}


def planned_shares(quotas: dict[str, int]) -> dict[str, float]:
    """The mix the quotas ask for: each quota domain's share of their sum."""
    total = sum(quotas.values())
    return {d: (q / total if total else 0.0) for d, q in quotas.items()}
