"""The project's one exception hierarchy; the retry policy in flows/ maps these classes to behaviour."""

from __future__ import annotations

from typing import Any


class PipelineError(Exception):
    """Base of every error the pipeline raises on purpose."""


class ConfigError(PipelineError):
    """The configuration is invalid; raised before any work starts. Never retried."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems  # (dotted field, message)
        lines = "\n".join(f"  {field}: {message}" for field, message in problems)
        super().__init__(f"invalid configuration:\n{lines}")


class DataValidationError(PipelineError):
    """Input data cannot be used at all (an unreadable file). Never retried: the data will not change."""


class RunTimedOut(PipelineError, TimeoutError):
    """The run passed `execution.run_timeout`, or a stage its `execution.stage_timeouts`. Never retried: a stage that
    stalled once stalls again."""


class TransientError(PipelineError):
    """A failure that may pass on its own (network, a busy service). Retried with backoff."""


class ResourceExhaustedError(PipelineError):
    """Out of memory or a similar resource; retried once after a long delay with a smaller batch."""


class ModelLoadError(PipelineError):
    """A model could not be loaded; retried immediately a couple of times (a flaky disk or cache)."""


class RateLimitedError(TransientError):
    """The service said 429: back off exponentially, never sooner than its Retry-After."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class ServiceUnavailableError(TransientError):
    """A timeout, a dropped connection, a 5xx or an unreadable response body: linear backoff. `cause` names what
    happened (connection_dropped, connect_failed, connect_timeout, read_timeout, server_error, malformed_reply,
    unexpected) for the logs, the counts and the report."""

    def __init__(self, message: str, cause: str = "server_error", usage: Any = None):
        super().__init__(message)
        self.cause = cause
        self.usage = usage  # what a reply that arrived but could not be used was billed, when it said


class RequestRejectedError(DataValidationError):
    """The service refused this request for what it contains (400, 413, 422): sending it again cannot help."""


class OutputFormatError(DataValidationError):
    """A model's text is not the pairs asked for; the message is fit to send back to the model (QA generation
    re-asks with it, then quarantines the request)."""


class BudgetReachedError(PipelineError):
    """The run's spending cap (qa.max_cost_usd, qa.max_total_tokens) would be crossed by this request: it is not
    sent, not retried, and the stage ends partial, saying so."""
