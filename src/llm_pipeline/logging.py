"""Structured logging: structlog renders each event (JSON or key=value) and stdlib logging carries it.

Rendering in structlog and transporting through the stdlib logger `llm_pipeline` means every handler sees the
same one-line event: the console, and, under Prefect, its API handler (flows/ lists `llm_pipeline` in
PREFECT_LOGGING_EXTRA_LOGGERS), so the Prefect UI's run logs show the events the terminal shows.
Bind run and stage ids with `bind(run_id=..., stage=...)`; they ride on every event that follows.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog

LOGGER_NAME = "llm_pipeline"

# Credentials are masked in every event: under a key that names one, by OpenAI's and HF's key shapes, by the exact
# values of the environment's secret variables (whatever key they arrive under).
SECRET_NAME = re.compile(r"(api[_-]?key|token(?!s|iz)|password|secret|auth_string|webhook_url)", re.IGNORECASE)
_OPENAI_KEY_SHAPE = re.compile(r"sk-[A-Za-z0-9_\-]{8,}|hf_[A-Za-z0-9]{20,}")  # OpenAI's and Hugging Face's


def secret_values() -> list[str]:
    """The values of environment variables whose names say they are secrets (longest first)."""
    values = {v for k, v in os.environ.items() if SECRET_NAME.search(k) and len(v) >= 6}
    return sorted(values, key=len, reverse=True)


def mask_text(text: str, secrets: list[str] | None = None) -> str:
    for value in secret_values() if secrets is None else secrets:
        text = text.replace(value, "********")
    return _OPENAI_KEY_SHAPE.sub("********", text)


def _mask_secrets(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    secrets = secret_values()
    for key, value in list(event.items()):
        if SECRET_NAME.search(key) and value is not None:
            event[key] = "********"
        elif isinstance(value, str):
            event[key] = mask_text(value, secrets)
    return event


def configure_logging(level: str = "INFO", structured: bool = True) -> None:
    """Set up once per process; calling again changes level and format in place."""
    renderer: Any = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if structured
        else structlog.dev.ConsoleRenderer(colors=False, pad_event_to=0)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _mask_secrets,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        cache_logger_on_first_use=False,
    )
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level)
    # One console handler of our own; Prefect may add its API handler beside it.
    for handler in list(logger.handlers):
        if getattr(handler, "_llm_pipeline_console", False):
            logger.removeHandler(handler)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(message)s"))
    console._llm_pipeline_console = True  # type: ignore[attr-defined]
    logger.addHandler(console)
    logger.propagate = False


def get_logger(name: str = "") -> Any:
    return structlog.get_logger(f"{LOGGER_NAME}.{name}" if name else LOGGER_NAME)


@contextmanager
def bound(**values: Any) -> Iterator[None]:
    """Bind values (run_id, stage) to every event logged inside the block, in this thread or task."""
    with structlog.contextvars.bound_contextvars(**values):
        yield


def bind(**values: Any) -> None:
    structlog.contextvars.bind_contextvars(**values)
