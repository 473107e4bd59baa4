"""Rule filters: cheap, explainable checks that drop junk conversations before dedup.

The measurement is kept apart from the threshold (Data-Juicer ``compute_stats``/``process``,
NeMo Curator ``score_document``/``keep_document``): `measure` computes the statistics once,
`judge` compares them with `RuleSettings`, so a new threshold needs no recompute and the stats can
be stored beside the decision. A dropped record goes to the ledger as ``rule:<name>`` with the
measured value that failed. ``check(turns, settings) == judge(measure(turns), settings)``.

A rule is one unit, registered in `RULES`: its `Rule` (the reason), the `Measurement`s it reads
(registered in `MEASUREMENTS`, each with its own version), its check, its settings in `RuleSettings`
and its test. Stored statistics carry each measurement's version, so a new or changed measurement is
taken for the stored records alone; the others are reused.

Statistics of `measure` (stable names: they are stored and compared):

================================  ==========================================================
``min_user_tokens``               token estimate of the shortest user turn
``min_response_tokens``           token estimate of the shortest assistant turn
``total_tokens``                  token estimate of all turns, system included
``text_ratio``                    letters, digits and emoji / non-space characters outside
                                  fenced code, the lower of the user side and the answer side.
                                  A side counts 1.0 with under 16 non-space characters, or
                                  under 0.5 when it looks like code (regexes, array literals,
                                  tables: symbols are code's letters)
``language``                      `langid.detect` of the user turns (first 100 characters of
                                  prose), ISO 639-1; "und" when it has no letters
``language_confidence``           its confidence, 0..1
``response_language``             the same for the assistant turns
``response_language_confidence``  its confidence
``record_language``               the instruction's language, or the response's when that is identified
                                  more surely and the instruction's below 0.8 (the release's langdetect)
``refusal``                       the refusal boilerplate in the opening 300 characters of an
                                  assistant turn, lower-cased: a `REFUSAL_PHRASES` entry, else the
                                  refusal grammar's match (the speaker named an AI; a sentence
                                  opening, after a short lead-in, with "I" + cannot / won't /
                                  unable / not comfortable + a task verb, or "I don't have access
                                  to / personal opinions ..."; an appeal to its guidelines;
                                  Chinese equivalents); "" if none
``echo_ratio``                    for each user → assistant pair: len(answer) / len(the paragraphs
                                  of the question that hold it) when the normalised answer
                                  (whitespace collapsed, quotes and final . ! ? stripped, case
                                  kept) occurs inside the whitespace-collapsed question, else 0;
                                  paragraphs are split at blank lines (an Alpaca input is one),
                                  and a copy under 3 words is weighed against the whole question;
                                  the largest over the pairs
``dup_ngram_ratio``               share of the word 5-grams of the assistant text that repeat an
                                  earlier 5-gram (Gopher's duplicate n-gram fraction, counted in
                                  n-grams); lower-cased, a CJK character is a word; 0 under 50
                                  words
``loop_words``                    words repeated by the loop an assistant turn ends with: a span
                                  of words (CJK characters) repeated back to back, at least 3
                                  copies in all, up to the last word (which may be cut short);
                                  the copies after the first, counted in words; 0 if none; the
                                  largest over the turns
``dup_line_ratio``                share of the characters of the assistant's prose lines that
                                  repeat an earlier line (Gopher ``dup_line_char_frac``); fenced
                                  code, indented lines and lines with < > { } [ ] ( ) ; = \\ are
                                  not prose
``response_ending``               an `Ending`: how the last assistant turn ends
================================  ==========================================================

Token estimate: whitespace-separated words, each CJK character one word (close to a BPE count
for Chinese, ~0.75 of it for English); 0 for a turn without any letter, digit or emoji ("...", "-").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from itertools import repeat
from typing import Callable, Iterable

from pydantic import Field, field_validator

from infinstruct.ml.langid import UNDETERMINED, detect, languages
from infinstruct.strict import Strict

SURE_LANGUAGE = 0.8  # an instruction identified this surely names the record's language

USER, ASSISTANT = "user", "assistant"
Turns = tuple[tuple[str, str], ...]
Stats = dict[str, float | str]


class Rule(StrEnum):
    """The rules, in the order `judge` applies them: the first failing one is the drop reason."""

    EMPTY_OR_SHORT = "empty_or_short"  # min_user_tokens / min_response_tokens under the minimum
    TOO_LONG = "too_long"  # total_tokens over the maximum
    GARBAGE = "garbage"  # text_ratio under the minimum: mostly symbols
    LANGUAGE = "language"  # neither side in an allowed language, one confidently outside
    REFUSAL = "refusal"  # an answer opens with refusal / "as an AI" boilerplate
    ECHO = "echo"  # the answer mostly repeats the question
    REPETITION = "repetition"  # dup_ngram_ratio or loop_words over the maximum: a generation loop
    #                                    (a loop of whole lines that repeated_lines also fails goes there)
    REPEATED_LINES = "repeated_lines"  # dup_line_ratio over the maximum
    TRUNCATED = "truncated"  # response_ending in truncated_endings

    @property
    def code(self) -> str:
        """The ledger reason, e.g. ``rule:echo``."""
        return f"rule:{self.value}"


class Ending(StrEnum):
    """How an answer ends. Digits (``#### 72``), closing brackets/quotes and emoji are complete."""

    COMPLETE = "complete"
    OPEN_CODE_FENCE = "open_code_fence"  # an odd number of ``` fence lines
    DANGLING_PUNCTUATION = "dangling_punctuation"  # , : ; = – — ( [ { and CJK ，：；、（
    DANGLING_WORD = "dangling_word"  # and, the, of, because ... 和, 以及 ...
    UNTERMINATED_SENTENCE = "unterminated_sentence"  # 12+ words of prose after the last sentence end,
    # on a line that is no list item, title, code or verse (the line before it did end a sentence);
    # 4+ words when the line before ends with . ! ? ("...= 1500 people.\nThe total entry fees collected")


class RuleSettings(Strict):
    """Thresholds over the `measure` statistics (the recipe's rule section)."""

    enabled: list[Rule] = list(Rule)
    min_user_tokens: int = Field(1, ge=0)  # "Hi" is a question
    min_response_tokens: int = Field(1, ge=0)  # "Canberra." and "72" are answers
    max_total_tokens: int = Field(16_384, ge=1)
    min_text_ratio: float = Field(0.3, ge=0, le=1)
    allowed_languages: list[str] = Field(["en", "zh"], min_length=1)
    min_language_confidence: float = Field(0.5, ge=0, le=1)  # less sure: never drop
    max_echo_ratio: float = Field(0.6, ge=0, le=1)  # echoes 0.66+; answers picked from an input <= 0.45
    max_dup_ngram_ratio: float = Field(0.6, ge=0, le=1)
    max_loop_words: int = Field(12, ge=0)  # loops 15+ words; code, tables, refrains <= 5
    max_dup_line_ratio: float = Field(0.5, ge=0, le=1)  # a song repeats its chorus (~0.3-0.5)
    truncated_endings: list[Ending] = [e for e in Ending if e is not Ending.COMPLETE]

    @field_validator("allowed_languages")
    @classmethod
    def _known_languages(cls, codes: list[str]) -> list[str]:
        """A code the language identifier never reports ("english", "xx") would silently allow nothing."""
        unknown = [code for code in codes if code not in languages()]
        if unknown:
            raise ValueError(
                f"unknown language code(s) {unknown}: use the ISO 639-1 codes the language identifier "
                f"reports (e.g. en, zh, fr, de, es, ja; see infinstruct.ml.langid.MODEL_LABELS)"
            )
        return codes


@dataclass(frozen=True)
class Verdict:
    """Keep, or drop by `rule` with the measured `value` that failed it."""

    keep: bool
    rule: Rule | None = None
    value: float | str | None = None


KEEP = Verdict(True)

# --- statistics ------------------------------------------------------------------------------

_CJK = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_CJK_CHAR = re.compile(f"[{_CJK}]")
_WORD_OR_CJK = re.compile(f"[{_CJK}]|[^\\s{_CJK}]+")
_EMOJI = re.compile("[\U0001f000-\U0001faff\u2600-\u27bf]")


def estimate_tokens(text: str, words: list[str] | None = None) -> int:
    """Whitespace words, every CJK character one word; 0 with no letter, digit or emoji ("...").
    `words` is text.split() when the caller has it already (splitting a long answer is the cost)."""
    if not any(c.isalnum() for c in text) and not _EMOJI.search(text):
        return 0
    cjk = 0 if text.isascii() else len(_CJK_CHAR.findall(text))
    if cjk:
        return cjk + len(_CJK_CHAR.sub(" ", text).split())
    return len(text.split() if words is None else words)


def _words(text: str) -> list[str]:
    """Lower-cased whitespace words, every CJK character one word (the repetition statistics' unit)."""
    text = text.lower()
    return text.split() if text.isascii() or not _CJK_CHAR.search(text) else _WORD_OR_CJK.findall(text)


def dup_ngram_ratio(text: str, n: int = 5, min_words: int = 50) -> float:
    """Share of word n-grams that repeat an earlier n-gram; 0 under `min_words` words."""
    return _dup_ngram_ratio(_words(text), n, min_words)


def _dup_ngram_ratio(words: list[str], n: int = 5, min_words: int = 50) -> float:
    total = len(words) - n + 1
    if len(words) < min_words or total <= 1:
        return 0.0
    return round(1 - len(set(zip(*(words[i:] for i in range(n))))) / total, 4)


LOOP_MIN_COPIES = 3  # back-to-back copies that make a loop: a chorus sung twice is a song, not a loop


def loop_words(text: str) -> int:
    """Words in the loop that `text` ends with (see the module doc); 0 if it ends in no loop."""
    return _loop_words(_words(text))


def _loop_words(words: list[str]) -> int:
    # Candidate periods are the earlier places of the last word (found by list.index, in C); a period
    # can only beat the best loop so far while it leaves more words to repeat, so periodic text stays linear.
    n = len(words)
    best = 0
    for end in (n, n - 1):  # n - 1: the generation stopped inside the last word ("... Veggie plat")
        if end < LOOP_MIN_COPIES:
            break
        backwards = words[end - 1 :: -1]  # backwards[period] == words[end - 1 - period]
        period = 0
        while True:
            try:
                period = backwards.index(backwards[0], period + 1, end // LOOP_MIN_COPIES + 1)
            except ValueError:
                break
            if best >= n - period:
                break
            if end < n and (words[n - 1] == words[end - period] or not words[end - period].startswith(words[n - 1])):
                continue
            span = (LOOP_MIN_COPIES - 1) * period
            if backwards[:span] != backwards[period : period + span]:
                continue
            k = end - span - 1
            while k >= period and words[k] == words[k - period]:
                k -= 1
            best = max(best, n - 1 - k)
    return best


_FENCED_CODE = re.compile(r"^[ \t]*(```|~~~).*?(?:^[ \t]*\1[^\n]*$|\Z)", re.DOTALL | re.MULTILINE)
_CODE_LINE_CHARS = frozenset("<>{}[]();=\\")


def _without_fenced_code(text: str) -> str:
    return _FENCED_CODE.sub(" ", text) if "```" in text or "~~~" in text else text


def dup_line_ratio(text: str) -> float:
    """Share of the characters of prose lines that repeat an earlier line (see the module doc)."""
    lines = [line.rstrip() for line in _without_fenced_code(text).splitlines() if line]
    if len(set(lines)) == len(lines):
        return 0.0  # no line repeats (the usual answer), so no prose line does: the per-line tests below cost more
    lines = [
        line for line in lines if line and line[0] not in " \t" and _CODE_LINE_CHARS.isdisjoint(line)
    ]  # indented: code
    if len(set(lines)) == len(lines):
        return 0.0
    seen: set[str] = set()
    dup = 0
    for line in lines:
        if line in seen:
            dup += len(line)
        else:
            seen.add(line)
    return round(dup / sum(map(len, lines)), 4)


_ASCII_SPACE = b" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"
_ASCII_TEXT = bytes(range(48, 58)) + bytes(range(65, 91)) + bytes(range(97, 123))
_ASCII_BYTES, _NON_ASCII_BYTES = bytes(range(128)), bytes(range(128, 256))
_NOT_TEXT = re.compile(r"[\W_]+")
_CODE_SIGNAL = re.compile(
    r"\w\([^()\n]*\)|[;{]\s*$|^\s*(?:def|class|import|return|function|const|let|var|public|private|static"
    r"|void|int|char|SELECT|INSERT|UPDATE|CREATE|#include)\b|^\^|\$$|</?[a-zA-Z][\w-]*[^<>]*>"
    r"|^\s*\|.*\w.*\|\s*$|^\s*[\[{(].*\w.*[\]})]\s*$|-->|->|=>|==|:=",
    re.MULTILINE,
)


def looks_like_code(text: str) -> bool:
    """Program syntax: a call, a statement end, a keyword line, a regex, a tag, a table, a literal."""
    return _CODE_SIGNAL.search(text) is not None


def text_ratio(text: str) -> float:
    """Letters, digits and emoji / non-space characters outside fenced code (see the module doc)."""
    text = _without_fenced_code(text)
    # Both counts are sums over characters: the ASCII ones are counted on bytes (in C), the few others by
    # str methods and regexes on just them (the whole text through the regexes cost 10x more).
    data = text.encode("utf-8", "surrogatepass")
    ascii_part = data if text.isascii() else data.translate(None, _NON_ASCII_BYTES)
    nonspace = len(ascii_part.translate(None, _ASCII_SPACE))
    textual = nonspace - len(ascii_part.translate(None, _ASCII_SPACE + _ASCII_TEXT))
    if len(ascii_part) < len(data):
        # UTF-8 without its ASCII bytes is the other characters' complete sequences, in order
        other = data.translate(None, _ASCII_BYTES).decode("utf-8", "surrogatepass")
        nonspace += len("".join(other.split()))
        textual += len(_NOT_TEXT.sub("", other)) + len(_EMOJI.findall(other))
    if nonspace < 16:
        return 1.0
    ratio = textual / nonspace
    if ratio < 0.5 and looks_like_code(text):
        return 1.0
    return round(ratio, 4)


_QUOTES = "\"'`“”‘’«»"
_ANSWER_END = _QUOTES + ".!?。！？…"
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
ECHO_MIN_WORDS = 3  # a shorter copy is weighed against the whole question: "cat" picked from the input "cat" answers


def echo_ratio(question: str, answer: str) -> float:
    """len(answer) / len(the question's paragraphs it was copied from), when the normalised answer
    occurs in the normalised question; else 0 (see the module doc)."""
    return _echo_ratio(question, " ".join(answer.split()))


def _echo_ratio(question: str, collapsed_answer: str) -> float:
    a = collapsed_answer.lstrip(_QUOTES).rstrip(_ANSWER_END)
    if not a or len(a) > len(question):
        return 0.0
    q = " ".join(question.split())
    at = q.find(a)
    if at < 0:
        return 0.0
    if len(a.split()) < ECHO_MIN_WORDS or not _PARAGRAPH_BREAK.search(question):
        return round(len(a) / len(q), 4)
    start = end = offset = 0  # the paragraphs that hold the copy: q is the paragraphs joined by spaces
    for paragraph in _PARAGRAPH_BREAK.split(question):
        length = len(" ".join(paragraph.split()))
        if not length:
            continue
        if offset + length <= at:
            start = offset + length + 1
        end = offset + length
        if end >= at + len(a):
            break
        offset = end + 1
    return round(len(a) / (end - start), 4)


REFUSAL_WINDOW = 300  # characters: a refusal or disclaimer opens the answer; later mentions are content
# A small grammar of refusal boilerplate, matched lower-cased (’ read as ') in the opening window. Three
# families: the speaker names itself an AI ("As an AI, I ...", "I'm just a language model"); a sentence
# opens, after at most a short lead-in ("Unfortunately, ", "I'm sorry, but ", "As of my last update, "),
# with "I" + an inability or refusal + a task verb ("I'm afraid I can't do that", "I cannot help with
# that request", "I do not feel comfortable providing ...") or a missing capacity ("I don't have access
# to ...", "I don't have personal opinions"); or it appeals to its guidelines. Phrase families, not
# sentences: "I can't help but ...", "I'm sorry to hear ..." and "We apologize for the delay" stay.
_AI = (
    r"(?:an? )?(?:ai|a\.i\.|artificial intelligence|(?:large )?language model|llm|chatbot|virtual assistant"
    r"|digital assistant|text-based (?:ai|assistant|model))(?: (?:language model|model|assistant|chatbot|system))?"
)
_INABLE = (
    r"(?:can ?not|can't|won't|will not|(?:am|'m) (?:not able|unable|not allowed|not permitted|not programmed"
    r"|not designed|not in a position)(?: to)?|(?:must|have to) (?:respectfully |politely )?(?:decline|refuse"
    r"|refrain from)(?: to)?|(?:do not|don't) feel comfortable)"
)
_ADVERB = r"(?:(?:really|actually|directly|personally|truly|physically|fully|currently|in good conscience) )?"
# not the idioms "I can't help but", "help thinking", "recommend it enough", "give up", nor "express how
# grateful", "feel my legs", "offer you a refund" of letters and stories
_TASK_VERB = (
    r"(?:help(?! but\b| \w+ing\b)|recommend(?![^.!?\n]* enough\b)|do (?:that|so)\b"
    r"|giv(?:e|ing)\b(?! up| in\b)|(?:assist|provid|fulfil+|comply|answer|complet|creat|writ|generat"
    r"|produc|engag|support|shar|brows|access|perform|respond|discuss|participat|process|accommodat"
    r"|condon|endors|encourag|promot|facilitat|role-?play|pretend|predict|form|experienc)(?:e|es|s|ing)?\b)"
)
_NO_CAPACITY = (
    r"(?:do not|don't) (?:actually )?(?:have|possess) (?:the (?:ability|capability|capacity|means)"
    r"|access to|direct access|real-time|personal (?:opinions|feelings|experiences?|emotions|beliefs"
    r"|preferences|views|thoughts)|(?:opinions|feelings|emotions|beliefs|preferences|a physical)\b"
    r"|(?:browsing|internet) (?:access|capabilit))"
)
_AI_SPEAKER = re.compile(
    rf"\b(?:as|being) {_AI}\b(?=[,;:]| (?:i|my|created|developed|trained|designed|built|made|without)\b)"
    rf"|\bi(?:'m| am) (?:just|only|merely|simply) {_AI}\b"
    r"|\bagainst (?:my|openai's) (?:ethical )?(?:guidelines|programming|principles|content polic|usage polic)"
    r"|openai's (?:content|usage) polic"
)
_AI_SPEAKER_WORDS = (" ai", "a.i.", "intelligence", "model", "llm", "chatbot", "assistant", "against", "openai")
_ZH_REFUSAL = re.compile(
    r"作为(?:一个|一名)?(?:人工智能|ai)(?:语言模型|助手|模型)|我(?:只是|是)一个(?:人工智能|ai|语言模型)"
    r"|(?:很|非常)?(?:抱歉|对不起)[，,]?(?:但是?)?我(?:无法|不能|没有办法|没办法)|我无法回答这个问题"
)
# "i" first, its word boundary checked after it: a literal prefix lets the regex engine skip ahead fast
_I_CANNOT = re.compile(rf"i(?<![\w']i)\s*(?:{_INABLE} {_ADVERB}{_TASK_VERB}|{_NO_CAPACITY})")
# what may precede "I cannot ..." in its sentence: nothing, an apology, or a short clause and a comma
_LEAD_IN = re.compile(
    r"(?:[^.!?\n]{0,40},\s*(?:but\s*)?|(?:(?:i'm|i am) (?:so |very |really )?)?(?:sorry|afraid)"
    r"(?:,? but)?\s*|(?:unfortunately|regrettably),?\s*)?"
)
_SENTENCE_MARKS = ".!?:\n"


REFUSAL_PHRASES: tuple[str, ...] = (  # the commonest wordings, reported by these names (matched lower-cased)
    "as an ai language model",
    "as a large language model",
    "as an ai assistant",
    "as an ai model",
    "i'm just an ai",
    "i am just an ai",
    "i'm only an ai",
    "i cannot assist with that",
    "i can't assist with that",
    "i cannot help with that",
    "i can't help with that",
    "i'm unable to assist",
    "i am unable to assist",
    "i'm sorry, but i can't",
    "i'm sorry, but i cannot",
    "i am sorry, but i cannot",
    "i'm sorry, i can't",
    "i'm sorry, i cannot",
    "i apologize, but i cannot",
    "i apologize, but i can't",
    "i cannot fulfill",
    "i can't fulfill",
    "i cannot comply",
    "i can't comply",
    "i'm not able to provide",
    "i cannot provide assistance",
    "it is not appropriate for me to",
    "it's not appropriate for me to",
    "openai's content policy",
    "作为一个人工智能语言模型",
    "作为人工智能语言模型",
    "作为一个ai语言模型",
    "作为ai语言模型",
    "作为一个语言模型",
    "作为一个人工智能助手",
    "作为一个ai助手",
    "我只是一个人工智能",
    "我只是一个ai",
    "很抱歉，我无法",
    "抱歉，我无法",
    "很抱歉，我不能",
    "抱歉，我不能",
    "我无法回答这个问题",
)


_PHRASE_MARKERS = ("as a", "i'm", "i am", "i can", "not appropriate", "openai", "作为", "我")
assert all(any(marker in phrase for marker in _PHRASE_MARKERS) for phrase in REFUSAL_PHRASES), (
    "every refusal phrase must contain one of _PHRASE_MARKERS (the cheap test that no phrase is present)"
)


def refusal_phrase(text: str) -> str:
    """The refusal boilerplate that opens `text` (lower-cased, ’ read as '): the first `REFUSAL_PHRASES`
    entry in its opening `REFUSAL_WINDOW` characters, else the first match of the grammar above there,
    whitespace collapsed, with its lead-in ("unfortunately, i am not able to help"); "" if none."""
    opening = text[:REFUSAL_WINDOW].lower().replace("’", "'")
    if any(marker in opening for marker in _PHRASE_MARKERS):  # 8 substring tests rule out all 45 phrases
        phrase = next((phrase for phrase in REFUSAL_PHRASES if phrase in opening), "")
        if phrase:
            return (
                phrase  # the stable names of the common wordings, as stored since the refusal measurement's version 1
            )
    # substring gates first: the regexes cost ~10x more than `in` on the typical answer that has no refusal
    found = _AI_SPEAKER.search(opening) if any(word in opening for word in _AI_SPEAKER_WORDS) else None
    if not opening.isascii() and "我" in opening:
        found = min(filter(None, (found, _ZH_REFUSAL.search(opening))), key=lambda m: m.start(), default=None)
    for match in _I_CANNOT.finditer(opening, 0, found.start() if found else len(opening)):
        at = match.start()
        sentence = max(map(opening.rfind, _SENTENCE_MARKS, repeat(0), repeat(at))) + 1
        if _LEAD_IN.fullmatch(opening[sentence:at].strip()):
            return " ".join(opening[sentence : match.end()].split())
    return " ".join(found.group().split()) if found else ""


_DANGLING_PUNCTUATION = frozenset(",:;=–—([{，：；、（【《“‘")
_OPENING_BRACKETS = frozenset("([{")
_DANGLING_WORDS = frozenset(
    "and or but nor the an of with because than whose their its your my our "
    "is are was were such whereas although though via including "
    "to from into as that which who whom these those this any some each every both".split()
)
# not "for"/"on"/"in": phrases end with them ("what we have hoped for", "and so on", "log in"); "a" only in lower case
_CJK_DANGLING = ("和", "与", "或", "或者", "以及", "因为", "但是", "并且", "例如", "比如", "由于")
_SENTENCE_END = re.compile(r"[.!?…][\"'”’)\]*]*(?=\s|$)|[。！？][」』”’）]*")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+•·]|\d{1,3}[.)、]|[a-zA-Z][.)]|#{1,6}\s|\||>)")
_CODE_CHARS = frozenset("=(){}[]<>;\\/_#@")  # not $: money is prose ("... have $3, or 300 cents,")
_FENCE_LINE = re.compile(r"^[ \t]*(?:```|~~~)", re.MULTILINE)


