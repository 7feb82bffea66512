"""The `openai` QA backend: the official async SDK against OpenAI or any OpenAI-compatible server.

Concurrency is a semaphore; request and token rates go through aiolimiter's leaky buckets (one second of
burst for requests, one minute for tokens, as providers meter them). The SDK's own retries are off
(max_retries=0): the project's policy table is the only retry layer, so tries can be counted and logged by
class. A whole request, body included, has a deadline, which catches servers that stream a reply too slowly.
The response format starts at what config asks for and steps down (json_schema -> json_object -> text) the
first time the server rejects it, for the rest of the run.
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
from llm_pipeline.qa.checkpoint import Usage
from llm_pipeline.qa.policy import RequestPolicy
from llm_pipeline.qa.schema import response_format

log = get_logger("qa.openai")

DEFAULT_MODEL = "gpt-4o-mini"
_FORMATS = ("json_schema", "json_object", "text")


def request_limiter(requests_per_minute: float) -> AsyncLimiter:
    burst = max(1.0, requests_per_minute / 60)  # one second's worth
    return AsyncLimiter(burst, burst * 60 / requests_per_minute)


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


def classify(error: BaseException) -> BaseException:
    """The SDK's exceptions mapped onto the project's classes, which the policy table knows."""
    if isinstance(error, openai.RateLimitError):
        return RateLimitedError(f"429 rate limited: {error.message}", _retry_after(error.response.headers))
    if isinstance(error, openai.AuthenticationError | openai.PermissionDeniedError):
        return ConfigError([("OPENAI_API_KEY", f"rejected by the server ({error.status_code})")])
    if isinstance(error, openai.APIStatusError):
        if error.status_code in (408, 409) or error.status_code >= 500:
            return ServiceUnavailableError(f"{error.status_code} from the server: {error.message}")
        return RequestRejectedError(f"{error.status_code} request rejected: {error.message}")
    if isinstance(error, openai.APITimeoutError | TimeoutError):
        return ServiceUnavailableError("timed out")
    if isinstance(error, openai.APIConnectionError | httpx.TransportError):
        return ServiceUnavailableError(f"connection failed: {error}")
    if isinstance(error, openai.APIResponseValidationError | json.JSONDecodeError | UnicodeDecodeError):
        return ServiceUnavailableError(f"unreadable response body: {type(error).__name__}")
    return error


@QA_BACKENDS.register("openai")
class OpenAIBackend:
    name = "openai"

    def __init__(self, config: QAConfig, api_key: str | None):
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
        self.semaphore = asyncio.Semaphore(config.concurrency)
        self.requests = request_limiter(config.requests_per_minute) if config.requests_per_minute else None
        self.tokens = AsyncLimiter(config.tokens_per_minute, 60) if config.tokens_per_minute else None
        self.format_index = 0 if config.response_format == "auto" else _FORMATS.index(config.response_format)

    async def aclose(self) -> None:
        await self.client.close()

    async def _send(self, job: Job) -> Completion:
        """One HTTP request, within the limits and the deadline; errors come back classified."""
        prompt = "".join(m["content"] for m in job.messages)
        async with self.semaphore:
            if self.requests:
                await self.requests.acquire()
            if self.tokens:
                await self.tokens.acquire(min(self.tokens.max_rate, estimate_tokens(prompt) + self.config.max_tokens))
            while True:  # steps down the response format when the server rejects it; not a retry
                kind = _FORMATS[self.format_index]
                started = time.perf_counter()
                try:
                    async with asyncio.timeout(self.config.request_timeout_s):
                        response = await self.client.chat.completions.create(
                            model=self.model,
                            messages=job.messages,  # type: ignore[arg-type]
                            temperature=self.config.temperature,
                            max_tokens=self.config.max_tokens,
                            **self._extra(kind),
                        )
                    break
                except openai.BadRequestError as exc:
                    if "response_format" not in str(exc.message) or kind == "text":
                        raise classify(exc) from exc
                    if _FORMATS[self.format_index] == kind:  # another request may have stepped down already
                        self.format_index += 1
                        log.warning("response_format_unsupported", rejected=kind, now=_FORMATS[self.format_index])
                except Exception as exc:  # classified for the policy; anything unknown propagates as itself
                    raise classify(exc) from exc
        latency = time.perf_counter() - started
        if not response.choices:
            raise ServiceUnavailableError("response had no choices")
        choice = response.choices[0]
        text = choice.message.content or ""
        if response.usage is not None:
            usage = Usage(
                prompt_tokens=response.usage.prompt_tokens or 0, completion_tokens=response.usage.completion_tokens or 0
            )
        else:
            usage = Usage(
                prompt_tokens=estimate_tokens(prompt), completion_tokens=estimate_tokens(text), estimated=True
            )
        return Completion(text=text, finish_reason=choice.finish_reason, usage=usage, latency_s=latency)

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
                    yield task.result()
        finally:
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)
