"""Specification of how one raw item becomes a conversation, or is quarantined with a reason.

Every source format is mapped into (role, content) turns by `formats.mapper_for(source)`;
`ingest.parse_item(item, mapper, max_chars)` then decodes the item (a JSONL line as bytes, or an
already decoded value from Parquet / a JSON array), validates the turns and computes the record's
identity. When an item cannot become a record, `parse_item` raises `ConversationError` whose
`reason` is one code of the closed vocabulary `reasons.Quarantine`.

Pure unit tests: no database, no files.
"""

from __future__ import annotations

import json

import pytest

from infinstruct.config import Source
from infinstruct.record.conversation import ConversationError
from infinstruct.record.reasons import Quarantine
from infinstruct.sources import formats
from infinstruct.sources.ingest import EXCERPT_CHARS, excerpt, parse_item

MAX_CHARS = 1_000


def mapper(fmt: str, fields: dict[str, str] | None = None):
    return formats.mapper_for(Source(name="src", path="unused.jsonl", format=fmt, fields=fields))


ALPACA = mapper("alpaca")
SHAREGPT = mapper("sharegpt")
MESSAGES = mapper("messages")
QA = mapper("custom", {"user": "question", "assistant": "answer"})


def line(obj) -> bytes:
    """A JSONL line as the JSONL reader yields it: bytes, with its newline."""
    return (json.dumps(obj) + "\n").encode()


def turns(item, mapper_fn, max_chars: int = MAX_CHARS) -> list[tuple[str, str]]:
    """The (role, content) turns of the record `item` becomes."""
    record = parse_item(item, mapper_fn, max_chars)
    return [(t["role"], t["content"]) for t in json.loads(record.conversation)]


def reason_of(item, mapper_fn, max_chars: int = MAX_CHARS) -> Quarantine:
    with pytest.raises(ConversationError) as info:
        parse_item(item, mapper_fn, max_chars)
    return info.value.reason


# --------------------------------------------------------------------------------------------------
# alpaca: instruction / input / output
# --------------------------------------------------------------------------------------------------


def test_alpaca_input_is_appended_to_the_instruction_after_a_blank_line():
    item = {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"}
    assert turns(line(item), ALPACA) == [("user", "Translate to French.\n\nGood morning"), ("assistant", "Bonjour")]


@pytest.mark.parametrize(
    "extra", [{}, {"input": ""}, {"input": "   \n"}, {"input": None}], ids=["missing", "empty", "whitespace", "null"]
)
def test_alpaca_without_a_real_input_uses_the_instruction_alone(extra):
    item = {"instruction": "Say hello.", "output": "Hello!", **extra}
    assert turns(line(item), ALPACA) == [("user", "Say hello."), ("assistant", "Hello!")]


def test_alpaca_surrounding_whitespace_is_trimmed_from_each_turn():
    item = {"instruction": "  Sum 2 and 3.\n", "input": "\n  (integers)  ", "output": " 5 \n"}
    assert turns(line(item), ALPACA) == [("user", "Sum 2 and 3.\n\n(integers)"), ("assistant", "5")]


def test_an_already_decoded_item_is_parsed_like_its_jsonl_line():
    item = {"instruction": "Say hello.", "output": "Hello!"}
    assert parse_item(item, ALPACA, MAX_CHARS) == parse_item(line(item), ALPACA, MAX_CHARS)


# --------------------------------------------------------------------------------------------------
# sharegpt: conversations: [{from, value}]
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "asker, answerer",
    [("human", "gpt"), ("user", "assistant"), ("Human", "GPT"), (" human ", "chatgpt"), ("user", "model")],
)
def test_sharegpt_speaker_aliases(asker, answerer):
    item = {"conversations": [{"from": asker, "value": "Hi"}, {"from": answerer, "value": "Hello"}]}
    assert turns(line(item), SHAREGPT) == [("user", "Hi"), ("assistant", "Hello")]


def test_sharegpt_multi_turn_with_a_leading_system_turn():
    item = {
        "conversations": [
            {"from": "system", "value": "You are terse."},
            {"from": "human", "value": "2+2?"},
            {"from": "gpt", "value": "4"},
            {"from": "human", "value": "And 3+3?"},
            {"from": "gpt", "value": "6"},
        ]
    }
    record = parse_item(line(item), SHAREGPT, MAX_CHARS)
    assert record.role_pattern == "suaua"
    assert turns(line(item), SHAREGPT) == [
        ("system", "You are terse."),
        ("user", "2+2?"),
        ("assistant", "4"),
        ("user", "And 3+3?"),
        ("assistant", "6"),
    ]
    assert record.min_turn_chars == 1
    assert record.total_chars == sum(len(c) for _, c in turns(line(item), SHAREGPT))


