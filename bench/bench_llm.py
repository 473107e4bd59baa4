"""LLM-stage throughput (issue 12): `JsonChat` against a latency-injected OpenAI-compatible endpoint, next to
a plain asyncio client in the same run, and its tokens/s through the embedded llama.cpp server.

    python bench/bench_llm.py [--server postgresql://postgres@127.0.0.1:5432/postgres] [--latency 0.3]
                              [--rounds 10] [--repeat 3] [--concurrency 1 8 32] [--llama-rounds 4]
                              [--no-llama | --no-throughput]

Throughput. An asyncio HTTP server in its own process (stdlib only: one event loop, keep-alive, no thread per
request, so 32 requests in flight cost it nothing on 2 cores) answers POST /v1/chat/completions with a JSON
object after exactly --latency seconds. At concurrency c, N = c x --rounds fresh requests are sent by:
* `raw sockets`: c asyncio connections writing HTTP by hand — the ceiling: what the endpoint itself allows;
* `plain asyncio`: openai.AsyncOpenAI + asyncio.Semaphore(c), no cache, no database — the reference;
* `JsonChat`: `ask_many` (the library's client), with a new prompt version per run so nothing is cached,
  on a real PostgreSQL: a scratch database created on --server, migrated by `store.db.get_engine`, dropped
  at the end. Every request is checked to have been sent (the server's count) and recorded (llm_calls).
Efficiency = N x latency / (c x wall): 1.0 means every slot was waiting on the endpoint all the time.
Targets: >= 0.9 at c = 8, >= 0.8 at c = 32. Also printed: the client process's CPU per request, the most
requests the server saw in flight, and where a JsonChat request's time goes (`_record`/`_store`/HTTP, timed
by wrapping the instance's methods in a separate run, so the measured runs are not instrumented).

Tokens/s. The embedded server (`ensure_local_llm`, SmolLM2-135M on llama.cpp, in a private INFINSTRUCT_HOME,
stopped at the end) gets the same 10 free-text requests (temperature 0, max_tokens 64, concurrency 1) from the
raw openai client and from JsonChat, paired request by request (order alternating), --llama-rounds times after
a warm-up. Target: JsonChat >= 95% of the raw client's completion tokens/s (the server's own rate). Also
printed: JsonChat's own time per request (its wall minus its HTTP call, timed by wrapping the instance's
client), which a busy machine does not inflate the way it does the server's rate.

Prints Markdown tables for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "include"))
sys.path.insert(0, str(ROOT / "bench"))
from benchlib import table  # noqa: E402

MODEL = "bench-model"
SYSTEM = {"role": "system", "content": "Reply with a JSON object."}
TOPICS = [
    "the Moon",
    "rivers",
    "prime numbers",
    "bread",
    "volcanoes",
    "owls",
    "the piano",
    "glaciers",
    "tea",
    "bridges",
]


# --- the endpoint: an asyncio server in its own process ---------------------------------------------------


async def _serve(latency: float) -> None:
    stats = {"requests": 0, "in_flight": 0, "max_in_flight": 0}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # keep-alive: one connection carries many requests, as the openai clients reuse them
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                method, path = head[0].split(" ")[:2]
                headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in head[1:] if ":" in ln)}
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                if method == "POST":
                    stats["requests"] += 1
                    stats["in_flight"] += 1
                    stats["max_in_flight"] = max(stats["max_in_flight"], stats["in_flight"])
                    await asyncio.sleep(latency)  # the injected latency: the whole "model time"
                    stats["in_flight"] -= 1
                    request = json.loads(body)
                    payload = {
                        "id": f"chatcmpl-{stats['requests']}",
                        "object": "chat.completion",
                        "created": 0,
                        "model": request["model"],
                        "choices": [
                            {
                                "index": 0,
                                "finish_reason": "stop",
                                "message": {
                                    "role": "assistant",
                                    "content": json.dumps({"echo": request["messages"][-1]["content"]}),
                                },
                            }
                        ],
                        "usage": {"prompt_tokens": 50, "completion_tokens": 5, "total_tokens": 55},
                    }
                else:  # GET /stats: what the server saw, to check the runs (and that it kept up)
                    payload = dict(stats)
                    if path.endswith("reset"):
                        stats["max_in_flight"] = 0
                data = json.dumps(payload).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(data), data)
                )
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed its connection
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=256)
    print(server.sockets[0].getsockname()[1], flush=True)  # the parent reads the port
    async with server:
        await server.serve_forever()


class Endpoint:
    """The latency-injected server as a child process (this file with --serve)."""

    def __init__(self, latency: float):
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve", "--latency", str(latency)], stdout=subprocess.PIPE, text=True
        )
        self.port = int(self.process.stdout.readline())
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def stats(self, reset: bool = False) -> dict:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats{'/reset' if reset else ''}") as r:
            return json.loads(r.read())

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)


# --- the three clients --------------------------------------------------------------------------------------


def requests_for(n: int, tag: str) -> list[list[dict]]:
    return [[SYSTEM, {"role": "user", "content": f"item {i} of run {tag}"}] for i in range(n)]


async def _raw_sockets(port: int, n: int, concurrency: int) -> None:
    body = json.dumps({"model": MODEL, "messages": requests_for(1, "raw")[0]}).encode()
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )

    async def worker(count: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(count):
            writer.write(request)
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
            await reader.readexactly(int(head.split("content-length:")[1].split("\r\n")[0]))
        writer.close()

    await asyncio.gather(*(worker(n // concurrency) for _ in range(concurrency)))


async def _plain_asyncio(url: str, requests: list[list[dict]], concurrency: int) -> list[dict]:
    import openai

    client = openai.AsyncOpenAI(base_url=url, api_key="no-key", max_retries=0, timeout=60)
    gate = asyncio.Semaphore(concurrency)

    async def one(messages: list[dict]) -> dict:
        async with gate:
            completion = await client.chat.completions.create(
                model=MODEL, messages=messages, temperature=0, response_format={"type": "json_object"}
            )
            return json.loads(completion.choices[0].message.content)

    try:
        return await asyncio.gather(*(one(m) for m in requests))
    finally:
        await client.close()


def as_json(text: str) -> dict:
    from infinstruct.ml.llm import InvalidAnswer

    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidAnswer(str(exc)) from exc


def json_chat(engine, url: str, concurrency: int, run_id: str):
    from infinstruct.ml.llm import ChatSettings, JsonChat

    return JsonChat(
        ChatSettings(model=MODEL, base_url=url, concurrency=concurrency, timeout_seconds=60),
        engine,
        run_id=run_id,
        role="bench",
    )


def timed(action) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of action()."""
    wall, cpu = time.perf_counter(), time.process_time()
    action()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(kind: str, endpoint: Endpoint, engine, concurrency: int, n: int) -> dict:
    """One run of `kind` at `concurrency`: wall, CPU and what the server saw; checks every request was sent."""
    import sqlalchemy as sa

    tag = uuid.uuid4().hex[:8]  # a new prompt version / content: nothing cached
    before = endpoint.stats(reset=True)["requests"]
    if kind == "raw sockets":
        wall, cpu = timed(lambda: asyncio.run(_raw_sockets(endpoint.port, n, concurrency)))
    elif kind == "plain asyncio":
        wall, cpu = timed(lambda: asyncio.run(_plain_asyncio(endpoint.url, requests_for(n, tag), concurrency)))
    else:
        chat = json_chat(engine, endpoint.url, concurrency, f"bench-{tag}")
        wall, cpu = timed(lambda: chat.ask_many(requests_for(n, tag), f"bench-{tag}", as_json))
        with engine.connect() as conn:
            recorded = conn.execute(
                sa.text("select count(*) from llm_calls where run_id = :r and status = 'ok'"), {"r": f"bench-{tag}"}
            ).scalar_one()
        if recorded != n:
            raise SystemExit(f"JsonChat recorded {recorded} calls for {n} requests")
    stats = endpoint.stats()
    if stats["requests"] - before != n:
        raise SystemExit(f"{kind}: the server got {stats['requests'] - before} requests, expected {n}")
    return {"wall": wall, "cpu": cpu, "in_flight": stats["max_in_flight"]}


