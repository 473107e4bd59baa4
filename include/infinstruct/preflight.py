"""What a run needs before it starts work, checked at `start_run`: a misconfigured input fails the run there,
naming the file, not after ingest and rules have run (or at export).

* every benchmark file exists and its first item has the recipe's fields;
* every selection target file and the weak-domain report exist (the report must also parse).
"""

from __future__ import annotations

from pathlib import Path

from infinstruct.config import Recipe, RecipeError
from infinstruct.curate.decontam.ngrams import BenchmarkError, iter_items


def check_inputs(recipe: Recipe) -> None:
    """Raise RecipeError naming the first input the recipe points to that a stage could not use."""
    for spec in recipe.decontamination.benchmarks:
        try:
            next(iter_items(spec), None)
        except BenchmarkError as exc:
            raise RecipeError(f"decontamination.benchmarks: {exc}") from None
    if recipe.selection is not None:
        for domain, target in recipe.selection.targets.items():
            if not Path(target.path).is_file():
                raise RecipeError(f"selection.targets.{domain}: file {target.path!r} not found")
        if recipe.selection.weak_domains:
            from infinstruct.curate.selection.quotas import SelectionError, load_boosts

            try:
                load_boosts(recipe.selection.weak_domains, list(recipe.selection.domains.resolved()))
            except SelectionError as exc:
                raise RecipeError(str(exc)) from None