UNTERMINATED_WORDS = 12  # an unterminated last line this long is cut (unless verse, list, title, code)
UNTERMINATED_SHORT_WORDS = 4  # ... and this long when the line before ends with . ! ? (measured: 3 also flags
# a compiler's output line, 6 misses GSM8K steps cut short; a single-line answer needs UNTERMINATED_WORDS)
_FULL_STOPS = frozenset(".!?。！？")
_CLOSERS = "\"'”’)]*」』）"


def _ends_sentence(line: str) -> bool:
    return bool(line) and not line[-1].isalpha() and line[-1] not in _DANGLING_PUNCTUATION


def response_ending(text: str) -> Ending:
    """How an answer ends; code, lists, titles, verse and math answers stay complete."""
    if ("```" in text or "~~~" in text) and len(_FENCE_LINE.findall(text)) % 2:
        return Ending.OPEN_CODE_FENCE
    text = text.rstrip()
    if not text:
        return Ending.COMPLETE
    start = text.rfind("\n") + 1
    line = text[start:]
    code_like = line[:1] in " \t" or not _CODE_CHARS.isdisjoint(line)
    last = text[-1]
    if not last.isalpha():
        if last in _OPENING_BRACKETS or (last in _DANGLING_PUNCTUATION and not code_like):
            return Ending.DANGLING_PUNCTUATION  # code may end with ':' or ',' (def f(x):) but not '('
        return Ending.COMPLETE
    if line[:1] in " \t":
        return Ending.COMPLETE  # indented: code
    tail = line.split()[-1]
    if tail == "a" or tail.lower() in _DANGLING_WORDS or (not tail.isascii() and tail.endswith(_CJK_DANGLING)):
        return Ending.DANGLING_WORD  # also after a calculation ("= <<1+2=3>>3 cups of sugar to make the batter and")
    if code_like:
        return Ending.COMPLETE
    fragment = _SENTENCE_END.split(line)[-1].split()
    if len(fragment) < UNTERMINATED_SHORT_WORDS or _LIST_ITEM.match(line):
        return Ending.COMPLETE
    if sum(w[:1].isupper() for w in fragment) >= 0.6 * len(fragment):
        return Ending.COMPLETE  # Title Case: a title or a name
    previous = text[:start].rstrip()
    previous = previous[previous.rfind("\n") + 1 :]
    if len(fragment) < UNTERMINATED_WORDS:  # a short line: only after a line that ends with . ! ?
        return Ending.UNTERMINATED_SENTENCE if previous.rstrip(_CLOSERS)[-1:] in _FULL_STOPS else Ending.COMPLETE
    if previous and not _ends_sentence(previous):
        return Ending.COMPLETE  # verse, schedules, menus: no line ends a sentence
    return Ending.UNTERMINATED_SENTENCE


