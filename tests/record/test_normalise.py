"""Normalisation before identity: what changes and what must not."""
from __future__ import annotations

import pytest

from infinstruct.record.normalise import normalise_text


@pytest.mark.parametrize("raw, expected", [
    ("  Hello world  ", "Hello world"),
    ("ＡＢＣ １２３！", "ABC 123!"),                               # full-width forms
    ("a\u00a0b\u3000c\u2009d", "a b c d"),                       # compatibility spaces
    ("ﬁnd the ﬂow", "find the flow"),                            # ligatures
    ("zero\u200bwidth\ufeff", "zerowidth"),                      # invisible characters
    ("line one\r\nline two\rline three", "line one\nline two\nline three"),
    ("para one   \n\n\n\n\npara two", "para one\n\npara two"),
    ("<|im_start|>user\nWhat is 2+2?<|im_end|>", "What is 2+2?"),
    ("### Instruction:\nName a colour.", "Name a colour."),
    ("### Response: Blue.</s>", "Blue."),
    ("[INST] Tell me a joke [/INST]", "Tell me a joke"),
    ("Human: hi there", "hi there"),
    ("<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>", "Be brief."),
])
def test_normalises(raw, expected):
    assert normalise_text(raw) == expected


@pytest.mark.parametrize("kept", [
    "x² + y² = z²",                                              # superscripts keep their meaning
    "½ cup of sugar",                                            # fractions too
    "def f(x):\n    return x  # indented code keeps its indentation",
    "Use the <s> tag for strikethrough, e.g. <s>old</s> new",    # mid-text markup is content
    "Ratio 3:4 and the time 10:30",
    "👨\u200d👩\u200d👧 family emoji keeps its joiners",
    "Markdown:\n\n### Heading\n\ntext",
    "我们来讨论这个问题。",
])
def test_keeps_meaningful_text(kept):
    assert normalise_text(kept) == kept.strip()


def test_is_idempotent():
    text = "<|im_start|>user\nＨｉ  there\r\n\n\n\nbye<|im_end|>"
    assert normalise_text(normalise_text(text)) == normalise_text(text)
