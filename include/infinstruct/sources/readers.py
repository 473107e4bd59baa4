"""Stream the raw items of one partition, never loading a whole file.

Each reader yields `(line_no, item)`: `item` is the raw line (bytes) for JSONL, the row (dict) for
Parquet, the decoded element for a JSON array. A JSON array that breaks mid-way yields one final
ConversationError item for the unreadable rest, since element boundaries are lost from there on.
"""
from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from typing import Any

from infinstruct.record.conversation import ConversationError
from infinstruct.record.reasons import Quarantine
from infinstruct.sources.plan import READ_CHUNK

Item = tuple[int, Any]
_NOT_UTF8 = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of bytes that are not UTF-8


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


def read_json_array(path: str, max_chars: int) -> Iterator[Item]:
    """Elements of a top-level JSON array, decoded incrementally from a buffered text stream."""
    decoder = json.JSONDecoder()
    # bytes that are not UTF-8 become lone surrogates, so one bad byte spoils one element, not the file
    text_chunks = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
    with open(path, "rb") as fh:
        buf, pos, eof, element = "", 0, False, 1  # element: number of the next item

        def fill() -> bool:
            nonlocal buf, pos, eof
            chunk = fh.read(READ_CHUNK)
            eof = not chunk
            buf = buf[pos:] + text_chunks.decode(chunk, final=eof)
            pos = 0
            return not eof

        def skip_ws() -> str:
            nonlocal pos
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n":
                    pos += 1
                if pos < len(buf) or not fill():
                    return buf[pos] if pos < len(buf) else ""

        try:
            fill()
            if skip_ws() != "[":
                raise ConversationError(Quarantine.INVALID_JSON, "a .json source must hold a JSON array of records")
            pos += 1
            if skip_ws() == "]":
                return
            while True:
                skip_ws()
                while True:
                    try:
                        value, end = decoder.raw_decode(buf, pos)
                    except (RecursionError, ValueError) as exc:
                        if not isinstance(exc, json.JSONDecodeError):   # too deep, a number too long: unreadable
                            what = "nested too deeply to read" if isinstance(exc, RecursionError) else str(exc)[:200]
                            raise ConversationError(Quarantine.INVALID_JSON, f"element {element}: {what}; rest of file "
                                                    "unreadable") from None
                        if len(buf) - pos > max_chars * 2 + READ_CHUNK:
                            raise ConversationError(Quarantine.TOO_LONG, f"element {element} exceeds {max_chars} characters; rest of file unreadable") from None
                        if not fill():
                            raise ConversationError(Quarantine.INVALID_JSON, f"element {element}: {exc.msg}; rest of file unreadable") from None
                        continue
                    if end == len(buf) and not eof:  # a number cut at the buffer's end parses, but is not whole
                        fill()
                        continue
                    break
                if _NOT_UTF8.search(buf, pos, end):
                    value = ConversationError(Quarantine.INVALID_UTF8, f"element {element} holds bytes that are not UTF-8")
                pos = end
                yield element, value
                element += 1
                sep = skip_ws()
                pos += 1
                if sep == "]":
                    return
                if sep != ",":
                    raise ConversationError(Quarantine.INVALID_JSON, f"after element {element - 1}: expected ',' or ']', found {sep or 'end of file'!r}; rest of file unreadable")
        except ConversationError as exc:
            yield element, exc
