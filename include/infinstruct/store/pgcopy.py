"""COPY rows into PostgreSQL (text format) from a background thread.

Parsing is Python on one core and loading is the server on the other; handing each finished batch
to a thread lets the two overlap instead of taking turns (psycopg2 releases the GIL while it sends).
"""

from __future__ import annotations

import io
import queue
import threading

_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def text_field(value: str) -> bytes:
    """A value escaped for COPY's text format."""
    return value.translate(_ESCAPES).encode("utf-8")


def json_field(value: bytes) -> bytes:
    """Compact JSON escaped for COPY's text format (JSON text holds no raw tabs or newlines, only backslashes)."""
    return value.replace(b"\\", b"\\\\")


class Copier:
    """Runs COPY statements in order on one background thread, which alone uses the cursor until close()."""

    def __init__(self, cursor, max_pending: int = 2):
        self._cursor = cursor
        self._jobs: queue.Queue = queue.Queue(max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="pgcopy", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            if self._error is None:
                sql, payload = job
                try:
                    self._cursor.copy_expert(sql, io.BytesIO(payload), size=1 << 20)
                except BaseException as exc:  # handed to the caller in submit()/close()
                    self._error = exc

    def submit(self, sql: str, payload: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._jobs.put((sql, payload))

    def close(self, check: bool = True) -> None:
        """Wait for every submitted COPY; raise the first error one of them hit (unless check is False)."""
        self._jobs.put(None)
        self._thread.join()
        if check and self._error is not None:
            raise self._error


class CopyTable:
    """Rows for one table, collected as COPY text lines and submitted every `batch_rows` rows."""

    def __init__(self, copier: Copier, table: str, columns: tuple[str, ...], batch_rows: int):
        self.copier, self.batch_rows = copier, batch_rows
        self.sql = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
        self.lines: list[bytes] = []
        self.rows = 0

    def add(self, *fields: bytes) -> None:
        self.lines.append(b"\t".join(fields) + b"\n")
        if len(self.lines) >= self.batch_rows:
            self.flush()

    def flush(self) -> None:
        if self.lines:
            self.copier.submit(self.sql, b"".join(self.lines))
            self.rows += len(self.lines)
            self.lines = []
