"""The `openai` QA backend: the official async SDK against OpenAI or any OpenAI-compatible server.

Concurrency is a limit (qa/inflight.py: `qa.concurrency`, one at a time while requests time out) whose slot a request
holds from before it is sent until the caller has settled its outcome (journaled it): a kill at any moment finds at
most `concurrency` requests answered and not on disk, so it re-pays at most that many. The request rate is one
adaptive controller shared by every request in flight
(qa/rate.py: the server's rate-limit headers and 429s slow it, successes speed it up again); tokens go through
aiolimiter's leaky bucket (one minute, as providers meter them). The SDK's own retries are off
(max_retries=0): the project's policy table is the only retry layer, so tries can be counted and logged by
class. A whole request, body included, has a deadline, which catches servers that stream a reply too slowly.
The response format starts at what config asks for and steps down (json_schema -> json_object -> text) the
first time the server rejects it, for the rest of the run. Likewise the reply's `max_tokens`: a server that refuses
a request for the model's context states its limits, and the request is sent again asking for what fits, as every
later one does (qa/context.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import openai
from aiolimiter import AsyncLimiter

from llm_pipeline.config import QAConfig
from llm_pipeline.errors import (
    ConfigError,
    RateLimitedError,
    RequestRejectedError,
    ServiceUnavailableError,
)
from llm_pipeline.logging import get_logger
from llm_pipeline.qa.backends import QA_BACKENDS, Completion, Job, estimate_tokens
from llm_pipeline.qa.budget import worst_case
from llm_pipeline.qa.checkpoint import Usage
from llm_pipeline.qa.context import (
    MIN_REPLY_TOKENS,
    QA_REMEDY,
    ContextRefusal,
    ContextTooSmall,
    ContextWindow,
    read_refusal,
)
from llm_pipeline.qa.inflight import InFlightLimit
from llm_pipeline.qa.policy import RequestPolicy
from llm_pipeline.qa.rate import RateController
from llm_pipeline.qa.schema import response_format

log = get_logger("qa.openai")

DEFAULT_MODEL = "gpt-4o-mini"
MAX_REPLY_BYTES = 8 * 2**20  # a chat completion is kilobytes; past this the body is not read further
_FORMATS = ("json_schema", "json_object", "text")


def _retry_after(headers: httpx.Headers) -> float | None:
    if "retry-after-ms" in headers:
        try:
            return float(headers["retry-after-ms"]) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


_DROPPED = {
    "ServerDisconnectedError",
    "RemoteProtocolError",
    "ClientPayloadError",
    "ContentLengthError",
    "TransferEncodingError",
    "ConnectionResetError",
    "BrokenPipeError",
    "ReadError",
}
_REFUSED = {"ClientConnectorError", "ConnectError", "ConnectionRefusedError", "ClientConnectorDNSError"}


def _causes(error: BaseException) -> list[str]:
    """The names of the exception and of what caused it, outermost first (the SDK wraps httpx and aiohttp)."""
    names, seen = [], set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        names.append(type(current).__name__)
        current = current.__cause__ or current.__context__
    return names


def classify(error: BaseException) -> BaseException:
    """The SDK's exceptions (and anything else a client can raise) mapped onto the project's classes, which the
    policy table knows, each transient one with its cause. Nothing leaves here unclassified: an exception no one
    foresaw is logged with its type and retried as transient."""
    if isinstance(error, RateLimitedError | ServiceUnavailableError | RequestRejectedError | ConfigError):
        return error
    if isinstance(error, openai.RateLimitError):
        return RateLimitedError(f"429 rate limited: {error.message}", _retry_after(error.response.headers))
    if isinstance(error, openai.AuthenticationError | openai.PermissionDeniedError):
        return ConfigError([("OPENAI_API_KEY", f"rejected by the server ({error.status_code})")])
    if isinstance(error, openai.APIStatusError):
        if error.status_code in (408, 409) or error.status_code >= 500:
            return ServiceUnavailableError(f"{error.status_code} from the server: {error.message}", "server_error")
        return RequestRejectedError(f"{error.status_code} request rejected: {error.message}")
    causes = _causes(error)
    # by the innermost cause: httpx-aiohttp reports a server that hung up as a ConnectTimeout
    if any(name in _DROPPED for name in causes):
        return ServiceUnavailableError(f"connection dropped: {' <- '.join(causes)}", "connection_dropped")
    if any(name in _REFUSED for name in causes):
        return ServiceUnavailableError(f"connection failed: {' <- '.join(causes)}", "connect_failed")
    if causes[-1] in ("ConnectTimeout", "ConnectionTimeoutError", "ServerTimeoutError") and "Read" not in causes[-1]:
        return ServiceUnavailableError("connect timed out", "connect_timeout")
    if isinstance(error, openai.APITimeoutError | TimeoutError) or any("Timeout" in name for name in causes):
        return ServiceUnavailableError("no complete reply within the deadline", "read_timeout")
    if isinstance(error, openai.APIConnectionError | httpx.TransportError | OSError):
        return ServiceUnavailableError(f"connection dropped: {' <- '.join(causes)}", "connection_dropped")
    if isinstance(error, openai.APIResponseValidationError | ValueError | UnicodeDecodeError):
        return ServiceUnavailableError(f"unreadable reply: {type(error).__name__}: {error}"[:300], "malformed_reply")
    log.warning("qa_unexpected_client_error", error_type=" <- ".join(causes), error=str(error)[:300])
    return ServiceUnavailableError(f"unexpected {type(error).__name__}: {error}"[:300], "unexpected")


def format_rejected(error: openai.APIStatusError) -> bool:
    """The server refused the request's `response_format`: vLLM answers 400, FastAPI-based servers 422, and
    llama-cpp-python's server 500 with its validation error ("Input should be 'text' or 'json_object'")."""
    return error.status_code in (400, 422, 500) and "response_format" in str(error.message)


