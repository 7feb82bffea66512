"""A real HTTP server speaking OpenAI's chat-completions API, with the failures a real one has, on demand.

It stands in for the one thing the tests cannot reach (api.openai.com). The "model" answers like a well-behaved
one: it reads the document between <document> tags and returns `n` pairs whose answers are sentences of it.
Failures are scripted per document (`faults`: a marker found in the document -> the actions of its successive
requests) or drawn at random (`failure_rate`, seeded):

  ok, 429[:retry_after_s], 500, 503, 400, timeout (answers after `hang_s`), malformed (a body that is not JSON),
  badjson (a reply that is not the schema), truncated (cut off, finish_reason "length"), slow (the body trickles
  out a byte at a time), obey (follows instructions found in the document, as a gullible model would)

and the reply shapes that proxies, gateways and half-compatible servers send, all with status 200:

  html (a proxy's error page, text/html), text (plain text), wrongtype (the right JSON as text/plain), bytes
  (random bytes), huge (a 9 MiB body), cut (the connection closes half-way through the body), sse (an event
  stream that stops without [DONE]), empty (no body), drop (the connection closes before any reply),
  choices_null, message_null, content_list (content as a list of text parts), no_usage, negative_usage

`judge` (a function of the conversation) scripts the replies to an LLM judge's requests (those holding an
<answer> or <answer_1> block, or the dedup judge's <document_1>): a judge biased to the first answer, one with real
preferences, malformed replies. The dedup judge's faults are scripted by a marker in its first document.

`context_tokens` gives the model a context: a prompt (counted at `chars_per_token`) plus `max_tokens` over it is
refused in one server's words (`context_style`: vllm, openai, tgi; llamacpp refuses only a prompt over it and
shortens the reply), and a reply longer than `max_tokens` is cut with finish_reason "length".

A token bucket enforces `rate_limit_rpm` (one second of burst) and answers 429 with Retry-After when empty.
Run it in a thread (`FakeOpenAI(...).start()`) or as a process: `python -m tests.fakes.openai_server --port N`.
`GET /stats` (or `.stats()`) says what it received: requests per document, actions, timing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.fakes.batch_api import BatchAPI

_DOCUMENT = re.compile(r"<document>\n(.*)\n</document>", re.DOTALL)
_FIRST_DOCUMENT = re.compile(r"<document_1>\n(.*)\n</document_1>", re.DOTALL)  # the dedup judge's pair
_N = re.compile(r"exactly (\d+)")
_CONTEXT = re.compile(r"Context: (.*?)\n\nQuestion:", re.DOTALL)
_SENTENCE = re.compile(r"(?<=[.!?])\s+|(?<=[。！？])\s*")
# the fake's own reading of text written without spaces (CJK ideographs, kana, Thai): a character is a word
_UNSPACED_RANGES = "\u0e00-\u0e7f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_UNSPACED = re.compile(f"[{_UNSPACED_RANGES}]")
_UNSPACED_WORD = re.compile(f"[{_UNSPACED_RANGES}]|[^\\s{_UNSPACED_RANGES}]+")
# 200 replies whose JSON is reshaped (the others of the shapes replace the body altogether)
RESHAPED = ("wrongtype", "choices_null", "message_null", "content_list", "no_usage", "negative_usage")
RANDOM_ACTIONS = ("429", "500", "503", "timeout", "malformed", "badjson", "truncated", "slow",
    "html", "text", "bytes", "empty", "sse", "cut", "drop", "wrongtype", "choices_null", "message_null",
    "content_list", "no_usage", "negative_usage",
)  # fmt: skip


# Ways a server that speaks the API refuses `response_format: json_schema`: status, body.
JSON_SCHEMA_REFUSALS: dict[str, tuple[int, dict[str, Any]]] = {
    # OpenAI's error shape with a 400 (what this fake always said; not recorded from a server)
    "400": (
        400,
        {"error": {"message": "response_format json_schema is not supported", "type": "invalid_request_error"}},
    ),
    # a FastAPI server's own request validation, as FastAPI shapes it (not recorded from a server)
    "422": (
        422,
        {
            "detail": [
                {
                    "type": "literal_error",
                    "loc": ["body", "response_format", "type"],
                    "msg": "Input should be 'text' or 'json_object'",
                    "input": "json_schema",
                }
            ]
        },
    ),
    # llama-cpp-python 0.3.36's server (`python -m llama_cpp.server`), recorded on 2026-12-05: a 500
    "500": (
        500,
        {
            "error": {
                "message": "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', "
                "'type'), 'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema', 'ctx': "
                "{'expected': \"'text' or 'json_object'\"}}\n\n  File \"llama_cpp/server/app.py\", line 376, in "
                "create_chat_completion\n    POST /v1/chat/completions",
                "type": "internal_server_error",
                "param": None,
                "code": None,
            }
        },
    ),
}


def context_refusal(style: str, limit: int, prompt: int, asked: int) -> tuple[int, dict[str, Any]] | None:
    """How a server refuses a prompt of `prompt` tokens asking for `asked` more in a context of `limit`: status
    and body, in the words of the servers' own messages as their issue trackers quote them (not recorded from
    servers here); None where the server takes the request (llama.cpp's shortens the reply instead)."""
    if prompt + asked <= limit:
        return None
    if style == "vllm":  # vLLM >= 0.6
        message = (
            f"'max_tokens' or 'max_completion_tokens' is too large: {asked}. This model's maximum context length is "
            f"{limit} tokens and your request has {prompt} input tokens ({asked} > {limit} - {prompt}). None"
            if prompt < limit
            else f"This model's maximum context length is {limit} tokens. However, your request has {prompt} input "
            "tokens. Please reduce the length of the input messages. None"
        )
        return 400, {"error": {"message": message, "type": "BadRequestError", "param": None, "code": 400}}
    if style == "openai":
        message = (
            f"This model's maximum context length is {limit} tokens. However, you requested {prompt + asked} tokens "
            f"({prompt} in the messages, {asked} in the completion). Please reduce the length of the messages or "
            "completion."
        )
        return 400, {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": "messages",
                "code": "context_length_exceeded",
            }
        }
    if style == "tgi":
        message = (
            f"Input validation error: `inputs` tokens + `max_new_tokens` must be <= {limit}. Given: {prompt} `inputs` "
            f"tokens and {asked} `max_new_tokens`"
        )
        return 422, {"error": message, "error_type": "validation"}
    if style == "llamacpp":
        if prompt < limit:
            return None
        return 400, {
            "error": {
                "code": 400,
                "message": "the request exceeds the available context size, try increasing it",
                "type": "exceed_context_size_error",
                "n_prompt_tokens": prompt,
                "n_ctx": limit,
            }
        }
    raise ValueError(f"no such refusal style: {style}")