def breakdown(engine, endpoint: Endpoint, concurrency: int, n: int) -> dict[str, float]:
    """Mean milliseconds per request in each part of JsonChat._ask, from one instrumented run (the instance's
    methods wrapped, the library untouched), and the wall of that run."""
    import threading

    chat = json_chat(engine, endpoint.url, concurrency, f"bench-profile-{uuid.uuid4().hex[:8]}")
    spent: dict[str, float] = {}
    lock = threading.Lock()

    def wrap(name: str, fn):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                with lock:
                    spent[name] = spent.get(name, 0.0) + time.perf_counter() - started

        return wrapper

    chat._record = wrap("llm_calls insert (_record)", chat._record)
    chat._store = wrap("llm_responses insert (_store)", chat._store)
    chat._check_budget = wrap("budget check", chat._check_budget)
    chat._cached = wrap("cache lookup (whole batch)", chat._cached)
    completions = chat.client.chat.completions
    completions.create = wrap("HTTP (openai create)", completions.create)
    tag = uuid.uuid4().hex[:8]
    wall, _ = timed(lambda: chat.ask_many(requests_for(n, tag), f"bench-{tag}", as_json))
    return {"wall": wall, **{k: v * 1000 / n for k, v in spent.items()}}


# --- tokens/s through the embedded llama.cpp server -------------------------------------------------------