@pytest.mark.parametrize("system", ["", "   \n\t"], ids=["empty", "whitespace"])
def test_an_empty_system_turn_is_dropped_not_quarantined(system):
    item = {
        "conversations": [
            {"from": "system", "value": system},
            {"from": "human", "value": "Hi"},
            {"from": "gpt", "value": "Hello"},
        ]
    }
    record = parse_item(line(item), SHAREGPT, MAX_CHARS)
    assert record.role_pattern == "ua"
    assert turns(line(item), SHAREGPT) == [("user", "Hi"), ("assistant", "Hello")]
    without = {"conversations": item["conversations"][1:]}
    assert record.record_id == parse_item(line(without), SHAREGPT, MAX_CHARS).record_id


# --------------------------------------------------------------------------------------------------
# messages: the OpenAI chat shape, content a string or a list of text parts
# --------------------------------------------------------------------------------------------------


def test_messages_with_string_content_and_a_system_turn():
    item = {
        "messages": [
            {"role": "system", "content": "Be kind."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
        ]
    }
    assert turns(line(item), MESSAGES) == [("system", "Be kind."), ("user", "Hi"), ("assistant", "Hello")]


def test_messages_text_parts_are_joined_with_newlines():
    item = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Describe:"}, {"type": "text", "text": "a cat"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Small, furry."}]},
        ]
    }
    assert turns(line(item), MESSAGES) == [("user", "Describe:\na cat"), ("assistant", "Small, furry.")]