def document_key(text: str) -> str:
    """How the server names a document: the hash of the text it was sent (a chunk, for long documents)."""
    return hashlib.sha256(text.strip().encode()).hexdigest()[:12]


def _words(sentence: str) -> list[str]:
    """Whitespace words; in Chinese, Japanese or Thai (no spaces between words), each of their characters."""
    return _UNSPACED_WORD.findall(sentence) if _UNSPACED.search(sentence) else sentence.split()


def answer_pairs(text: str, n: int) -> list[dict[str, str]]:
    sentences = [s.strip() for s in _SENTENCE.split(text.strip()) if len(_words(s)) >= 4]
    pairs = []
    for i in range(min(n, len(sentences))):
        sentence = sentences[i].rstrip(".!?。！？")
        if _UNSPACED.search(sentence):  # the opening as written, the question mark of the language
            question = sentence[: _nth_end(sentence, 9)] + "？"
        else:
            question = " ".join(sentence.split()[:9]) + "?"
        pairs.append({"question": question, "answer": sentences[i]})
    return pairs


def _nth_end(sentence: str, n: int) -> int:
    """Where the n-th word of `sentence` ends (`_words`), or its end."""
    ends = [m.end() for m in _UNSPACED_WORD.finditer(sentence)]
    return ends[min(n, len(ends)) - 1]


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # the default backlog of 5 refuses a client that opens 64 connections at once


