"""Stream the raw items of one partition, never loading a whole file.

Each reader yields `(line_no, item)`: `item` is the raw line (bytes) for JSONL, the row (dict) for
Parquet, the decoded element for a JSON array. A JSON array element that cannot be decoded (a raw NUL,
bad JSON, too long) is yielded as an `UnreadableElement` and reading goes on after it: element boundaries
are found by counting brackets outside strings, without decoding. Only an array whose structure breaks
(an element that never closes, a missing comma) yields one final error item for the unreadable rest.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from typing import IO, Any

from infinstruct.record.conversation import ConversationError
from infinstruct.record.reasons import Quarantine
from infinstruct.sources.plan import READ_CHUNK

Item = tuple[int, Any]
_NOT_UTF8 = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of bytes that are not UTF-8
_STRUCTURE = re.compile(r'["\[\]{},]')  # outside a string: what opens or closes a value, or separates
_IN_STRING = re.compile(r'["\\]')  # inside a string: its end, or an escape
_DECODER = json.JSONDecoder()
EXCERPT_CHARS = 500


class UnreadableElement(ConversationError):
    """A JSON array element that cannot be a record; `text` is the start of its raw text (for the excerpt)."""

    def __init__(self, reason: Quarantine, detail: str, text: str = ""):
        super().__init__(reason, detail)
        self.text = _NOT_UTF8.sub("\ufffd", text[:EXCERPT_CHARS])


def read_jsonl(path: str, start: int, end: int, first_line: int) -> Iterator[Item]:
    with open(path, "rb") as fh:
        fh.seek(start)
        offset, line_no = start, first_line
        for line in fh:
            if offset >= end:
                break
            offset += len(line)
            yield line_no, line
            line_no += 1


def read_parquet(path: str, start_group: int, end_group: int, first_row: int, batch_size: int) -> Iterator[Item]:
    import pyarrow.parquet as pq

    row_no = first_row
    groups = list(range(start_group, end_group))
    if not groups:
        return
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size, row_groups=groups):
        for row in batch.to_pylist():
            yield row_no, row
            row_no += 1


class _ArrayText:
    """The text of a .json file in a sliding buffer: `buf[pos:]` is not consumed yet."""

    def __init__(self, fh: IO[bytes]):
        # a leading byte order mark is dropped; bytes that are not UTF-8 become lone surrogates, so one bad
        # byte spoils one element, not the file
        self.fh, self.decoder = fh, codecs.getincrementaldecoder("utf-8-sig")(errors="surrogateescape")
        self.buf, self.pos, self.eof, self.dropped = "", 0, False, 0  # dropped: characters before buf

    def fill(self) -> bool:
        chunk = self.fh.read(READ_CHUNK)
        self.eof = not chunk
        self.dropped += self.pos
        self.buf = self.buf[self.pos :] + self.decoder.decode(chunk, final=self.eof)
        self.pos = 0
        return not self.eof

    def offset(self, i: int | None = None) -> int:
        """The number of characters in the file before buf[i] (default: before pos)."""
        return self.dropped + (self.pos if i is None else i)

    def skip_ws(self) -> str:
        """Move pos past whitespace; the character there, '' at the end of the file."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in " \t\r\n":
                self.pos += 1
            if self.pos < len(self.buf) or not self.fill():
                return self.buf[self.pos] if self.pos < len(self.buf) else ""

    def element(self, number: int, max_chars: int) -> Any:
        """The element at pos, decoded, or an UnreadableElement; pos moves past it."""
        while True:
            start = self.pos
            try:
                value, end = _DECODER.raw_decode(self.buf, start)
            except (RecursionError, ValueError):  # not whole in the buffer yet, or bad: find where it ends,
                return self._bounded_element(number, max_chars)  # then decode it alone
            if end == len(self.buf) and self.fill():  # a value ending where the buffer does (a number) may go on
                continue
            self.pos = end
            if _NOT_UTF8.search(self.buf, start, end):
                return UnreadableElement(
                    Quarantine.INVALID_UTF8, f"element {number} holds bytes that are not UTF-8", self.buf[start:end]
                )
            return value

    def _bounded_element(self, number: int, max_chars: int) -> Any:
        begin, head = self.offset(), self.buf[self.pos : self.pos + EXCERPT_CHARS]
        end, whole = self._element_end(number, max_chars * 2 + READ_CHUNK)
        raw, self.pos = self.buf[self.pos : end], end
        where = f"element {number} (from character {begin:,} of the file)"
        if not whole:
            return UnreadableElement(Quarantine.TOO_LONG, f"{where} exceeds {max_chars} characters", head)
        if "\x00" in raw:  # a raw NUL (an escaped one, \u0000, is valid JSON and judged later)
            return UnreadableElement(Quarantine.NUL_BYTE, f"{where} contains a NUL byte", raw)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            return UnreadableElement(
                Quarantine.INVALID_JSON, f"{where}: {exc.msg} at character {begin + exc.pos:,}", raw
            )
        except RecursionError:
            return UnreadableElement(Quarantine.INVALID_JSON, f"{where}: nested too deeply to read", raw)
        except ValueError as exc:  # e.g. an integer of more digits than Python converts
            return UnreadableElement(Quarantine.INVALID_JSON, f"{where}: {str(exc)[:200]}", raw)
        if _NOT_UTF8.search(raw):
            return UnreadableElement(Quarantine.INVALID_UTF8, f"element {number} holds bytes that are not UTF-8", raw)
        return value

    def _element_end(self, number: int, limit: int) -> tuple[int, bool]:
        """Where the element at pos ends (the index in buf of the ',' or ']' after it), by counting brackets
        outside strings; and whether it is whole in buf (False: longer than `limit`, its text was let go)."""
        i, depth, in_string, whole, begin = self.pos, 0, False, True, self.offset()
        while True:
            if in_string:
                m = _IN_STRING.search(self.buf, i)
                if m and m.group() == '"':
                    in_string, i = False, m.end()
                    continue
                if m and m.end() < len(self.buf):  # a backslash and the character it escapes
                    i = m.end() + 1
                    continue
                i = m.start() if m else len(self.buf)
            else:
                m = _STRUCTURE.search(self.buf, i)
                if m:
                    ch, i = m.group(), m.end()
                    if ch == '"':
                        in_string = True
                    elif ch in "[{":
                        depth += 1
                    elif depth > 0:
                        depth -= ch != ","
                    elif ch != "}":  # ',' or ']' at the top: the element is over
                        return m.start(), whole
                    continue
                i = len(self.buf)
            if self.eof:
                raise ConversationError(
                    Quarantine.INVALID_JSON,
                    f"element {number} (from character {begin:,} of the file) never ends: the file ends inside it",
                )
            if self.offset(i) - begin > limit:  # too long to keep: scan on, holding no more than a chunk
                whole, self.pos = False, i
            shift = self.pos
            self.fill()
            i -= shift


def read_json_array(path: str, max_chars: int) -> Iterator[Item]:
    """Elements of a top-level JSON array, decoded incrementally from a buffered text stream."""
    element = 1  # the number of the next item
    with open(path, "rb") as fh:
        text = _ArrayText(fh)
        try:
            if text.skip_ws() != "[":
                raise ConversationError(Quarantine.INVALID_JSON, "a .json source must hold a JSON array of records")
            text.pos += 1
            if text.skip_ws() == "]":
                return
            while True:
                text.skip_ws()
                yield element, text.element(element, max_chars)
                element += 1
                sep = text.skip_ws()
                text.pos += 1
                if sep == "]":
                    return
                if sep != ",":
                    raise ConversationError(
                        Quarantine.INVALID_JSON,
                        f"after element {element - 1}: expected ',' or "
                        f"']', found {sep or 'end of file'!r}; rest of file unreadable",
                    )
        except ConversationError as exc:
            yield element, exc
