"""The request-level error policy, as the spec sets it, in one table; tenacity carries it out.

| error                                   | tries | wait before the next try                          |
|-----------------------------------------|-------|---------------------------------------------------|
| RateLimitedError (429)                  | 5     | exponential with jitter, at least Retry-After     |
| ServiceUnavailableError (timeout, 5xx)  | 3     | linear: step, 2 x step                            |
| ModelLoadError                          | 2     | none (immediate)                                  |
| ResourceExhaustedError (OOM)            | 2     | one long delay; the caller halves its batch       |
| DataValidationError (400, bad input)    | 1     | never retried                                     |

Tries are counted per error class within one request, so two 429s and a timeout are 2 of 5 and 1 of 3. What
is still failing after its tries goes up to the stage: Prefect's task retries (flows/retries.py) cover only
that remainder, and never a validation error. Every retry is logged with its class, try and wait.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from tenacity import AsyncRetrying, RetryCallState, Retrying, retry_if_exception, wait_exponential_jitter

from llm_pipeline.config import QARetryConfig
from llm_pipeline.errors import (
    DataValidationError,
    ModelLoadError,
    RateLimitedError,
    ResourceExhaustedError,
    ServiceUnavailableError,
)
from llm_pipeline.logging import get_logger

log = get_logger("qa.policy")
T = TypeVar("T")


@dataclass(frozen=True)
class Rule:
    label: str
    tries: int
    wait: Callable[[int, BaseException], float]  # (retry number from 1, the error) -> seconds


def policy_table(config: QARetryConfig) -> dict[type[BaseException], Rule]:
    exponential = wait_exponential_jitter(
        multiplier=config.rate_limit_initial_s, max=config.rate_limit_max_s, jitter=config.rate_limit_initial_s
    )

    def after_429(retry: int, error: BaseException) -> float:
        backoff = exponential(_FakeState(retry))
        retry_after = getattr(error, "retry_after", None) or 0.0
        return max(backoff, retry_after)

    return {
        RateLimitedError: Rule("rate_limit", 5, after_429),
        ServiceUnavailableError: Rule("service_unavailable", 3, lambda k, _: config.timeout_step_s * k),
        ModelLoadError: Rule("model_load", 2, lambda k, _: 0.0),
        ResourceExhaustedError: Rule("resource_exhausted", 2, lambda k, _: config.oom_delay_s),
        DataValidationError: Rule("data_validation", 1, lambda k, _: 0.0),
    }


class _FakeState:
    """tenacity's wait strategies read only attempt_number from the state."""

    def __init__(self, attempt_number: int):
        self.attempt_number = attempt_number


class RequestPolicy:
    """Retries one operation by the table; `attempts` and `retries` say what happened (for metadata and tests)."""

    def __init__(self, config: QARetryConfig, what: str, **context: Any):
        self.table = policy_table(config)
        self.what = what
        self.context = context
        self.retries: Counter[str] = Counter()
        self.attempts = 0

    def rule(self, error: BaseException) -> Rule | None:
        for cls, rule in self.table.items():
            if isinstance(error, cls):
                return rule
        return None  # not in the table: a bug or an unexpected failure, raised at once

    def _retryable(self, error: BaseException) -> bool:
        rule = self.rule(error)
        return rule is not None and self.retries[rule.label] + 1 < rule.tries

    def _wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        rule = self.rule(error) if error else None
        if rule is None:
            return 0.0
        self.retries[rule.label] += 1
        seconds = rule.wait(self.retries[rule.label], error)
        log.warning(
            "retry",
            what=self.what,
            error_class=rule.label,
            error=f"{type(error).__name__}: {error}"[:300],
            retry=self.retries[rule.label],
            of=rule.tries - 1,
            wait_s=round(seconds, 2),
            **self.context,
        )
        return seconds

    def _count(self, state: RetryCallState) -> None:
        self.attempts = state.attempt_number

    def _settings(self) -> dict[str, Any]:
        return {
            "retry": retry_if_exception(self._retryable),
            "wait": self._wait,
            "before": self._count,
            "reraise": True,
        }

    async def call_async(self, operation: Callable[..., Awaitable[T]], *args: Any) -> T:
        """`operation` must be a coroutine function (tenacity awaits only those)."""
        return await AsyncRetrying(**self._settings())(operation, *args)

    def call(self, operation: Callable[[], T]) -> T:
        return Retrying(**self._settings())(operation)
