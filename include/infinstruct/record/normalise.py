"""Text normalisation applied to every turn before a record gets its id.

What it does, and why each step is safe:
* Terminal and control junk goes first (it has no meaning in a conversation, and a model trained on it
  learns to emit it): ANSI escape sequences (`\\x1b[31m`, `\\x1b]8;;url\\x1b\\\\`), C0 controls other than
  tab / line feed / carriage return, DEL and the C1 controls (but vertical tab, form feed and NEL become a
  line feed: they separate lines, and removing them would join words), bidirectional embedding / override /
  isolate controls (U+202A-U+202E, U+2066-U+2069: the "Trojan Source" characters, which make text display
  other than it reads) with the deprecated format controls U+206A-U+206F, and Unicode noncharacters
  (U+FDD0-U+FDEF, U+FFFE / U+FFFF of every plane). The left-to-right / right-to-left marks stay (RTL text
  needs them). A NUL never gets here: `build_record` quarantines it.
* Unicode NFC, then NFKC only where it changes no meaning: full-width / half-width forms
  (`ＡＢＣ１２３` -> `ABC123`), compatibility spaces (no-break, ideographic, thin ...) and Latin
  ligatures (`ﬁ` -> `fi`). Superscripts, fractions and circled numbers keep their form (x² is not x2).
* Invisible characters that only break matching go: zero-width space, word joiner, BOM.
  The zero-width joiner stays (it builds emoji).
* Line endings become `\\n`, trailing spaces at line ends go, runs of 3+ blank lines become one blank
  line; indentation inside lines is untouched (code).
* Chat-template artefacts at the start or end of a turn go: special tokens such as `<|im_start|>user`,
  `<|im_end|>`, `<|endoftext|>`, `</s>`, `[INST]`, `[/INST]`, `<<SYS>>`, and prompt-format headers such
  as `### Instruction:`, `### Response:`, `Human:`, `Assistant:` that a scraped turn still carries.

The original text stays where the ledger points (file and line), so nothing is lost by normalising.
"""

from __future__ import annotations

import re
import unicodedata

# ESC + CSI (`[` params final), OSC (`]` ... BEL or ST; unterminated, only the ESC goes), or a 2-3 byte escape
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[ -/]*[0-~])")
_LINE_CONTROLS = re.compile("[\x0b\x0c\x85]")
_NONCHARACTERS = "\ufdd0-\ufdef" + "".join(
    f"{chr(plane + 0xFFFE)}{chr(plane + 0xFFFF)}" for plane in range(0, 0x110000, 0x10000)
)
_CONTROLS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u206f" + _NONCHARACTERS + "]")
# _CONTROLS, or any character from U+1FFFE up (rare): a class of one astral range scans ~7x faster than one
# naming the 32 astral noncharacters, and this guard runs on every turn
_MAYBE_CONTROLS = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u206f\ufdd0-\ufdef\ufffe\uffff\U0001fffe-\U0010ffff]"
)
_SAFE_NFKC = re.compile("[\uff01-\uff5e\uffe0-\uffe6\u00a0\u2000-\u200a\u202f\u205f\u3000\ufb00-\ufb06]")
_INVISIBLE = re.compile("[\u200b\u2060\ufeff]")
_UNICODE_FIXES = re.compile(f"{_SAFE_NFKC.pattern}|{_INVISIBLE.pattern}")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_BLANK_RUNS = re.compile(r"\n{3,}")
_SPECIAL_TOKEN = r"(?:<\|[a-z_]+\|>(?:system|user|assistant)?|</?s>|\[/?INST\]|<</?SYS>>)"
_HEADER = r"(?:#{2,4}\s*(?:Instruction|Input|Response|Output|Question|Answer)\s*:|(?:Human|Assistant|User|AI)\s*:)"
_LEADING = re.compile(rf"^(?:\s*(?:{_SPECIAL_TOKEN}|{_HEADER}))+\s*", re.IGNORECASE)
_TRAILING = re.compile(rf"(?:\s*{_SPECIAL_TOKEN})+\s*$", re.IGNORECASE)
_ARTEFACT_STARTS = frozenset("<[#HhAaUu")  # first characters of what _LEADING can remove


def normalise_text(text: str) -> str:
    """Normalise one turn's text (see the module docstring for exactly what changes)."""
    # Cheap substring and character-class tests guard every regex: this runs on every turn of every record.
    if _MAYBE_CONTROLS.search(text):  # before NFC: a removed control may have separated a letter from its accent
        text = _strip_controls(text)
    text = unicodedata.normalize("NFC", text)
    if not text.isascii() and _UNICODE_FIXES.search(text):
        text = _SAFE_NFKC.sub(lambda m: unicodedata.normalize("NFKC", m.group()), text)
        text = _INVISIBLE.sub("", text)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if "\n" in text:
        if " \n" in text or "\t\n" in text:
            text = _TRAILING_SPACE.sub("\n", text)
        if "\n\n\n" in text:
            text = _BLANK_RUNS.sub("\n\n", text)
    text = text.strip()
    if text[:1] in _ARTEFACT_STARTS:
        text = _LEADING.sub("", text)
    if text.endswith((">", "]")):  # only then can a special token end the turn
        text = _TRAILING.sub("", text)
    return text


def _strip_controls(text: str) -> str:
    if "\x1b" in text:
        text = _ANSI.sub("", text)
    text = _LINE_CONTROLS.sub("\n", text)
    return _CONTROLS.sub("", text)