def test_messages_developer_role_is_a_system_turn():
    item = {
        "messages": [
            {"role": "developer", "content": "Rules."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
        ]
    }
    assert [r for r, _ in turns(item, MESSAGES)] == ["system", "user", "assistant"]


# --------------------------------------------------------------------------------------------------
# custom: a mapping of conversation fields to dotted paths (dict keys and list indexes)
# --------------------------------------------------------------------------------------------------


def test_custom_question_answer():
    assert turns(line({"question": "Capital of France?", "answer": "Paris", "id": 7}), QA) == [
        ("user", "Capital of France?"),
        ("assistant", "Paris"),
    ]


def test_custom_dotted_paths_with_list_indexes_on_a_self_instruct_record():
    self_instruct = mapper(
        "custom", {"user": "instruction", "input": "instances.0.input", "assistant": "instances.0.output"}
    )
    item = {
        "id": "seed_task_1",
        "instruction": "Is the number even?",
        "instances": [{"input": "42", "output": "Yes"}, {"input": "7", "output": "No"}],
    }
    assert turns(line(item), self_instruct) == [("user", "Is the number even?\n\n42"), ("assistant", "Yes")]


def test_custom_empty_input_path_value_is_ignored():
    self_instruct = mapper(
        "custom", {"user": "instruction", "input": "instances.0.input", "assistant": "instances.0.output"}
    )
    item = {"instruction": "Tell a joke.", "instances": [{"input": "", "output": "Knock knock."}]}
    assert turns(item, self_instruct) == [("user", "Tell a joke."), ("assistant", "Knock knock.")]


def test_custom_negative_index_and_system_path():
    last = mapper("custom", {"system": "meta.persona", "user": "q", "assistant": "answers.-1"})
    item = {"meta": {"persona": "A pirate."}, "q": "Hello?", "answers": ["draft", "Arr, hello!"]}
    assert turns(item, last) == [("system", "A pirate."), ("user", "Hello?"), ("assistant", "Arr, hello!")]


def test_custom_index_out_of_range_is_a_missing_field():
    first = mapper("custom", {"user": "q", "assistant": "answers.3"})
    assert reason_of({"q": "Hi", "answers": ["Hello"]}, first) == Quarantine.MISSING_FIELD


# --------------------------------------------------------------------------------------------------
# Quarantine: every reason of the closed vocabulary, with an input that produces exactly it
# --------------------------------------------------------------------------------------------------

QUARANTINE_CASES = [
    # (id, mapper, item, max_chars, expected reason)
    ("blank_line", ALPACA, b"\n", MAX_CHARS, Quarantine.BLANK_LINE),
    ("blank_line_spaces", ALPACA, b"  \t \r\n", MAX_CHARS, Quarantine.BLANK_LINE),
    ("invalid_utf8", ALPACA, b'\xff{"instruction": "a", "output": "b"}\n', MAX_CHARS, Quarantine.INVALID_UTF8),
    (
        "invalid_utf8_in_value",
        ALPACA,
        b'{"instruction": "caf\xe9", "output": "b"}\n',
        MAX_CHARS,
        Quarantine.INVALID_UTF8,
    ),
    (
        "invalid_unicode",
        ALPACA,
        b'{"instruction": "bad \\ud800 text", "output": "b"}\n',
        MAX_CHARS,
        Quarantine.INVALID_UNICODE,
    ),
    ("nul_byte_raw", ALPACA, b'{"instruction": "a\x00b", "output": "c"}\n', MAX_CHARS, Quarantine.NUL_BYTE),
    ("nul_byte_escape", ALPACA, b'{"instruction": "a", "output": "b\\u0000c"}\n', MAX_CHARS, Quarantine.NUL_BYTE),
    (
        "nul_byte_decoded",
        SHAREGPT,
        {"conversations": [{"from": "human", "value": "a\x00"}, {"from": "gpt", "value": "b"}]},
        MAX_CHARS,
        Quarantine.NUL_BYTE,
    ),
    ("too_long_text", ALPACA, line({"instruction": "x" * 60, "output": "y" * 41}), 100, Quarantine.TOO_LONG),
    ("too_long_line", ALPACA, line({"instruction": "x" * 500, "output": "y"}), 100, Quarantine.TOO_LONG),
    ("invalid_json", ALPACA, b'{"instruction": "a", "output": \n', MAX_CHARS, Quarantine.INVALID_JSON),
    (
        "invalid_json_single_quotes",
        ALPACA,
        b"{'instruction': 'a', 'output': 'b'}\n",
        MAX_CHARS,
        Quarantine.INVALID_JSON,
    ),
    ("not_an_object_list", ALPACA, b'["instruction", "output"]\n', MAX_CHARS, Quarantine.NOT_AN_OBJECT),
    ("not_an_object_string", ALPACA, b'"just text"\n', MAX_CHARS, Quarantine.NOT_AN_OBJECT),
    ("not_an_object_decoded", ALPACA, 42, MAX_CHARS, Quarantine.NOT_AN_OBJECT),
    ("missing_field", ALPACA, line({"instruction": "a"}), MAX_CHARS, Quarantine.MISSING_FIELD),
    ("missing_field_null", ALPACA, line({"instruction": "a", "output": None}), MAX_CHARS, Quarantine.MISSING_FIELD),
    ("missing_field_sharegpt", SHAREGPT, line({"messages": []}), MAX_CHARS, Quarantine.MISSING_FIELD),
    ("missing_field_custom", QA, line({"question": "a", "answers": ["b"]}), MAX_CHARS, Quarantine.MISSING_FIELD),
    ("wrong_type", ALPACA, line({"instruction": "a", "output": 42}), MAX_CHARS, Quarantine.WRONG_TYPE),
    (
        "wrong_type_input",
        ALPACA,
        line({"instruction": "a", "input": ["x"], "output": "b"}),
        MAX_CHARS,
        Quarantine.WRONG_TYPE,
    ),
    ("wrong_type_conversations", SHAREGPT, line({"conversations": "human: hi"}), MAX_CHARS, Quarantine.WRONG_TYPE),
    ("wrong_type_turn", SHAREGPT, line({"conversations": ["hi", "hello"]}), MAX_CHARS, Quarantine.WRONG_TYPE),
    (
        "wrong_type_image_part",
        MESSAGES,
        line(
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                    {"role": "assistant", "content": "a cat"},
                ]
            }
        ),
        MAX_CHARS,
        Quarantine.WRONG_TYPE,
    ),
    ("wrong_type_custom", QA, line({"question": "a", "answer": {"text": "b"}}), MAX_CHARS, Quarantine.WRONG_TYPE),
    (
        "bad_role",
        SHAREGPT,
        line({"conversations": [{"from": "narrator", "value": "a"}, {"from": "gpt", "value": "b"}]}),
        MAX_CHARS,
        Quarantine.BAD_ROLE,
    ),
    (
        "bad_role_messages",
        MESSAGES,
        line({"messages": [{"role": "tool", "content": "a"}, {"role": "assistant", "content": "b"}]}),
        MAX_CHARS,
        Quarantine.BAD_ROLE,
    ),
    ("empty_conversation", SHAREGPT, line({"conversations": []}), MAX_CHARS, Quarantine.EMPTY_CONVERSATION),
    ("empty_conversation_messages", MESSAGES, line({"messages": []}), MAX_CHARS, Quarantine.EMPTY_CONVERSATION),
    ("empty_turn", ALPACA, line({"instruction": "a", "output": "  \n "}), MAX_CHARS, Quarantine.EMPTY_TURN),
    (
        "empty_turn_user",
        SHAREGPT,
        line({"conversations": [{"from": "human", "value": ""}, {"from": "gpt", "value": "b"}]}),
        MAX_CHARS,
        Quarantine.EMPTY_TURN,
    ),
    (
        "bad_role_order",
        SHAREGPT,
        line({"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "b"}]}),
        MAX_CHARS,
        Quarantine.BAD_ROLE_ORDER,
    ),
    (
        "bad_role_order_two_users",
        SHAREGPT,
        line(
            {
                "conversations": [
                    {"from": "human", "value": "a"},
                    {"from": "human", "value": "b"},
                    {"from": "gpt", "value": "c"},
                ]
            }
        ),
        MAX_CHARS,
        Quarantine.BAD_ROLE_ORDER,
    ),
    (
        "bad_role_order_late_system",
        SHAREGPT,
        line(
            {
                "conversations": [
                    {"from": "human", "value": "a"},
                    {"from": "gpt", "value": "b"},
                    {"from": "system", "value": "c"},
                    {"from": "human", "value": "d"},
                    {"from": "gpt", "value": "e"},
                ]
            }
        ),
        MAX_CHARS,
        Quarantine.BAD_ROLE_ORDER,
    ),
    (
        "no_response",
        SHAREGPT,
        line({"conversations": [{"from": "human", "value": "a"}]}),
        MAX_CHARS,
        Quarantine.NO_RESPONSE,
    ),
    (
        "no_response_after_system",
        MESSAGES,
        line({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "a"}]}),
        MAX_CHARS,
        Quarantine.NO_RESPONSE,
    ),
    (
        "no_response_multi_turn",
        SHAREGPT,
        line(
            {
                "conversations": [
                    {"from": "human", "value": "a"},
                    {"from": "gpt", "value": "b"},
                    {"from": "human", "value": "c"},
                ]
            }
        ),
        MAX_CHARS,
        Quarantine.NO_RESPONSE,
    ),
]


