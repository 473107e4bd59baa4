"""Map one raw record of a source format into (role, content) turns.

Formats:
* alpaca   — instruction / input / output; a non-empty input is appended to the instruction.
* sharegpt — conversations: [{from, value}], from in human|user|gpt|assistant|system (+ common aliases).
* messages — messages: [{role, content}] as in the OpenAI chat API (content may be text parts).
* custom   — a field mapping: {user: <path>, assistant: <path>, input?: <path>, system?: <path>},
             paths are dotted, list items by index (e.g. instances.0.output).
"""

from __future__ import annotations

from typing import Any, Callable

from infinstruct.config import Source
from infinstruct.record.conversation import ASSISTANT, SYSTEM, USER, ConversationError, Turn
from infinstruct.record.reasons import Quarantine

SHAREGPT_ROLES = {
    "human": USER,
    "user": USER,
    "gpt": ASSISTANT,
    "assistant": ASSISTANT,
    "chatgpt": ASSISTANT,
    "bard": ASSISTANT,
    "bing": ASSISTANT,
    "model": ASSISTANT,
    "system": SYSTEM,
}
MESSAGE_ROLES = {"system": SYSTEM, "developer": SYSTEM, "user": USER, "assistant": ASSISTANT}


def _text(raw: dict, key: str, *, required: bool = True, where: str = "") -> str:
    value = raw.get(key)
    if value is None:
        if required:
            raise ConversationError(Quarantine.MISSING_FIELD, f"missing field {where}{key!r}")
        return ""
    if not isinstance(value, str):
        raise ConversationError(
            Quarantine.WRONG_TYPE, f"field {where}{key!r} must be a string, got {type(value).__name__}"
        )
    return value


def _list(raw: dict, key: str) -> list:
    value = raw.get(key)
    if value is None:
        raise ConversationError(Quarantine.MISSING_FIELD, f"missing field {key!r}")
    if not isinstance(value, list):
        raise ConversationError(Quarantine.WRONG_TYPE, f"field {key!r} must be a list, got {type(value).__name__}")
    return value


def _merge(instruction: str, extra: str) -> str:
    return f"{instruction.strip()}\n\n{extra.strip()}" if extra.strip() else instruction


def alpaca(raw: dict) -> list[Turn]:
    user = _merge(_text(raw, "instruction"), _text(raw, "input", required=False))
    return [(USER, user), (ASSISTANT, _text(raw, "output"))]


def sharegpt(raw: dict) -> list[Turn]:
    turns = []
    for i, turn in enumerate(_list(raw, "conversations")):
        if not isinstance(turn, dict):
            raise ConversationError(Quarantine.WRONG_TYPE, f"conversations[{i}] must be an object")
        speaker = _text(turn, "from", where=f"conversations[{i}].")
        role = SHAREGPT_ROLES.get(speaker.strip().lower())
        if role is None:
            raise ConversationError(Quarantine.BAD_ROLE, f"conversations[{i}].from={speaker!r} is not a known speaker")
        turns.append((role, _text(turn, "value", where=f"conversations[{i}].")))
    return turns


def _message_content(message: dict, i: int) -> str:
    content = message.get("content")
    if isinstance(content, list):  # OpenAI text parts: [{"type": "text", "text": ...}]
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if len(parts) != len(content) or not all(isinstance(p, str) for p in parts):
            raise ConversationError(Quarantine.WRONG_TYPE, f"messages[{i}].content has non-text parts")
        return "\n".join(parts)
    return _text(message, "content", where=f"messages[{i}].")


def messages(raw: dict) -> list[Turn]:
    turns = []
    for i, message in enumerate(_list(raw, "messages")):
        if not isinstance(message, dict):
            raise ConversationError(Quarantine.WRONG_TYPE, f"messages[{i}] must be an object")
        role = MESSAGE_ROLES.get(_text(message, "role", where=f"messages[{i}].").strip().lower())
        if role is None:
            raise ConversationError(
                Quarantine.BAD_ROLE, f"messages[{i}].role={message.get('role')!r} is not system/user/assistant"
            )
        turns.append((role, _message_content(message, i)))
    return turns


def lookup(raw: Any, path: str) -> Any:
    """Follow a dotted path (dict keys, list indexes) through a raw record; None when absent."""
    node = raw
    for part in path.split("."):
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def custom(fields: dict[str, str]) -> Callable[[dict], list[Turn]]:
    def mapper(raw: dict) -> list[Turn]:
        values = {}
        for name, path in fields.items():
            value = lookup(raw, path)
            if value is None and name in (USER, ASSISTANT):
                raise ConversationError(Quarantine.MISSING_FIELD, f"missing field {path!r} (mapped to {name})")
            if value is not None and not isinstance(value, str):
                raise ConversationError(
                    Quarantine.WRONG_TYPE,
                    f"field {path!r} (mapped to {name}) must be a string, got {type(value).__name__}",
                )
            values[name] = value or ""
        turns = [(SYSTEM, values["system"])] if values.get("system", "").strip() else []
        return turns + [(USER, _merge(values[USER], values.get("input", ""))), (ASSISTANT, values[ASSISTANT])]

    return mapper


def mapper_for(source: Source) -> Callable[[dict], list[Turn]]:
    """The function that turns one raw record of this source into turns."""
    if source.format == "custom":
        return custom(source.fields or {})
    return {"alpaca": alpaca, "sharegpt": sharegpt, "messages": messages}[source.format]