LANGUAGE_SAMPLE_CHARS = 100  # measured: 100 characters misread fewer prompts than 200 (less input data)

# --- measurements: statistics computed together, versioned together ------------------------------


class Conversation:
    """The texts the measurements share, each made at most once for a record."""

    def __init__(self, turns: Turns):
        self.turns = turns

    @cached_property
    def users(self) -> list[str]:
        return [content for role, content in self.turns if role == USER]

    @cached_property
    def answers(self) -> list[str]:
        return [content for role, content in self.turns if role == ASSISTANT]

    @cached_property
    def answer_splits(self) -> list[list[str]]:
        """Each answer's whitespace words (for the token estimate and the echo test)."""
        return [answer.split() for answer in self.answers]

    @cached_property
    def user_text(self) -> str:
        return "\n".join(self.users)

    @cached_property
    def answer_text(self) -> str:
        return "\n".join(self.answers)

    @cached_property
    def answer_words(self) -> list[str]:
        return _words(self.answer_text)


def _tokens(c: Conversation) -> Stats:
    answers = iter(c.answer_splits)
    user_tokens, answer_tokens, total = [], [], 0
    for role, content in c.turns:
        if role == ASSISTANT:
            tokens = estimate_tokens(content, next(answers))
            answer_tokens.append(tokens)
        else:
            tokens = estimate_tokens(content)
            if role == USER:
                user_tokens.append(tokens)
        total += tokens
    return {
        "min_user_tokens": min(user_tokens, default=0),
        "min_response_tokens": min(answer_tokens, default=0),
        "total_tokens": total,
    }


