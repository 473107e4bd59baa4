"""An OpenAI-compatible double for the network only: a tiny HTTP server on 127.0.0.1, programmable per
request and counting every request it gets (the code under test is always the real one)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class JudgeDouble:
    """POST /v1/chat/completions in the OpenAI shape. Each request takes the next programmed action
    (`then`), else answers {"score": scores[instruction]} (5 for an unknown instruction)."""

    def __init__(self, scores: dict[str, int] | None = None):
        self.scores, self.actions, self.requests = dict(scores or {}), deque(), []
        self.answer = None  # a function of the request body giving the content, instead of the judge's score
        self.lock = threading.Lock()
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with double.lock:
                    double.requests.append(
                        {
                            "path": self.path,
                            "body": body,
                            "at": time.monotonic(),
                            "authorization": self.headers.get("Authorization"),
                        }
                    )
                    action = double.actions.popleft() if double.actions else None
                double.respond(self, body, action)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"

    def then(self, *actions) -> JudgeDouble:
        """Program the next requests: ("score", n), ("content", text), ("status", code, headers), ("hang", s)."""
        self.actions.extend(actions)
        return self

    def count(self) -> int:
        return len(self.requests)

    def respond(self, handler, body, action) -> None:
        if action is None and not handler.path.endswith("/chat/completions"):  # e.g. /completions: not served
            action = ("status", 404)
        if action is None and self.answer is not None:
            action = ("content", self.answer(body))
        if action is None:
            user = body["messages"][-1]["content"]
            instruction = user.split("[Instruction]\n", 1)[1].split("\n\n[Response]", 1)[0]
            action = ("score", self.scores.get(instruction, 5))
        if action[0] == "hang":  # past the client's timeout: it has gone when we answer
            time.sleep(action[1])
        if action[0] == "status":
            code, headers = action[1], action[2] if len(action) > 2 else {}
            payload = {"error": {"message": f"double says {code}", "type": "test", "code": code}}
            return self.send(handler, code, payload, headers)
        content = action[1] if action[0] == "content" else json.dumps({"score": action[1]})
        content = content if action[0] != "hang" else '{"score": 5}'
        self.send(
            handler,
            200,
            {
                "id": f"chatcmpl-{uuid.uuid4().hex[:8]}",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 50, "completion_tokens": 5, "total_tokens": 55},
            },
        )

    @staticmethod
    def send(handler, code: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        try:
            handler.send_response(code)
            for key, value in {"Content-Type": "application/json", **(headers or {})}.items():
                handler.send_header(key, value)
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        except OSError:  # the client timed out and went
            pass

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
