"""Stage-level retries: a stage's Prefect task is retried by the class of the error it raised, with the tries and
back-off of the one retry table (llm_pipeline.retries) and the delays of the config's `stage_retry`.

Prefect's task options take one retry count and one list of delays for every error. The table wants both per
class, so the task allows the table's largest count, and `ClassRetries.__call__`, Prefect's `retry_condition_fn`,
decides for each failure: is this class retried, and have its own tries run out? When it retries, it sets the
task's `retry_delay_seconds` to this class's delay, which Prefect reads right after the condition returns (task
engine: `handle_retry` calls `can_retry`, then reads the delay), so the run waits in AwaitingRetry for exactly
that long. Each stage's task object is built per flow run (flows/pipeline.py), so the delay written here
belongs to one task run only.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from llm_pipeline.config import RetryDelays
from llm_pipeline.logging import get_logger
from llm_pipeline.retries import MAX_TRIES, rule_for

log = get_logger("retries")


class ClassRetries:
    """A `retry_condition_fn` that retries by the retry table, counting each error class's tries on its own."""

    def __init__(self, delays: RetryDelays):
        self.delays = delays
        self.retries: dict[Any, Counter[str]] = {}  # task run id -> retries so far per class

    def __call__(self, task: Any, task_run: Any, state: Any) -> bool:
        try:
            state.result()
        except Exception as exc:  # the task's own exception, re-raised by result()
            error: BaseException = exc
        else:
            return False
        rule = rule_for(error)
        counts = self.retries.setdefault(task_run.id, Counter())
        if rule is None or counts[rule.label] + 1 >= rule.tries:
            log.info(
                "stage_not_retried",
                task=task.name,
                error_class=rule.label if rule else "unknown",
                reason="an error outside the table is a bug" if rule is None else f"{rule.tries} tries used",
            )
            return False
        counts[rule.label] += 1
        delay = rule.delay(counts[rule.label], error, self.delays)
        task.retry_delay_seconds = delay  # read by Prefect right after this returns (see the module docstring)
        log.warning(
            "stage_retry",
            task=task.name,
            error_class=rule.label,
            error=f"{type(error).__name__}: {error}"[:300],
            retry=counts[rule.label],
            of=rule.tries - 1,
            wait_s=round(delay, 2),
        )
        return True


def task_retry_options(delays: RetryDelays) -> dict[str, Any]:
    """Prefect task options for a stage retried by the table."""
    return {
        "retries": MAX_TRIES - 1,
        "retry_delay_seconds": 0,
        "retry_jitter_factor": None,  # the table's exponential row has its own jitter
        "retry_condition_fn": ClassRetries(delays),
    }
