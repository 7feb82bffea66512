"""A hostile chat-completions server written apart from tests/fakes/openai_server.py, so that the QA backend meets
replies nobody scripted: each answer's status (200 mostly; 201, 204, 302, 4xx, 429, 5xx), content type, body
(a completion whose fields are swapped at random for random JSON trees, or a random tree, truncated, or random
bytes) and Retry-After (numbers, dates, nonsense) are drawn from a seeded generator."""

from __future__ import annotations

import json
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

STATUSES = [200] * 8 + [201, 204, 302, 400, 404, 409, 418, 429, 500, 502, 503, 529]
CONTENT_TYPES = ["application/json", "application/json; charset=latin-1", "text/html", "text/plain",
                 "application/x-ndjson", ""]  # fmt: skip
RETRY_AFTER = ["0.1", "abc", "-5", "Wed, 21 Oct 2015 07:28:00 GMT"]


class HostileServer:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> HostileServer:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def tree(self, depth: int = 0) -> Any:
        rng = self.rng
        kind = rng.choice(["str", "int", "float", "null", "bool", "list", "dict"] if depth < 3 else ["str", "null"])
        if kind == "str":
            return rng.choice(["", "x", '{"pairs": []}', "\u0000", "<html>", "a" * rng.randint(0, 50)])
        if kind == "int":
            return rng.choice([0, -1, 2**63, 7])
        if kind == "float":
            return rng.choice([0.5, -1e308, float("nan")])
        if kind == "null":
            return None
        if kind == "bool":
            return rng.random() < 0.5
        if kind == "list":
            return [self.tree(depth + 1) for _ in range(rng.randint(0, 3))]
        keys = ["choices", "usage", "message", "content", "error", "x"]
        return {rng.choice(keys): self.tree(depth + 1) for _ in range(rng.randint(0, 4))}

    def completion(self) -> Any:
        pairs = {"pairs": [{"question": "What does charging cost per kWh here?", "answer": "It costs $0.30 per kWh."}]}
        message = {"role": "assistant", "content": json.dumps(pairs)}
        body: Any = {
            "id": "c",
            "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5},
        }
        if self.rng.random() < 0.5:
            target = self.rng.choice(["choices", "usage", "message", "content", "finish", "whole"])
            if target in ("choices", "usage"):
                body[target] = self.tree()
            elif target == "message":
                body["choices"][0]["message"] = self.tree()
            elif target == "content":
                message["content"] = self.tree()
            elif target == "finish":
                body["choices"][0]["finish_reason"] = self.tree()
            else:
                body = self.tree()
        return body

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hostile = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with hostile.lock:
                    rng = hostile.rng
                    status, content_type = rng.choice(STATUSES), rng.choice(CONTENT_TYPES)
                    raw = json.dumps(hostile.completion(), allow_nan=True).encode()
                    if rng.random() < 0.1:
                        raw = raw[: rng.randint(0, len(raw))]
                    if rng.random() < 0.05:
                        raw = rng.randbytes(rng.randint(0, 300))
                    retry_after = rng.choice(RETRY_AFTER) if status == 429 and rng.random() < 0.5 else None
                self.send_response(status)
                if content_type:
                    self.send_header("Content-Type", content_type)
                if retry_after:
                    self.send_header("Retry-After", retry_after)
                if status != 204:
                    self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                if status != 204:
                    self.wfile.write(raw)

        return Handler
