"""The retry policy in one table: which error classes Prefect retries at the task level, and how.

Request-level retries (rate limits, timeouts) live in the backends (llm_pipeline/qa/policy.py has that table); a
task retry re-runs a whole stage, so it covers only what remains. Configuration and data errors are never
retried: the input will not change.
"""

from __future__ import annotations

from typing import Any

from llm_pipeline.errors import (
    ConfigError,
    DataValidationError,
    ModelLoadError,
    ResourceExhaustedError,
    TransientError,
)

# error class -> retried by the task?  (the delays are set on each task: see pipeline.py STAGE_RETRIES)
RETRY_POLICY: dict[type[BaseException], bool] = {
    TransientError: True,  # network or service trouble: back off, try again
    ModelLoadError: True,  # flaky disk or cache: immediate retry
    ResourceExhaustedError: True,  # OOM: one retry after a long delay
    ConfigError: False,
    DataValidationError: False,
}


def should_retry(exc: BaseException) -> bool:
    for cls, retry in RETRY_POLICY.items():
        if isinstance(exc, cls):
            return retry
    return False  # an unknown error is a bug: retrying would only repeat it


def retry_condition(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's retry_condition_fn: retry only the classes the table marks as transient."""
    try:
        state.result()
    except Exception as exc:  # the task's own exception, re-raised by result()
        return should_retry(exc)
    return False
