"""The one conversation schema every source is mapped into, its identity and its sanity checks."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

import orjson

from infinstruct.record.normalise import normalise_text
from infinstruct.record.reasons import Quarantine

SYSTEM, USER, ASSISTANT = "system", "user", "assistant"
# The public Infinity-Instruct record shape speaks of human/gpt.
EXPORT_ROLE = {SYSTEM: "system", USER: "human", ASSISTANT: "gpt"}
ROLE_LETTER = {SYSTEM: "s", USER: "u", ASSISTANT: "a"}
# An optional system turn, then user/assistant pairs: what the gates also expect.
ROLE_PATTERN = r"^s?(ua)+$"
_ROLE_PATTERN = re.compile(ROLE_PATTERN)
_NO_RESPONSE = re.compile(r"^s?(ua)*u$")

Turn = tuple[str, str]  # (role, content)

# Version of what makes a record of raw turns (normalise_text, build_record): part of what a partition's
# `ingested_checksum` says is in `records`, so a change re-ingests stored partitions once instead of leaving
# records made the old way beside new ones (equal content would no longer share an id).
# 2: control characters, ANSI escapes, bidi controls and noncharacters removed.
RECORD_VERSION = 2


class ConversationError(ValueError):
    """A raw record cannot become a conversation; `reason` says why in the closed vocabulary."""

    def __init__(self, reason: Quarantine, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Record:
    """A parsed input line: the conversation plus the measurements later stages and gates use."""

    record_id: str
    instruction_key: str
    conversation: bytes  # canonical compact JSON, UTF-8: [{"role": ..., "content": ...}]; what the id hashes
    role_pattern: str
    min_turn_chars: int
    total_chars: int


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def canonical_json(turns: tuple[Turn, ...]) -> bytes:
    """The normalised conversation as compact JSON; its hash is the record id.

    Raises TypeError for text that is not valid Unicode (lone surrogates from JSON escapes).
    """
    return orjson.dumps([{"role": r, "content": c} for r, c in turns])


def instruction_text(turns: Iterable[Turn]) -> str:
    """THE instruction of a conversation: its user turns, joined by a newline (what is embedded, hashed into
    MinHash keys, classified and tagged). `instruction_sql` is the same text computed by PostgreSQL."""
    return "\n".join(content for role, content in turns if role == USER)


def instruction_sql(row: str = "r") -> str:
    """`instruction_text` of the conversation of `row` (an alias of `records`), as a SQL expression: the
    answers, most of a record's bytes, never leave the server. tests/curate/test_neardup.py checks both agree."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", row):
        raise ValueError(f"row alias must be a plain identifier, got {row!r}")
    return (
        f"coalesce((select string_agg(t.turn->>'content', E'\\n' order by t.n)"
        f" from json_array_elements({row}.conversation) with ordinality as t(turn, n)"
        f" where t.turn->>'role' = '{USER}'), '')"
    )


def instruction_key(turns: tuple[Turn, ...]) -> str:
    """Hash of the user turns (case and whitespace folded): equal when the same instruction was asked."""
    asked = "\x1f".join(" ".join(c.split()).casefold() for r, c in turns if r == USER)
    return _digest(asked.encode("utf-8", "surrogatepass"))


def build_record(raw_turns: list[Turn], max_chars: int) -> Record:
    """Validate raw (role, content) turns and compute identity and measurements.

    Raises ConversationError with the quarantine reason when the turns are not a usable conversation.
    """
    if not raw_turns:
        raise ConversationError(Quarantine.EMPTY_CONVERSATION, "conversation has no turns")
    turns: list[Turn] = []
    for role, content in raw_turns:
        if "\x00" in content:
            raise ConversationError(Quarantine.NUL_BYTE, f"{role} turn contains a NUL character")
        text = normalise_text(content)
        if not text:
            if role == SYSTEM:
                continue  # an empty system prompt carries nothing; drop the turn, keep the record
            raise ConversationError(Quarantine.EMPTY_TURN, f"{role} turn {len(turns) + 1} is empty")
        turns.append((role, text))
    pattern = "".join(ROLE_LETTER[r] for r, _ in turns)
    if not _ROLE_PATTERN.match(pattern):
        if _NO_RESPONSE.match(pattern):
            raise ConversationError(Quarantine.NO_RESPONSE, "conversation ends with a user turn and has no response")
        raise ConversationError(
            Quarantine.BAD_ROLE_ORDER,
            f"roles must be [system] user, assistant, user, assistant ...; got {pattern!r} (s/u/a)",
        )
    total = sum(len(c) for _, c in turns)
    if total > max_chars:
        raise ConversationError(Quarantine.TOO_LONG, f"conversation has {total} characters, more than {max_chars}")
    frozen = tuple(turns)
    try:
        conversation = canonical_json(frozen)
    except TypeError:
        raise ConversationError(
            Quarantine.INVALID_UNICODE, "text holds invalid code points (lone surrogates)"
        ) from None
    return Record(
        record_id=_digest(conversation),
        instruction_key=instruction_key(frozen),
        conversation=conversation,
        role_pattern=pattern,
        min_turn_chars=min(len(c) for _, c in frozen),
        total_chars=total,
    )
