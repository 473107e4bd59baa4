"""The closed vocabulary of verdicts and reasons.

These codes are a public interface: they appear in the database, in each release's
`ledger.parquet` and in the logs, and users filter and count on them. Add codes; never rename one.
"""

from __future__ import annotations

from enum import StrEnum


class Verdict(StrEnum):
    KEPT = "kept"
    DROPPED = "dropped"
    QUARANTINED = "quarantined"


class Stage(StrEnum):
    """Pipeline stages in the order they run: a line dropped by several is reported under the first."""

    INGEST = "ingest"
    RULES = "rules"
    DECONTAM = "decontam"
    DEDUP = "dedup"
    NEAR_DEDUP = "near_dedup"
    SEMANTIC_DEDUP = "semantic_dedup"
    SELECT = "select"


class Quarantine(StrEnum):
    """Why an input line could not become a record (stored as `quarantine:<code>`)."""

    BLANK_LINE = "blank_line"  # an empty line inside a JSONL file
    INVALID_UTF8 = "invalid_utf8"  # bytes that are not UTF-8
    INVALID_UNICODE = "invalid_unicode"  # JSON escapes that are not valid text (lone surrogates)
    NUL_BYTE = "nul_byte"  # a NUL character (PostgreSQL text cannot hold it)
    TOO_LONG = "too_long"  # over ingest.max_record_chars
    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"  # valid JSON, but not a {...} record
    MISSING_FIELD = "missing_field"  # a field the source format requires is absent or null
    WRONG_TYPE = "wrong_type"  # a field has the wrong JSON type
    BAD_ROLE = "bad_role"  # a speaker role the format does not know
    EMPTY_CONVERSATION = "empty_conversation"
    EMPTY_TURN = "empty_turn"  # a user or assistant turn with no text
    BAD_ROLE_ORDER = "bad_role_order"  # turns do not alternate user/assistant (after an optional system turn)
    NO_RESPONSE = "no_response"  # the conversation does not end with an assistant turn

    @property
    def code(self) -> str:
        return f"quarantine:{self.value}"


class Drop(StrEnum):
    """Why a parsed record was dropped from the release (besides `rule:<rule>` and `contaminated:<benchmark>`)."""

    EXACT_DUPLICATE = "exact_duplicate"  # same normalised conversation as the kept record
    DUPLICATE_INSTRUCTION = "duplicate_instruction"  # same user turns as the kept record, another answer
    NEAR_DUPLICATE = "near_duplicate"  # MinHash-similar instruction to the kept record
    SEMANTIC_DUPLICATE = "semantic_duplicate"  # embedding-similar instruction to an accepted record


def rule_reason(rule: str) -> str:
    """`rule:<name>`: a rule filter dropped the record (names: infinstruct.curate.rules.filters.Rule)."""
    return f"rule:{rule}"


def contamination_reason(benchmark: str) -> str:
    """`contaminated:<benchmark>`: the record matches an item of that benchmark (names: the recipe's benchmarks)."""
    return f"contaminated:{benchmark}"


def not_selected_reason(domain: str) -> str:
    """`not_selected:<domain>`: a clean record the selection left out (names: the recipe's domains)."""
    return f"not_selected:{domain}"