def outcome_label(error: BaseException) -> str:
    if isinstance(error, RateLimitedError):
        return "rate_limited"
    if isinstance(error, ServiceUnavailableError):
        return error.cause
    if isinstance(error, RequestRejectedError):
        return "rejected"
    return type(error).__name__


def _usage(raw: Any) -> Usage | None:
    """The reply's usage when it is whole and sane; None when missing or nonsense (negative, not numbers)."""
    if not isinstance(raw, dict):
        return None
    prompt, completion = raw.get("prompt_tokens"), raw.get("completion_tokens")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (prompt, completion)):
        return None
    return Usage(prompt_tokens=prompt, completion_tokens=completion)


def _text(content: Any) -> str:
    """A message's content: a string, or a list of parts (`{"type": "text", "text": ...}`), or nothing."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", "")) if isinstance(part, dict) else str(part) for part in content if part is not None
        )
    return str(content)


def read_reply(body: bytes, content_type: str) -> tuple[str, str | None, Usage | None]:
    """A chat-completions reply read by hand, any shape it comes in: (text, finish_reason, usage). A body that is
    not a JSON object with a choice raises ServiceUnavailableError("malformed_reply"), carrying its usage if it
    had any; a choice whose content is missing reads as empty text (the format check then sends it back)."""
    preview = body[:160].decode("utf-8", "replace")
    try:
        data = json.loads(body)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError both
        raise ServiceUnavailableError(
            f"the reply is not JSON ({content_type or 'no content type'}, {len(body)} bytes): {preview!r}",
            "malformed_reply",
        ) from None
    if not isinstance(data, dict):
        raise ServiceUnavailableError(f"the reply is JSON but not an object: {preview!r}", "malformed_reply")
    usage = _usage(data.get("usage"))
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        why = data.get("error") or f"choices: {str(choices)[:80]}"
        raise ServiceUnavailableError(f"the reply has no choices ({why})"[:300], "malformed_reply", usage)
    choice = choices[0]
    message = choice.get("message")
    text = _text(message.get("content") if isinstance(message, dict) else None)
    finish = choice.get("finish_reason")
    return text, finish if isinstance(finish, str) else None, usage


@QA_BACKENDS.register("openai")
class OpenAIBackend:
    name = "openai"
    records_sends = True  # writes each HTTP request to the job's ledger itself (retries and failures included)

    def __init__(
        self,
        config: QAConfig,
        api_key: str | None,
        *,
        least_reply_tokens: int = MIN_REPLY_TOKENS,
        too_long: str = QA_REMEDY,
    ):
        """`least_reply_tokens`: the smallest reply worth asking for where a model's context is small (a QA
        reply's JSON, 128 tokens; an evaluation answer, a few); `too_long`: what to change when a prompt leaves
        less (qa/context.py)."""
        self.config = config
        self.model = config.model_name or DEFAULT_MODEL
        self.client = openai.AsyncOpenAI(
            api_key=api_key or "not-needed",  # OpenAI-compatible servers often need none
            base_url=config.base_url,
            max_retries=0,
            timeout=httpx.Timeout(config.request_timeout_s, connect=min(10.0, config.request_timeout_s)),
            # aiohttp underneath: httpx's own pool spends O(connections x queued requests) of CPU per event, which
            # capped a 2-core client at ~45 requests/s with 64 in flight (docs/benchmarks.md).
            http_client=openai.DefaultAioHttpClient(
                limits=httpx.Limits(max_connections=config.concurrency, max_keepalive_connections=config.concurrency),
                timeout=config.request_timeout_s,
            ),
        )
        self.in_flight = InFlightLimit(config.concurrency)  # fewer while the server cannot keep up (qa/inflight.py)
        self._unsettled: set[int] = set()  # id() of the jobs answered whose slot waits for their outcome to settle
        self.rate = RateController(config.requests_per_minute)  # one for all requests in flight (qa/rate.py)
        self.tokens = AsyncLimiter(config.tokens_per_minute, 60) if config.tokens_per_minute else None
        self.format_index = 0 if config.response_format == "auto" else _FORMATS.index(config.response_format)
        self.window = ContextWindow(config.max_tokens, least_reply_tokens, too_long)  # until a server says less

    async def aclose(self) -> None:
        await self.client.close()

    async def _send(self, job: Job) -> Completion:
        """One HTTP request, within the limits and the deadline; its outcome goes into the ledger as it returns,
        and errors come back classified."""
        prompt = "".join(m["content"] for m in job.messages)
        sent_in_round = await self.in_flight.acquire()
        try:
            # the run's cap: this request's worst case is held while it is in flight (BudgetReachedError: not sent)
            held = job.budget.reserve(worst_case(job.messages, self.config.max_tokens)) if job.budget else None
            billed: Usage | None = None
            try:
                completion = await self._request(job, prompt, sent_in_round)
                billed = completion.usage
            except ServiceUnavailableError as error:
                billed = error.usage
                raise
            finally:
                if held is not None:
                    job.budget.settle(held, billed)
        except BaseException:
            self.in_flight.release()  # nothing to journal: the slot is free for the next request (or this one's retry)
            raise
        self._unsettled.add(id(job))  # answered: the slot is kept until the caller has settled it (complete_many)
        return completion

    def _settled(self, job: Job) -> None:
        """The job's outcome is settled (journaled, or it failed): its slot, if it still holds one, is free."""
        if id(job) in self._unsettled:
            self._unsettled.discard(id(job))
            self.in_flight.release()

    async def _request(self, job: Job, prompt: str, sent_in_round: int) -> Completion:
        """One HTTP request within the rate and the deadline; its outcome goes into the ledger as it returns."""
        sent = await self.rate.acquire()
        estimate = estimate_tokens(prompt)
        asked = self.window.completion_tokens(estimate)
        if self.tokens:
            await self.tokens.acquire(min(self.tokens.max_rate, estimate + asked))
        while True:  # steps down the response format or max_tokens when the server refuses them; not a retry
            kind = _FORMATS[self.format_index]
            started = time.perf_counter()
            try:
                try:
                    async with asyncio.timeout(self.config.request_timeout_s):
                        body, content_type, headers = await self._post(job, kind, asked)
                finally:
                    self.rate.returned()
                self.rate.observe(headers)
                text, finish, usage = read_reply(body, content_type)
                break
            except openai.APIStatusError as exc:
                refusal = read_refusal(str(exc.message), exc.body) if exc.status_code in (400, 413, 422) else None
                if refusal is not None:
                    asked = self._fit(job, exc, refusal, estimate, asked, sent_in_round)
                    continue
                if kind == "text" or not format_rejected(exc):
                    raise self._failed(job, exc, sent_in_round) from exc
                job.sent("rejected")
                if _FORMATS[self.format_index] == kind:  # another request may have stepped down already
                    self.format_index += 1
                    log.warning(
                        "response_format_unsupported",
                        rejected=kind,
                        status=exc.status_code,
                        now=_FORMATS[self.format_index],
                    )
            except Exception as exc:  # every failure is classified for the policy: none crashes the stage
                error = self._failed(job, exc, sent_in_round)
                if error is exc:
                    raise
                raise error from exc
        latency = time.perf_counter() - started
        if usage is None:
            usage = Usage(
                prompt_tokens=estimate_tokens(prompt), completion_tokens=estimate_tokens(text), estimated=True
            )
        job.sent("ok", usage)
        self.rate.succeeded(sent)
        self.in_flight.succeeded(sent_in_round)
        return Completion(text=text, finish_reason=finish, usage=usage, latency_s=latency)

    def _fit(
        self,
        job: Job,
        exc: openai.APIStatusError,
        refusal: ContextRefusal,
        estimate: int,
        asked: int,
        sent_in_round: int,
    ) -> int:
        """The completion tokens to ask for again after the server refused `asked` for its context; raises the
        request's rejection, with why, when no reply fits."""
        try:
            fits, new = self.window.learn(refusal, estimate, asked)
        except ContextTooSmall as why:
            rejected = RequestRejectedError(f"{exc.status_code} context too small: {why}")
            raise self._failed(job, rejected, sent_in_round) from exc
        job.sent("context_refused")
        if new:
            log.warning(
                "context_limit_learnt",
                status=exc.status_code,
                context_tokens=refusal.limit,
                completion_cap=refusal.completion_cap,
                prompt_tokens=refusal.prompt,
                refused_max_tokens=asked,
                now_max_tokens=fits,
            )
        return fits

    def _failed(self, job: Job, exc: BaseException, sent_in_round: int) -> BaseException:
        """A request's failure, classified for the policy and written to the job's ledger."""
        error = classify(exc)
        if isinstance(error, RateLimitedError):
            self.rate.rate_limited(error.retry_after, getattr(getattr(exc, "response", None), "headers", None))
        if isinstance(error, ServiceUnavailableError) and error.cause == "read_timeout":
            self.in_flight.timed_out(sent_in_round, self.config.request_timeout_s)
        job.sent(outcome_label(error), getattr(error, "usage", None))
        if getattr(error, "usage", None) is not None:
            job.usage += error.usage  # billed although unusable: it counts in the request's cost
        return error

    async def _post(self, job: Job, kind: str, max_tokens: int) -> tuple[bytes, str, httpx.Headers]:
        """The request, its body read by hand up to MAX_REPLY_BYTES: the SDK would hand back a `str` for a page
        that is not JSON (a proxy's HTML), and read a body of any size."""
        async with self.client.chat.completions.with_streaming_response.create(
            model=self.model,
            messages=job.messages,  # type: ignore[arg-type]
            temperature=self.config.temperature,
            max_tokens=max_tokens,
            **self._extra(kind),
        ) as response:
            content_type = response.headers.get("content-type", "")
            body = bytearray()
            async for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_REPLY_BYTES:
                    raise ServiceUnavailableError(
                        f"the reply is larger than {MAX_REPLY_BYTES // 2**20} MiB: not read further", "malformed_reply"
                    )
        return bytes(body), content_type, response.headers

    def _extra(self, kind: str) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        fmt = response_format(kind)
        if fmt is not None:
            extra["response_format"] = fmt
        if self.config.seed is not None:
            extra["seed"] = self.config.seed
        return extra

    async def _complete(self, job: Job) -> tuple[Job, Completion | BaseException]:
        policy = RequestPolicy(self.config.retry, "qa_request", **job.label)
        try:
            completion = await policy.call_async(self._send, job)
        except Exception as exc:
            job.attempts += policy.attempts
            return job, exc
        completion.attempts = policy.attempts
        return job, completion

    async def complete_many(self, jobs: list[Job]) -> AsyncIterator[tuple[Job, Completion | BaseException]]:
        # Tasks are created in slices so a 100k-document corpus does not hold 100k coroutines at once.
        window = max(64, self.config.concurrency * 4)
        queue = iter(jobs)
        running: set[asyncio.Task[tuple[Job, Completion | BaseException]]] = set()
        try:
            while True:
                while len(running) < window:
                    job = next(queue, None)
                    if job is None:
                        break
                    running.add(asyncio.create_task(self._complete(job)))
                if not running:
                    return
                done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    job, outcome = task.result()
                    yield job, outcome
                    self._settled(job)  # the caller has journaled it: the next request may go out
        finally:
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)
            for job in jobs:  # the caller stopped early: answers it was never handed free their slots
                self._settled(job)