def _text_ratio(c: Conversation) -> Stats:
    return {"text_ratio": min(text_ratio(c.user_text), text_ratio(c.answer_text))}


def _language(c: Conversation) -> Stats:
    language, confidence = detect(c.user_text, LANGUAGE_SAMPLE_CHARS)
    response_language, response_confidence = detect(c.answer_text, LANGUAGE_SAMPLE_CHARS)
    return {
        "language": language,
        "language_confidence": confidence,
        "response_language": response_language,
        "response_language_confidence": response_confidence,
        # the record's language (the release's `langdetect`): the instruction's, unless the response is
        # identified more surely and the instruction not surely (short prompts are often misread)
        "record_language": language if confidence >= min(response_confidence, SURE_LANGUAGE) else response_language,
    }


def _refusal_phrase(c: Conversation) -> Stats:
    return {"refusal": next((phrase for phrase in map(refusal_phrase, c.answers) if phrase), "")}


def _echo_ratio_stat(c: Conversation) -> Stats:
    echo, question, answers = 0.0, "", iter(c.answer_splits)
    for role, content in c.turns:
        if role == ASSISTANT:
            words = next(answers)
            if question:
                echo = max(echo, _echo_ratio(question, " ".join(words)))
        elif role == USER:
            question = content
    return {"echo_ratio": echo}