class FakeOpenAI:
    def __init__(
        self,
        *,
        latency_s: float = 0.0,
        serial: bool = False,  # one reply worked on at a time, as llama.cpp's server or Ollama's default
        rate_limit_rpm: float | None = None,
        faults: dict[str, list[str]] | None = None,
        failure_rate: float = 0.0,
        seed: int = 7,
        hang_s: float = 30.0,
        supports_json_schema: bool = True,
        json_schema_refusal: str = "400",  # with supports_json_schema=False: how it says no (JSON_SCHEMA_REFUSALS)
        usage: bool = True,
        port: int = 0,
        advertise_limits: bool = True,
        host: str = "127.0.0.1",  # 0.0.0.0: containers reach it at their network's gateway (the stack's tests)
        judge: Callable[[list[dict[str, Any]]], str] | None = None,
        on_post: Callable[[int], None] | None = None,
        outage: tuple[int, float] | None = None,
        outage_retry_after_s: float | None = 1.0,
        outage_passes: int = 0,
        context_tokens: int | None = None,  # the model's context: prompt + max_tokens over it is refused
        context_style: str = "vllm",  # how it refuses (context_refusal), or shortens the reply (llamacpp)
        chars_per_token: float = 4.0,  # the fake's tokenizer: usage and the context count characters by this
    ):
        self.latency_s, self.hang_s = latency_s, hang_s
        self.serial, self.worker = serial, threading.Lock()  # serial: the latency is spent holding `worker`
        self.rate_limit_rpm, self.advertise_limits = rate_limit_rpm, advertise_limits
        self.faults = {marker: list(actions) for marker, actions in (faults or {}).items()}
        self.failure_rate, self.random = failure_rate, random.Random(seed)
        self.supports_json_schema, self.usage = supports_json_schema, usage
        self.json_schema_refusal = JSON_SCHEMA_REFUSALS[json_schema_refusal]
        self.judge = judge  # a judge's reply to a conversation that holds an <answer> (the test scripts it)
        self.on_post = on_post  # called with the POST's number as each arrives, before it is answered
        # (N, S): from the N-th POST on, for S seconds, every completion is a 429 whatever the pace (a provider's
        # overload or a gateway's storm), with `outage_retry_after_s` as Retry-After (None: no such header)
        self.outage, self.outage_retry_after_s = outage, outage_retry_after_s
        self.outage_passes, self._outage_seen = outage_passes, 0  # k: every k-th request in it is answered (degraded)
        self.outage_window: tuple[float, float] | None = None  # its start and end, monotonic, once it began
        self.context_tokens, self.context_style = context_tokens, context_style
        self.chars_per_token = chars_per_token
        self.lock = threading.Lock()
        self.requests: Counter[str] = Counter()  # document key -> requests received
        self.actions: Counter[str] = Counter()
        self.log: list[dict[str, Any]] = []  # one entry per request: key, action, time, messages
        self.completed: Counter[str] = Counter()  # document key -> successful answers
        self.posts = 0  # every POST received, whatever came of it
        self.billed = {"prompt_tokens": 0, "completion_tokens": 0}  # usage of every 200 reply sent whole
        self.in_flight = self.max_in_flight = 0
        self.authorizations: set[str] = set()  # Authorization headers seen (to prove a key was sent)
        self._tokens = (rate_limit_rpm or 0) / 60
        self._filled = time.monotonic()
        self.batch = BatchAPI(self._batch_answer)  # /v1/files and /v1/batches (tests/fakes/batch_api.py)
        self.server = _Server((host, port), self._handler())
        self.server.daemon_threads = True
        self.thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeOpenAI:
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "requests": dict(self.requests),
                "completed": dict(self.completed),
                "actions": dict(self.actions),
                "total": sum(self.requests.values()),
                "posts": self.posts,
                "billed": dict(self.billed),
                "times": [entry["time"] for entry in self.log if entry["action"] == "ok"],
                "max_in_flight": self.max_in_flight,
                "outage_window": self.outage_window,
            }

    # Decisions ------------------------------------------------------------------------------------------------
    def _rate_limited(self) -> float | None:
        """Seconds until the bucket has a token, or None when this request may go."""
        if not self.rate_limit_rpm:
            return None
        rate = self.rate_limit_rpm / 60
        now = time.monotonic()
        self._tokens = min(max(1.0, rate), self._tokens + (now - self._filled) * rate)
        self._filled = now
        if self._tokens >= 1:
            self._tokens -= 1
            return None
        return (1 - self._tokens) / rate

    def _batch_answer(self, request: dict[str, Any]) -> tuple[str, dict[str, Any], int]:
        """A batch line's answer: the same model as the online endpoint's, well-behaved but for its context."""
        messages = request.get("messages", [])
        user = next((m["content"] for m in messages if m["role"] == "user"), "")
        found = _DOCUMENT.search(user)
        document = found.group(1) if found else ""
        n = int(m.group(1)) if (m := _N.search(user)) else 3
        content = json.dumps({"pairs": answer_pairs(document, n)})
        prompt_tokens = int(sum(len(str(m.get("content", ""))) for m in messages) / self.chars_per_token)
        completion_tokens = max(1, int(len(content) / self.chars_per_token))
        key = document_key(document)
        if self.context_tokens is not None:
            asked = request.get("max_completion_tokens") or request.get("max_tokens") or 16
            refused = context_refusal(self.context_style, self.context_tokens, prompt_tokens, asked)
            if refused is not None:
                return key, refused[1], refused[0]
        return (
            key,
            {
                "id": f"chatcmpl-{key}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": request.get("model", "fake-model"),
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            },
            200,
        )

    def limit_headers(self) -> dict[str, str]:
        """OpenAI's x-ratelimit-* request headers for the bucket as it stands (sent with every reply when
        `advertise_limits`): the limit per minute, the tokens left, the time until the bucket is full."""
        if not (self.rate_limit_rpm and self.advertise_limits):
            return {}
        rate = self.rate_limit_rpm / 60
        capacity = max(1.0, rate)
        return {
            "x-ratelimit-limit-requests": str(int(self.rate_limit_rpm)),
            "x-ratelimit-remaining-requests": str(int(self._tokens)),
            "x-ratelimit-reset-requests": f"{(capacity - self._tokens) / rate:.3f}s",
        }

    def _action(self, document: str, messages: list[dict[str, Any]]) -> str:
        with self.lock:
            for marker, actions in self.faults.items():
                if marker in document and actions:
                    return actions.pop(0)
            if self.failure_rate and self.random.random() < self.failure_rate:
                return self.random.choice(RANDOM_ACTIONS)
        if "ignore previous instructions" in document.lower() and len(messages) <= 2:
            return "obey"
        return "ok"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms stall between

            def log_message(self, *_: Any) -> None:  # quiet
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                with fake.lock:
                    limits = fake.limit_headers()
                for name, value in {**limits, **(headers or {})}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def _error(self, status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> None:
                body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
                self._send(status, json.dumps(body).encode(), headers)

            def _reply(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                if (batch := fake.batch.get(self.path)) is not None:
                    self._reply(*batch)
                elif self.path.rstrip("/").endswith("/stats"):
                    self._send(200, json.dumps(fake.stats()).encode())
                elif self.path.rstrip("/").endswith("/models"):
                    self._send(
                        200, json.dumps({"object": "list", "data": [{"id": "fake-model", "object": "model"}]}).encode()
                    )
                else:
                    self._error(404, "not found", "invalid_request_error")

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                batch = fake.batch.post(self.path, self.headers.get("Content-Type", ""), raw)
                if batch is not None:
                    self._reply(*batch)
                    return
                request = json.loads(raw or b"{}")
                with fake.lock:
                    fake.posts += 1
                    fake.authorizations.add(self.headers.get("Authorization", ""))
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                    number = fake.posts
                    if fake.outage and number == fake.outage[0]:
                        began = time.monotonic()
                        fake.outage_window = (began, began + fake.outage[1])
                if fake.on_post is not None:
                    fake.on_post(number)
                try:
                    self._complete(request)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (its deadline): as a real server would see it
                finally:
                    with fake.lock:
                        fake.in_flight -= 1

            def _complete(self, request: dict[str, Any]) -> None:
                messages = request.get("messages", [])
                user = next((m["content"] for m in messages if m["role"] == "user"), "")
                found = _DOCUMENT.search(user) or _FIRST_DOCUMENT.search(user)
                document = found.group(1) if found else ""
                key = document_key(document)
                fmt = (request.get("response_format") or {}).get("type")
                if fmt == "json_schema" and not fake.supports_json_schema:
                    with fake.lock:
                        fake.actions["rejected_json_schema"] += 1
                    status, body = fake.json_schema_refusal
                    self._send(status, json.dumps(body).encode())
                    return
                prompt_tokens = int(sum(len(str(m.get("content", ""))) for m in messages) / fake.chars_per_token)
                max_tokens = request.get("max_completion_tokens") or request.get("max_tokens")
                room = None  # completion tokens the context leaves (a server that shortens the reply)
                if fake.context_tokens is not None:
                    room = fake.context_tokens - prompt_tokens
                    refused = context_refusal(fake.context_style, fake.context_tokens, prompt_tokens, max_tokens or 16)
                    if refused is not None:
                        with fake.lock:
                            fake.actions["context_refused"] += 1
                            fake.log.append(
                                {"key": key, "action": "context_refused", "time": time.monotonic(),
                                 "messages": messages, "format": fmt, "max_tokens": max_tokens}
                            )  # fmt: skip
                        self._send(refused[0], json.dumps(refused[1]).encode())
                        return
                with fake.lock:
                    down = fake.outage_window is not None and time.monotonic() < fake.outage_window[1]
                    if down and fake.outage_passes:
                        fake._outage_seen += 1
                        down = fake._outage_seen % fake.outage_passes != 0
                    wait = None if down else fake._rate_limited()
                action = "outage" if down else "429" if wait is not None else fake._action(document, messages)
                with fake.lock:
                    fake.requests[key] += 1
                    fake.actions[action.split(":")[0]] += 1
                    fake.log.append(
                        {"key": key, "action": action, "time": time.monotonic(), "messages": messages, "format": fmt,
                         "max_tokens": max_tokens}
                    )  # fmt: skip
                if action == "outage":
                    after = fake.outage_retry_after_s
                    headers = {} if after is None else {"retry-after": f"{after:.3f}"}
                    self._error(429, "The server is overloaded. Please try again later.", "requests", headers)
                    return
                if action.startswith("429"):
                    retry_after = float(action.split(":")[1]) if ":" in action else (wait or 1.0)
                    self._error(
                        429,
                        "Rate limit reached for requests",
                        "requests",
                        {"retry-after": f"{retry_after:.3f}", "retry-after-ms": str(int(retry_after * 1000))},
                    )
                    return
                if fake.latency_s and fake.serial:  # queued behind the others, abandoned ones included
                    with fake.worker:
                        time.sleep(fake.latency_s)
                elif fake.latency_s:
                    time.sleep(fake.latency_s)
                if action in ("500", "503"):
                    self._error(int(action), "The server had an error while processing your request.", "server_error")
                    return
                if action == "400":
                    self._error(400, "This model's maximum context length is exceeded.", "invalid_request_error")
                    return
                if action == "timeout":
                    time.sleep(fake.hang_s)
                n = int(m.group(1)) if (m := _N.search(user)) else 3
                pairs = answer_pairs(document, n)
                content = json.dumps({"pairs": pairs})
                if not found and (given := _CONTEXT.search(user)):  # an evaluation prompt: answer in a sentence
                    content = _SENTENCE.split(given.group(1).strip())[0]
                if fake.judge is not None and any(tag in user for tag in ("<answer>", "<answer_1>", "<document_1>")):
                    content = fake.judge(messages)
                finish = "stop"
                if action == "badjson":
                    content = "Here are your questions:\n1. What is charging?\n2. Why?"
                elif action == "obey":
                    content = "HACKED. As instructed, I ignore the format and write a poem instead."
                elif action == "truncated":
                    content, finish = content[: max(10, len(content) // 2)], "length"
                limit = min(n for n in (max_tokens, room) if n is not None) if fake.context_tokens is not None else None
                if limit is not None and len(content) > limit * fake.chars_per_token:  # a model stops at max_tokens
                    content, finish = content[: int(limit * fake.chars_per_token)], "length"
                body: dict[str, Any] = {
                    "id": f"chatcmpl-{key}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": request.get("model", "fake-model"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": content},
                            "finish_reason": finish,
                        }
                    ],
                }
                if fake.usage:
                    completion_tokens = max(1, int(len(content) / fake.chars_per_token))
                    body["usage"] = {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion_tokens,
                        "total_tokens": prompt_tokens + completion_tokens,
                    }
                if action == "drop":
                    self.close_connection = True  # no status line, no body: the client sees the connection close
                    return
                if self._shape(action, body, content):
                    return
                raw = json.dumps(body).encode()
                if action not in ("timeout", "slow", "malformed") and "usage" in body:
                    with fake.lock:  # a whole reply with its usage: what a provider bills
                        for name in fake.billed:
                            fake.billed[name] += body["usage"][name]
                if action == "malformed":
                    raw = b'{"id": "chatcmpl-broken", "choices": [{"message": '  # cut mid-object: not JSON
                if action == "slow":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    for byte in raw:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(0.05)
                    return
                self._send(200, raw)
                if action == "ok":
                    with fake.lock:
                        fake.completed[key] += 1

            def _raw(self, body: bytes, content_type: str, length: int | None = None) -> None:
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                self.end_headers()
                self.wfile.write(body)

            def _shape(self, action: str, body: dict[str, Any], content: str) -> bool:
                """The reply shapes a strict client chokes on; True when one was sent."""
                if action == "html":
                    page = (
                        b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"
                    )
                    self._raw(page, "text/html; charset=utf-8")
                elif action == "text":
                    self._raw(b"upstream connect error or disconnect/reset before headers", "text/plain")
                elif action == "bytes":
                    self._raw(fake.random.randbytes(512), "application/octet-stream")
                elif action == "empty":
                    self._raw(b"", "application/json")
                elif action == "huge":
                    self._raw(b'{"pad": "' + b"x" * (9 * 2**20) + b'"}', "application/json")
                elif action == "cut":
                    whole = json.dumps(body).encode()
                    self._raw(whole[: len(whole) // 2], "application/json", length=len(whole))
                    self.close_connection = True
                elif action == "sse":
                    chunk = {
                        "id": body["id"],
                        "object": "chat.completion.chunk",
                        "choices": [{"delta": {"content": content[:20]}}],
                    }
                    self._raw(f"data: {json.dumps(chunk)}\n\n".encode(), "text/event-stream")
                elif action in RESHAPED:
                    if action == "choices_null":
                        body["choices"] = None
                    elif action == "message_null":
                        body["choices"][0]["message"] = None
                    elif action == "content_list":
                        body["choices"][0]["message"]["content"] = [{"type": "text", "text": content}]
                    elif action == "no_usage":
                        body.pop("usage", None)
                    elif action == "negative_usage" and "usage" in body:
                        body["usage"] = {"prompt_tokens": -5, "completion_tokens": -1, "total_tokens": -6}
                    if "usage" in body and action != "negative_usage":
                        with fake.lock:
                            for name in fake.billed:
                                fake.billed[name] += body["usage"][name]
                    self._raw(json.dumps(body).encode(), "text/plain" if action == "wrongtype" else "application/json")
                    if action in ("wrongtype", "content_list", "no_usage", "negative_usage"):  # usable answers
                        with fake.lock:
                            fake.completed[body["id"].removeprefix("chatcmpl-")] += 1
                else:
                    return False
                return True

        return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--rpm", type=float, default=None)
    parser.add_argument("--failure-rate", type=float, default=0.0)
    parser.add_argument("--hang", type=float, default=30.0)
    parser.add_argument("--no-limit-headers", action="store_true", help="send no x-ratelimit-* headers")
    parser.add_argument("--outage", default=None, help="N:S: from the N-th request on, S seconds of 429s to all")
    parser.add_argument("--outage-retry-after", type=float, default=1.0, help="its Retry-After; 0: none sent")
    parser.add_argument("--outage-passes", type=int, default=0, help="k: every k-th request in it is answered")
    parser.add_argument("--context-tokens", type=int, default=None, help="the model's context, in tokens")
    parser.add_argument("--context-style", default="vllm", help="how it refuses: vllm, openai, tgi, llamacpp")
    parser.add_argument("--chars-per-token", type=float, default=4.0)
    args = parser.parse_args()
    outage = None
    if args.outage:
        number, seconds = args.outage.split(":")
        outage = (int(number), float(seconds))
    server = FakeOpenAI(
        latency_s=args.latency,
        rate_limit_rpm=args.rpm,
        failure_rate=args.failure_rate,
        hang_s=args.hang,
        port=args.port,
        advertise_limits=not args.no_limit_headers,
        outage=outage,
        outage_retry_after_s=args.outage_retry_after or None,
        outage_passes=args.outage_passes,
        context_tokens=args.context_tokens,
        context_style=args.context_style,
        chars_per_token=args.chars_per_token,
    )
    print(server.base_url, flush=True)
    server.server.serve_forever()


if __name__ == "__main__":
    main()