def llama_tokens(engine, rounds: int) -> list[list]:
    import openai
    import sqlalchemy as sa

    from infinstruct.ml.llm import ChatSettings, JsonChat, request_params
    from infinstruct.ml.llm_server import ensure_local_llm, stop_local_llm

    server = ensure_local_llm()
    try:
        settings = ChatSettings(
            model=server.model,
            base_url=server.base_url,
            json_answers=False,
            max_tokens=64,
            concurrency=1,
            timeout_seconds=120,
        )
        params = request_params(settings)  # exactly what JsonChat sends: temperature 0, max_tokens 64
        asks = [[{"role": "user", "content": f"Write three sentences about {t}."}] for t in TOPICS]
        raw = openai.OpenAI(base_url=server.base_url, api_key="no-key", max_retries=0, timeout=120)
        raw.chat.completions.create(model=server.model, messages=asks[0], **params)  # warm-up: model in memory

        def by_raw(messages: list[dict]) -> tuple[float, int]:
            started = time.perf_counter()
            tokens = raw.chat.completions.create(
                model=server.model, messages=messages, **params
            ).usage.completion_tokens
            return time.perf_counter() - started, tokens

        def by_json_chat(chat: JsonChat, messages: list[dict]) -> tuple[float, int]:
            started = time.perf_counter()
            chat.ask_many([messages], f"bench-{chat.run_id}", str)  # one request a call: its per-batch cost too
            wall = time.perf_counter() - started
            with engine.connect() as conn:
                tokens = conn.execute(
                    sa.text("select completion_tokens from llm_calls where run_id = :r order by id desc limit 1"),
                    {"r": chat.run_id},
                ).scalar_one()
            return wall, tokens

        def timing_http(chat: JsonChat) -> list[float]:
            """Wrap the instance's HTTP call (the library untouched): the seconds spent in it, per request."""
            spent, create = [], chat.client.chat.completions.create

            def timed_create(*args, **kwargs):
                started = time.perf_counter()
                try:
                    return create(*args, **kwargs)
                finally:
                    spent.append(time.perf_counter() - started)

            chat.client.chat.completions.create = timed_create
            return spent

        # Paired: each request goes to both clients back to back, the order alternating, so a busy moment of the
        # machine hits both. The second of a pair reuses the first's prompt from llama.cpp's KV cache; evaluated
        # in other batches, its logits differ in the last bits and a greedy answer may end a few tokens earlier
        # or later: the two clients' token counts differ a little, so rates are compared, not walls.
        # JsonChat's own time (its wall minus its HTTP call: cache lookup, thread pool, llm_calls and
        # llm_responses inserts) does not depend on how busy the machine is: it bounds the rate it can lose.
        rows, totals, ratios, own = [], {"raw": [0.0, 0], "JsonChat": [0.0, 0]}, [], []
        for r in range(rounds):
            chat = JsonChat(settings, engine, run_id=f"bench-llama-{uuid.uuid4().hex[:8]}", role="bench")
            http = timing_http(chat)
            spent = {"raw": [0.0, 0], "JsonChat": [0.0, 0]}  # a new prompt version each round: all sent
            for i, messages in enumerate(asks):
                pair = [("raw", lambda m=messages: by_raw(m)), ("JsonChat", lambda m=messages: by_json_chat(chat, m))]
                rates = {}
                for name, run in pair if (i + r) % 2 == 0 else pair[::-1]:
                    wall, tokens = run()
                    rates[name] = tokens / wall
                    for acc in (spent[name], totals[name]):
                        acc[0] += wall
                        acc[1] += tokens
                    if name == "JsonChat":
                        own.append((wall - http[-1], wall))
                ratios.append(rates["JsonChat"] / rates["raw"])
            rate = {k: t / w for k, (w, t) in spent.items()}
            mine = own[-len(asks) :]
            rows.append(
                [
                    f"round {r + 1}",
                    len(asks),
                    f"{spent['raw'][1]} / {spent['JsonChat'][1]}",
                    f"{rate['raw']:.1f}",
                    f"{rate['JsonChat']:.1f}",
                    f"{rate['JsonChat'] / rate['raw']:.3f}",
                    f"{1000 * sum(o for o, _ in mine) / len(mine):.1f}",
                    f"{sum(o for o, _ in mine) / sum(w for _, w in mine):.2%}",
                ]
            )
        rate = {k: t / w for k, (w, t) in totals.items()}
        rows.append(
            [
                "all",
                rounds * len(asks),
                f"{totals['raw'][1]} / {totals['JsonChat'][1]}",
                f"{rate['raw']:.1f}",
                f"{rate['JsonChat']:.1f}",
                f"{rate['JsonChat'] / rate['raw']:.3f} (median pair {statistics.median(ratios):.3f})",
                f"{1000 * sum(o for o, _ in own) / len(own):.1f}",
                f"{sum(o for o, _ in own) / sum(w for _, w in own):.2%}",
            ]
        )
        return rows
    finally:
        stop_local_llm()