@pytest.mark.parametrize(
    "mapper_fn, item, max_chars, expected",
    [case[1:] for case in QUARANTINE_CASES],
    ids=[case[0] for case in QUARANTINE_CASES],
)
def test_quarantine_reason(mapper_fn, item, max_chars, expected):
    assert reason_of(item, mapper_fn, max_chars) == expected


def test_every_quarantine_reason_is_covered_by_the_table():
    assert {case[-1] for case in QUARANTINE_CASES} == set(Quarantine)


def test_quarantine_reason_code_is_prefixed():
    assert Quarantine.NO_RESPONSE.code == "quarantine:no_response"


def test_a_conversation_error_item_from_a_reader_is_raised_as_is():
    err = ConversationError(Quarantine.INVALID_JSON, "rest of file unreadable")
    with pytest.raises(ConversationError) as info:
        parse_item(err, ALPACA, MAX_CHARS)
    assert info.value is err


def test_a_text_exactly_at_the_limit_is_kept():
    record = parse_item(line({"instruction": "x" * 60, "output": "y" * 40}), ALPACA, 100)
    assert record.total_chars == 100


def test_a_non_utf8_line_that_starts_like_a_utf16_bom_is_invalid_utf8():
    assert reason_of(b'\xff\xfe{"instruction": "a", "output": "b"}\n', ALPACA) == Quarantine.INVALID_UTF8


def test_a_utf8_byte_order_mark_before_the_first_record_is_ignored():
    with_bom = parse_item(b'\xef\xbb\xbf{"instruction": "a", "output": "b"}\n', ALPACA, MAX_CHARS)
    assert with_bom == parse_item(b'{"instruction": "a", "output": "b"}\n', ALPACA, MAX_CHARS)


# --------------------------------------------------------------------------------------------------
# Identity: record_id (the whole normalised conversation) and instruction_key (the user turns)
# --------------------------------------------------------------------------------------------------