def _repetition_stats(c: Conversation) -> Stats:
    # a loop ends a turn: measured per answer (one tokenisation when there is one answer)
    loop = _loop_words(c.answer_words) if len(c.answers) == 1 else max(map(loop_words, c.answers), default=0)
    return {"dup_ngram_ratio": _dup_ngram_ratio(c.answer_words), "loop_words": loop}


def _dup_line_ratio(c: Conversation) -> Stats:
    return {"dup_line_ratio": dup_line_ratio(c.answer_text)}


def _response_ending(c: Conversation) -> Stats:
    return {"response_ending": response_ending(c.answers[-1]).value if c.answers else Ending.COMPLETE.value}


@dataclass(frozen=True)
class Measurement:
    """Statistics computed together (names and meanings in the module docstring). Stored per record with
    `version`: bump it whenever `compute` changes what they mean, and only this measurement is taken
    again for the stored records (a new measurement is taken for them once; the others are kept)."""

    name: str
    version: int
    compute: Callable[[Conversation], Stats]


# versions start at 2: the statistics' single STATS_VERSION they were stored under before
MEASUREMENTS: dict[str, Measurement] = {
    m.name: m
    for m in (
        Measurement("tokens", 2, _tokens),
        Measurement("text_ratio", 2, _text_ratio),
        Measurement("language", 2, _language),
        Measurement("refusal", 2, _refusal_phrase),  # 2: refusal grammar
        Measurement("echo", 2, _echo_ratio_stat),  # 2: echo by paragraph
        Measurement("repetition", 2, _repetition_stats),  # 2: loop_words
        Measurement("dup_lines", 2, _dup_line_ratio),
        Measurement("response_ending", 2, _response_ending),  # 2: shorter unterminated lines
    )
}


