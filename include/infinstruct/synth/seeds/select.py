"""Which tagged records are informative seeds for evolution, and in what order (pure).

A candidate earns a signal for each way it is informative, as Infinity-Instruct picks its seeds:

    rare_label     one of its ability labels is on at most `rare_label_max_count` tagged records (long tail)
    multi_ability  its labels span at least `min_categories` coarse categories
    hard           IFD >= `hard_ifd`: the response is barely easier to predict with the instruction than without
                   (or, where the endpoint gives no prompt log-probs, Phase 1's difficulty >= `hard_proxy`)
    weak_category  one of its categories was weak in the last diagnosis (students failed there)

Its score is the sum of its signals' weights; candidates without a signal are not seeds. Ties go by a hash of
the record id, so the order is the same on every run and does not favour any source.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from infinstruct.synth.settings import SeedSettings


@dataclass(frozen=True)
class Candidate:
    record_id: str
    instruction: str
    labels: tuple[str, ...]
    categories: tuple[str, ...]
    hardness: float | None = None  # IFD, or the proxy (hardness_kind says which)
    hardness_kind: str | None = None  # ifd | proxy


@dataclass(frozen=True)
class Seed:
    candidate: Candidate
    score: float
    why: tuple[str, ...] = field(default_factory=tuple)


def label_counts(candidates: Iterable[Candidate]) -> Counter:
    """On how many candidates each label is."""
    return Counter(label for c in candidates for label in set(c.labels))


def signals(
    candidate: Candidate,
    counts: Mapping[str, int],
    settings: SeedSettings,
    weak_categories: frozenset[str] = frozenset(),
) -> tuple[str, ...]:
    """The ways a candidate is informative (module docstring), in a fixed order."""
    found = []
    if any(counts.get(label, 0) <= settings.rare_label_max_count for label in candidate.labels):
        found.append("rare_label")
    if len(set(candidate.categories)) >= settings.min_categories:
        found.append("multi_ability")
    if candidate.hardness is not None:
        threshold = settings.hard_ifd if candidate.hardness_kind == "ifd" else settings.hard_proxy
        if candidate.hardness >= threshold:
            found.append("hard")
    if weak_categories.intersection(candidate.categories):
        found.append("weak_category")
    return tuple(found)


def _tie_break(record_id: str) -> str:
    return hashlib.sha256(record_id.encode()).hexdigest()


def rank_seeds(
    candidates: Iterable[Candidate],
    counts: Mapping[str, int],
    settings: SeedSettings,
    weak_categories: frozenset[str] = frozenset(),
    limit: int | None = None,
) -> list[Seed]:
    """Candidates with at least one signal, best first (score, then the id's hash), at most `limit`."""
    seeds = []
    for candidate in candidates:
        if not candidate.labels:
            continue  # untagged (the tagger's answer did not fit): nothing to say it is informative
        why = signals(candidate, counts, settings, weak_categories)
        if why:
            seeds.append(Seed(candidate, sum(settings.weights.get(w, 0.0) for w in why), why))
    seeds.sort(key=lambda s: (-s.score, _tie_break(s.candidate.record_id)))
    return seeds[:limit] if limit is not None else seeds