def test_record_id_is_stable_and_ignores_surrounding_whitespace():
    plain = {"instruction": "Name a colour.", "output": "Blue"}
    padded = {"instruction": "\n  Name a colour.  ", "input": "  ", "output": "\tBlue \n"}
    a = parse_item(line(plain), ALPACA, MAX_CHARS)
    assert a.record_id == parse_item(line(plain), ALPACA, MAX_CHARS).record_id
    assert a.record_id == parse_item(b"  " + line(padded).rstrip() + b" \r\n", ALPACA, MAX_CHARS).record_id
    assert a.record_id == parse_item(plain, ALPACA, MAX_CHARS).record_id
    assert len(a.record_id) == 32 and int(a.record_id, 16) >= 0


def test_record_id_is_the_same_across_formats_for_the_same_conversation():
    alpaca = parse_item({"instruction": "Hi", "output": "Hello"}, ALPACA, MAX_CHARS)
    sharegpt = parse_item(
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}, SHAREGPT, MAX_CHARS
    )
    custom = parse_item({"question": "Hi", "answer": "Hello"}, QA, MAX_CHARS)
    assert alpaca.record_id == sharegpt.record_id == custom.record_id


def test_record_id_uses_unicode_nfc():
    composed = parse_item({"instruction": "Caf\u00e9?", "output": "Oui"}, ALPACA, MAX_CHARS)
    decomposed = parse_item({"instruction": "Cafe\u0301?", "output": "Oui"}, ALPACA, MAX_CHARS)
    assert composed.record_id == decomposed.record_id


@pytest.mark.parametrize(
    "other",
    [
        {"instruction": "Name a colour.", "output": "Red"},
        {"instruction": "Name a color.", "output": "Blue"},
        {"instruction": "name a colour.", "output": "Blue"},
        {"instruction": "Name a colour.", "input": "Primary only.", "output": "Blue"},
    ],
)
def test_record_id_differs_for_different_content(other):
    base = parse_item({"instruction": "Name a colour.", "output": "Blue"}, ALPACA, MAX_CHARS)
    assert base.record_id != parse_item(other, ALPACA, MAX_CHARS).record_id


def test_instruction_key_folds_case_and_whitespace_but_record_ids_differ():
    a = parse_item({"instruction": "What is  the capital\nof France?", "output": "Paris."}, ALPACA, MAX_CHARS)
    b = parse_item({"instruction": "  what is the CAPITAL of france?", "output": "It is Paris."}, ALPACA, MAX_CHARS)
    assert a.instruction_key == b.instruction_key
    assert a.record_id != b.record_id


def test_instruction_key_ignores_the_system_turn_and_differs_for_other_questions():
    asked = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}
    with_system = {"conversations": [{"from": "system", "value": "Be formal."}, *asked["conversations"]]}
    other = {"conversations": [{"from": "human", "value": "Bye"}, {"from": "gpt", "value": "Hello"}]}
    key = parse_item(asked, SHAREGPT, MAX_CHARS).instruction_key
    assert parse_item(with_system, SHAREGPT, MAX_CHARS).instruction_key == key
    assert parse_item(other, SHAREGPT, MAX_CHARS).instruction_key != key


# --------------------------------------------------------------------------------------------------
# excerpt: what the quarantine table shows of a rejected item
# --------------------------------------------------------------------------------------------------


def test_excerpt_of_a_line_is_readable_and_bounded():
    assert excerpt(b'{"a": "b\x00c"}\r\n') == '{"a": "b\\0c"}'
    assert excerpt(b"\xffabc\n") == "\ufffdabc"
    assert len(excerpt(b"x" * (EXCERPT_CHARS * 3))) == EXCERPT_CHARS


def test_excerpt_of_decoded_items_and_reader_errors():
    assert excerpt({"q": "caf\u00e9"}) == '{"q": "caf\\u00e9"}'
    assert excerpt(ConversationError(Quarantine.INVALID_JSON, "broken")) == ""


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 20_000 + b"]" * 20_000 + b"\n",
        b'{"instruction": "q", "input": "", "output": "a", "n": ' + b"9" * 5_000 + b"}\n",
    ],
    ids=["nested-20k-deep", "integer-of-5000-digits"],
)
def test_a_line_python_cannot_read_is_one_invalid_json_line_not_a_failed_partition(raw):
    assert reason_of(raw, ALPACA, max_chars=1_000_000) is Quarantine.INVALID_JSON  # not too long: unreadable
