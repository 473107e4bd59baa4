"""A lock around the first-time setup of a home folder: the embedded PostgreSQL's data directory (initdb,
the server's start, `create database`) and Airflow's metadata database (`airflow db migrate`).

Two first runs on a fresh home would otherwise both set it up and one of them fail half-way ("table
connection already exists", a second initdb into the first one's directory); with the lock the second waits
for the first and then finds the work done. It is `fcntl.flock` on a file in the home: the kernel drops the
lock when its holder dies, so a run killed during setup never leaves the home locked. Within a thread the
lock is re-entrant (a setup step may call another that takes the same lock); two threads of one process
exclude each other like two processes.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

_held = threading.local()  # .depth: lock file -> how many times this thread holds it


@contextmanager
def setup_lock(lock_file: Path, what: str) -> Iterator[None]:
    """Hold the exclusive lock `lock_file` (created if missing) while setting up `what` (named in the log)."""
    key = os.path.abspath(lock_file)
    depth: dict[str, int] = _held.__dict__.setdefault("depth", {})
    if key in depth:
        depth[key] += 1
        try:
            yield
        finally:
            depth[key] -= 1
        return
    Path(key).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)  # not inherited by initdb, airflow, ...
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process that is setting up %s (lock %s)", what, key)
            fcntl.flock(fd, fcntl.LOCK_EX)
        depth[key] = 1
        try:
            yield
        finally:
            del depth[key]
    finally:
        os.close(fd)  # releases the lock
