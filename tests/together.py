"""Run the same Python code in several processes at the same moment (a race between first runs)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def run_together(
    setup: str, code: str, folder: Path, n: int = 2, env: dict | None = None, timeout: float = 300
) -> list[subprocess.CompletedProcess]:
    """Start `n` processes that run `setup` (imports), wait until all are ready, then run `code` at once.

    Both see `index` (0..n-1). Returns each process's result (stdout and stderr as text)."""
    go = folder / "go"
    script = (
        "import pathlib, sys, time\n"
        f"index = int(sys.argv[1])\n{setup}\npathlib.Path({str(folder)!r}, f'ready-{{index}}').touch()\n"
        f"while not pathlib.Path({str(go)!r}).exists():\n    time.sleep(0.005)\n" + code
    )
    children = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        for i in range(n)
    ]
    deadline = time.monotonic() + timeout
    while not all((folder / f"ready-{i}").exists() for i in range(n)):
        if time.monotonic() > deadline or any(c.poll() is not None for c in children):
            break
        time.sleep(0.01)
    go.touch()
    results = []
    for child in children:
        out, err = child.communicate(timeout=max(1.0, deadline - time.monotonic()))
        results.append(subprocess.CompletedProcess(child.args, child.returncode, out, err))
    return results