def measurement_versions() -> dict[str, int]:
    """{measurement: version} of every registered measurement: what stored statistics must match."""
    return {name: m.version for name, m in MEASUREMENTS.items()}


def measure(turns: Turns, measurements: Iterable[str] | None = None) -> Stats:
    """The statistics of the given measurements (default: all), each computed once."""
    conversation = Conversation(turns)
    stats: Stats = {}
    for name in MEASUREMENTS if measurements is None else measurements:
        stats.update(MEASUREMENTS[name].compute(conversation))
    return stats


def _language_failure(stats: Stats, s: RuleSettings) -> str | None:
    """A side fails when it is confidently in a language outside the allowed list; the record fails
    when a side fails and no side is in an allowed language, so an English instruction answered
    with its French translation stays."""
    sides = (
        (stats["language"], stats["language_confidence"]),
        (stats["response_language"], stats["response_language_confidence"]),
    )
    if any(language in s.allowed_languages for language, _ in sides):
        return None
    return next(
        (
            language
            for language, confidence in sides
            if language != UNDETERMINED and confidence >= s.min_language_confidence
        ),
        None,
    )


def _fails_repeated_lines(stats: Stats, s: RuleSettings) -> bool:
    return Rule.REPEATED_LINES in s.enabled and stats["dup_line_ratio"] > s.max_dup_line_ratio