# --- the run --------------------------------------------------------------------------------------------


def scratch_database(server: str) -> str:
    import sqlalchemy as sa

    from infinstruct.store.database_url import normalise_url

    name = f"infinstruct_bench_llm_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(normalise_url(server), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'create database "{name}"'))
    admin.dispose()
    return sa.engine.make_url(normalise_url(server)).set(database=name).render_as_string(hide_password=False)


def drop_database(server: str, url: str) -> None:
    import sqlalchemy as sa

    from infinstruct.store.database_url import normalise_url

    admin = sa.create_engine(normalise_url(server), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'drop database if exists "{sa.engine.make_url(url).database}" with (force)'))
    admin.dispose()


def throughput(args, endpoint: Endpoint, engine) -> None:
    """The throughput and breakdown tables."""
    kinds = ["raw sockets", "plain asyncio", "JsonChat"]
    for kind in kinds:  # warm-up, not counted: imports, the first connections, the server's first requests
        measure(kind, endpoint, engine, 4, 8)
    results: dict[tuple[str, int], list[dict]] = {}
    for _ in range(args.repeat):  # interleaved: a slow moment of the machine hits every client alike
        for c in args.concurrency:
            for kind in kinds:
                results.setdefault((kind, c), []).append(measure(kind, endpoint, engine, c, c * args.rounds))
    rows = []
    for c in args.concurrency:
        n = c * args.rounds
        for kind in kinds:
            runs = results[(kind, c)]
            eff = sorted(n * args.latency / (c * r["wall"]) for r in runs)
            rows.append(
                [
                    c,
                    kind,
                    n,
                    f"{statistics.median(r['wall'] for r in runs):.2f}",
                    f"{statistics.median(eff):.3f}",
                    f"{eff[0]:.3f}-{eff[-1]:.3f}",
                    f"{statistics.median(r['cpu'] for r in runs) * 1000 / n:.2f}",
                    max(r["in_flight"] for r in runs),
                ]
            )
    print(f"Throughput at {args.latency} s injected latency, median of {args.repeat} runs:\n")
    table(
        [
            "concurrency",
            "client",
            "requests",
            "wall s",
            "efficiency",
            "range",
            "client CPU ms/request",
            "server max in flight",
        ],
        rows,
    )

    parts = {c: breakdown(engine, endpoint, c, c * args.rounds) for c in args.concurrency}
    names = [k for k in parts[args.concurrency[-1]] if k != "wall"]
    print(
        "Where a JsonChat request's time goes (one instrumented run; mean ms per request in each part, "
        "the HTTP call included):\n"
    )
    table(
        ["concurrency", "wall s", *names],
        [[c, f"{p['wall']:.2f}", *(f"{p.get(k, 0):.2f}" for k in names)] for c, p in parts.items()],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--server",
        default=os.environ.get("INFINSTRUCT_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="a PostgreSQL server URL; the bench creates (and drops) a scratch database on it",
    )
    parser.add_argument("--latency", type=float, default=0.3, help="the endpoint's injected latency, seconds")
    parser.add_argument("--rounds", type=int, default=10, help="requests per concurrency slot")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each client at each concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--llama-rounds", type=int, default=4)
    parser.add_argument("--no-llama", action="store_true", help="skip the embedded llama.cpp tokens/s part")
    parser.add_argument("--no-throughput", action="store_true", help="only the embedded llama.cpp tokens/s part")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the endpoint's own process
    args = parser.parse_args()
    if args.serve:
        return asyncio.run(_serve(args.latency))

    os.environ["INFINSTRUCT_HOME"] = tempfile.mkdtemp(prefix="infinstruct-bench-llm-")  # a private llama server
    from benchlib import machine_facts
    from infinstruct.store.db import get_engine

    url = scratch_database(args.server)
    endpoint = Endpoint(args.latency)
    try:
        engine = get_engine(url)  # migrated to the latest schema, with the pipeline's pool settings
        facts = machine_facts(engine)
        print(
            f"{time.strftime('%Y-%m-%d')}; {facts['nproc']} cores, {facts['cpu']}, {facts['ram_gib']} GiB; load "
            f"{facts['load']}; Python {facts['python']}; {facts['postgres']}\n"
        )
        if not args.no_throughput:
            throughput(args, endpoint, engine)
        if not args.no_llama:
            print(
                "Embedded llama.cpp (SmolLM2-135M), 10 free-text requests, max_tokens 64, temperature 0, "
                "concurrency 1:\n"
            )
            table(
                [
                    "round",
                    "requests",
                    "completion tokens raw / JsonChat",
                    "raw tokens/s",
                    "JsonChat tokens/s",
                    "JsonChat / raw",
                    "JsonChat own ms/request",
                    "own share of its wall",
                ],
                llama_tokens(engine, args.llama_rounds),
            )
        engine.dispose()
    finally:
        endpoint.close()
        drop_database(args.server, url)


if __name__ == "__main__":
    main()
