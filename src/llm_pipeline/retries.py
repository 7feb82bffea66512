"""The retry table, per error class, with the spec's numbers: the one place both retry levels read.

| error class                                       | tries | back-off before retry k (k from 1)              |
|---------------------------------------------------|-------|-------------------------------------------------|
| RateLimitedError (429)                            | 5     | exponential: initial x 2^(k-1) + jitter, capped, |
|                                                   |       | never sooner than the server's Retry-After      |
| ServiceUnavailableError, TransientError (timeout, | 3     | linear: step x k                                |
| 5xx, dropped connection, a network error)         |       |                                                 |
| ModelLoadError                                    | 2     | immediate                                       |
| ResourceExhaustedError (out of memory)            | 2     | one long delay (the caller halves its batch)    |
| DataValidationError, ConfigError                  | 1     | never retried: the input will not change        |
| RunTimedOut (past execution.run_timeout, or a    | 1     | never retried: a stalled stage stalls again     |
| stage's execution.stage_timeouts)                 |       |                                                 |
| anything else                                     | 1     | a bug: retrying would only repeat it            |

The tries count per class: two 429s and a timeout are 2 of 5 and 1 of 3.
- Request level (llm_pipeline.qa.policy): each request of the QA and endpoint clients, delays from `qa.retry`.
- Stage level (flows/retries.py): each stage as a Prefect task, delays from `stage_retry`; a stage retry covers
  only what the requests' own tries left (a stage that journals its requests sends only the remainder).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tenacity import wait_exponential_jitter

from llm_pipeline.config import RetryDelays
from llm_pipeline.errors import (
    ConfigError,
    DataValidationError,
    ModelLoadError,
    RateLimitedError,
    ResourceExhaustedError,
    RunTimedOut,
    ServiceUnavailableError,
    TransientError,
)

Backoff = Literal["exponential", "linear", "immediate", "long", "never"]


@dataclass(frozen=True)
class RetryRule:
    label: str  # in logs and counts: rate_limit, service_unavailable, ...
    tries: int  # in all, the first included
    backoff: Backoff

    def delay(self, retry: int, error: BaseException, delays: RetryDelays) -> float:
        """Seconds to wait before retry number `retry` (1 = the first retry) after `error`."""
        if self.backoff == "exponential":
            wait = wait_exponential_jitter(
                multiplier=delays.rate_limit_initial_s, max=delays.rate_limit_max_s, jitter=delays.rate_limit_initial_s
            )(_Attempt(retry))
            return max(wait, getattr(error, "retry_after", None) or 0.0)
        if self.backoff == "linear":
            return delays.timeout_step_s * retry
        if self.backoff == "long":
            return delays.oom_delay_s
        return 0.0


class _Attempt:
    """tenacity's wait strategies read only attempt_number from the retry state."""

    def __init__(self, attempt_number: int):
        self.attempt_number = attempt_number


# Subclasses before their bases: the first class an error is an instance of decides.
RETRY_TABLE: dict[type[BaseException], RetryRule] = {
    RateLimitedError: RetryRule("rate_limit", 5, "exponential"),
    ServiceUnavailableError: RetryRule("service_unavailable", 3, "linear"),
    TransientError: RetryRule("transient", 3, "linear"),
    ModelLoadError: RetryRule("model_load", 2, "immediate"),
    ResourceExhaustedError: RetryRule("resource_exhausted", 2, "long"),
    DataValidationError: RetryRule("data_validation", 1, "never"),
    ConfigError: RetryRule("config", 1, "never"),
    RunTimedOut: RetryRule("run_timeout", 1, "never"),
}
MAX_TRIES = max(rule.tries for rule in RETRY_TABLE.values())


def rule_for(error: BaseException) -> RetryRule | None:
    """The table's row for an error, or None for an error outside the project's hierarchy (a bug)."""
    for cls, rule in RETRY_TABLE.items():
        if isinstance(error, cls):
            return rule
    return None
