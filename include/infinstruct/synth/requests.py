"""What every Phase-2 LLM step shares about its requests: a seed per record, and a clean stop at a budget cap."""

from __future__ import annotations

import hashlib
from typing import Callable, TypeVar

from infinstruct.errors import DataError
from infinstruct.ml.llm import BudgetExhausted

T = TypeVar("T")


class BudgetReached(DataError, RuntimeError):
    """A budget cap stopped the step: what was answered is cached, and the next run continues from there."""


def request_seed(*parts: object) -> int:
    """A 32-bit seed from what a request is about (its record, its round): the same on every run, so a re-run
    builds the same requests and the cache answers them."""
    return int(hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:8], 16)


def within_budget(ask: Callable[..., T], *args) -> T:
    """`ask(*args)`, a budget stop turned into a `BudgetReached` (a data error: failed without retries, and the
    run's export held back)."""
    try:
        return ask(*args)
    except BudgetExhausted as exc:
        raise BudgetReached(f"stopped at the budget cap: {exc}") from exc
