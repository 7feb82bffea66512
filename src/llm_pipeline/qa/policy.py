"""The request-level side of the retry table (llm_pipeline.retries): tenacity retries one request, or one model
load or batch, by its error's class, with the delays of `qa.retry`.

What is still failing after its tries goes up to the stage, whose Prefect task retries (flows/retries.py) read
the same table and cover only that remainder; a validation error is never retried. Every retry is logged with
its class, try and wait.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from tenacity import AsyncRetrying, RetryCallState, Retrying, retry_if_exception

from llm_pipeline.config import RetryDelays
from llm_pipeline.logging import get_logger
from llm_pipeline.retries import rule_for

log = get_logger("qa.policy")
T = TypeVar("T")


class RequestPolicy:
    """Retries one operation by the table; `attempts` and `retries` say what happened (for metadata and tests)."""

    def __init__(self, delays: RetryDelays, what: str, **context: Any):
        self.delays = delays
        self.what = what
        self.context = context
        self.retries: Counter[str] = Counter()
        self.attempts = 0

    def _retryable(self, error: BaseException) -> bool:
        rule = rule_for(error)  # None: not in the table, a bug or an unexpected failure, raised at once
        return rule is not None and self.retries[rule.label] + 1 < rule.tries

    def _wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        rule = rule_for(error) if error else None
        if rule is None or error is None:
            return 0.0
        self.retries[rule.label] += 1
        seconds = rule.delay(self.retries[rule.label], error, self.delays)
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