# One function per rule: the measured value that fails it, or None when the stats pass it. (A dict
# lookup per rule: a `match` over the Rule members cost ~2.5 us per rule, more than measuring some stats.)


def _empty_or_short(stats: Stats, s: RuleSettings) -> float | None:
    if stats["min_user_tokens"] < s.min_user_tokens:
        return stats["min_user_tokens"]
    if stats["min_response_tokens"] < s.min_response_tokens:
        return stats["min_response_tokens"]
    return None


def _too_long(stats: Stats, s: RuleSettings) -> float | None:
    return stats["total_tokens"] if stats["total_tokens"] > s.max_total_tokens else None


def _garbage(stats: Stats, s: RuleSettings) -> float | None:
    return stats["text_ratio"] if stats["text_ratio"] < s.min_text_ratio else None


def _refusal(stats: Stats, s: RuleSettings) -> str | None:
    return stats["refusal"] or None


def _echo(stats: Stats, s: RuleSettings) -> float | None:
    return stats["echo_ratio"] if stats["echo_ratio"] > s.max_echo_ratio else None


def _repetition(stats: Stats, s: RuleSettings) -> float | None:
    if stats["dup_ngram_ratio"] > s.max_dup_ngram_ratio:
        return stats["dup_ngram_ratio"]
    if stats["loop_words"] > s.max_loop_words and not _fails_repeated_lines(stats, s):
        return stats["loop_words"]  # a loop of whole lines goes as repeated_lines, the more specific reason
    return None


