"""Normalisation before identity: what changes and what must not."""

from __future__ import annotations

import pytest

from infinstruct.record.conversation import ASSISTANT, USER, build_record
from infinstruct.record.normalise import normalise_text


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("  Hello world  ", "Hello world"),
        ("ＡＢＣ １２３！", "ABC 123!"),  # full-width forms
        ("a\u00a0b\u3000c\u2009d", "a b c d"),  # compatibility spaces
        ("ﬁnd the ﬂow", "find the flow"),  # ligatures
        ("zero\u200bwidth\ufeff", "zerowidth"),  # invisible characters
        ("line one\r\nline two\rline three", "line one\nline two\nline three"),
        ("para one   \n\n\n\n\npara two", "para one\n\npara two"),
        ("<|im_start|>user\nWhat is 2+2?<|im_end|>", "What is 2+2?"),
        ("### Instruction:\nName a colour.", "Name a colour."),
        ("### Response: Blue.</s>", "Blue."),
        ("[INST] Tell me a joke [/INST]", "Tell me a joke"),
        ("Human: hi there", "hi there"),
        ("<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>", "Be brief."),
    ],
)
def test_normalises(raw, expected):
    assert normalise_text(raw) == expected


@pytest.mark.parametrize(
    "kept",
    [
        "x² + y² = z²",  # superscripts keep their meaning
        "½ cup of sugar",  # fractions too
        "def f(x):\n    return x  # indented code keeps its indentation",
        "Use the <s> tag for strikethrough, e.g. <s>old</s> new",  # mid-text markup is content
        "Ratio 3:4 and the time 10:30",
        "👨\u200d👩\u200d👧 family emoji keeps its joiners",
        "Markdown:\n\n### Heading\n\ntext",
        "我们来讨论这个问题。",
    ],
)
def test_keeps_meaningful_text(kept):
    assert normalise_text(kept) == kept.strip()


def test_is_idempotent():
    text = "<|im_start|>user\nＨｉ  there\r\n\n\n\nbye<|im_end|>"
    assert normalise_text(normalise_text(text)) == normalise_text(text)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("\x1b[31mError:\x1b[0m file not found", "Error: file not found"),  # ANSI colour (CSI)
        ("\x1b[1;32;40mok\x1b[K done", "ok done"),  # CSI with params, erase line
        (
            "see \x1b]8;;https://x.org\x1b\\the docs\x1b]8;;\x07 now",
            "see the docs now",
        ),  # OSC hyperlink, ST and BEL ends
        ("\x1b(Bplain\x1b7", "plain"),  # charset / save-cursor escapes
        ("admin\u202e\u2066// check\u2069\u2066 here", "admin// check here"),  # bidi override and isolates
        ("a\u202ab\u202bc\u202cd\u202de\u2067f\u2068g", "abcdefg"),  # every embedding/isolate control
        ("bell\x07 back\x08space\x1f unit\x7f del\x9b c1", "bell backspace unit del c1"),  # C0, DEL, C1
        ("page one\x0cpage two\x0bnext\x85last", "page one\npage two\nnext\nlast"),  # line-separating controls
        ("ok\ufffe\uffff then \ufdd0\U0001fffe\U0010ffff done", "ok then  done"),  # noncharacters
        ("cafe\x1b[0m\u0301", "café"),  # removed before NFC composes
    ],
)
def test_removes_control_and_terminal_junk(raw, expected):
    assert normalise_text(raw) == expected


@pytest.mark.parametrize(
    "kept",
    [
        "tab\tseparated\tcolumns",
        "\u200fשלום\u200e עולם",  # RTL marks stay (not overrides)
        "🏴\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f flag",  # tag characters build the flag
        "ESC is written \\x1b or ^[ in code",
    ],
)
def test_keeps_whitespace_marks_and_escaped_spellings(kept):
    assert normalise_text(kept) == kept


def test_a_record_with_every_kind_of_junk_is_the_clean_record():
    junk = (
        "\x1b[31mList\x1b[0m the \u202eprimes\u202c\x07 under \u2066ten\u2069\ufffe.\x0c",
        "2, 3, 5\x1b[1m, 7\x1b[22m\uffff\x1f",
    )
    clean = ("List the primes under ten.", "2, 3, 5, 7")
    dirty_record = build_record([(USER, junk[0]), (ASSISTANT, junk[1])], 10_000)
    assert dirty_record == build_record([(USER, clean[0]), (ASSISTANT, clean[1])], 10_000)
    text = dirty_record.conversation.decode()
    assert not any(ch in text for ch in "\x1b\x07\x0c\x1f\u202e\u202c\u2066\u2069\ufffe\uffff")