def _repeated_lines(stats: Stats, s: RuleSettings) -> float | None:
    return stats["dup_line_ratio"] if stats["dup_line_ratio"] > s.max_dup_line_ratio else None


def _truncated(stats: Stats, s: RuleSettings) -> str | None:
    return stats["response_ending"] if stats["response_ending"] in s.truncated_endings else None


@dataclass(frozen=True)
class RuleFilter:
    """One rule: its reason (`Rule`), the measurements it reads and its check (the measured value that fails
    it, or None). Its settings are fields of `RuleSettings`; its test is in tests/curate/test_rules.py."""

    rule: Rule
    reads: tuple[str, ...]
    fails: Callable[[Stats, RuleSettings], float | str | None]


RULES: tuple[RuleFilter, ...] = (  # in Rule order: the first failing rule is the drop reason
    RuleFilter(Rule.EMPTY_OR_SHORT, ("tokens",), _empty_or_short),
    RuleFilter(Rule.TOO_LONG, ("tokens",), _too_long),
    RuleFilter(Rule.GARBAGE, ("text_ratio",), _garbage),
    RuleFilter(Rule.LANGUAGE, ("language",), _language_failure),
    RuleFilter(Rule.REFUSAL, ("refusal",), _refusal),
    RuleFilter(Rule.ECHO, ("echo",), _echo),
    RuleFilter(Rule.REPETITION, ("repetition", "dup_lines"), _repetition),
    RuleFilter(Rule.REPEATED_LINES, ("dup_lines",), _repeated_lines),
    RuleFilter(Rule.TRUNCATED, ("response_ending",), _truncated),
)
if [f.rule for f in RULES] != list(Rule) or not {m for f in RULES for m in f.reads} <= set(MEASUREMENTS):
    raise ImportError("every Rule has one RuleFilter, in Rule order, reading registered measurements")


def judge(stats: Stats, settings: RuleSettings) -> Verdict:
    """The first enabled rule, in `Rule` order, that the stats fail, with the failing value."""
    for rule_filter in RULES:
        if rule_filter.rule in settings.enabled:
            value = rule_filter.fails(stats, settings)
            if value is not None:
                return Verdict(False, rule_filter.rule, value)
    return KEEP


def check(turns: Turns, settings: RuleSettings) -> Verdict:
    """judge(measure(turns), settings)."""
    return judge(measure(turns), settings)
