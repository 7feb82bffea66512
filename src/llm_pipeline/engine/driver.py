"""A Ray driver in a child process of the stage's: `in_driver(execution, "module:function", *args)` runs the
function there and hands back its result, or raises its error.

Ray ends a driver whose cluster head went away (60 s after losing it, from C++, no exception to catch), and that
must cost the stage an attempt, not the flow run's process. A child that dies so becomes a RayUnavailableError
naming the address (the stage retry table retries it); an error the function raises comes back as itself. The
child gets the caller's logging (format, level, and the run and stage fields), and its events come back to the
caller through a pipe and are logged there, in the caller's thread: under Prefect they reach the run's logs in
the UI like the stage's own (Ray's own output stays on the child's stderr: the worker's log)."""

from __future__ import annotations

import importlib
import json
import logging
import os
import pickle
from pathlib import Path
from typing import Any

from llm_pipeline.config import ExecutionConfig
from llm_pipeline.engine.ray_session import RayUnavailableError, describe, resolve_address
from llm_pipeline.io import atomic_open
from llm_pipeline.logging import LOGGER_NAME


def in_driver(
    execution: ExecutionConfig, target: str, *args: Any, log_level: str = "INFO", structured: bool = True
) -> Any:
    import subprocess
    import sys
    import tempfile

    import structlog

    with tempfile.TemporaryDirectory(prefix="llm-pipeline-ray-") as folder:
        job, answer = Path(folder) / "job.pickle", Path(folder) / "answer.pickle"
        context = structlog.contextvars.get_contextvars()
        with atomic_open(job, "wb") as handle:
            handle.write(pickle.dumps((target, args, log_level, structured, context)))
        read_end, write_end = os.pipe()
        command = [sys.executable, "-m", "llm_pipeline.engine.ray_driver", str(job), str(answer), str(write_end)]
        try:
            child = subprocess.Popen(command, pass_fds=(write_end,))
        finally:
            os.close(write_end)
        try:
            relay_until_exit(read_end, child)
        except BaseException:  # the stage stopped while its driver ran (execution.run_timeout, a signal): not orphaned
            child.kill()
            child.wait()
            raise
        if not answer.exists():
            address = describe(resolve_address(execution))
            raise RayUnavailableError(
                f"execution.ray_address: the Ray driver for {address} died mid-stage (exit {child.returncode}; Ray "
                "ends a driver whose cluster head is gone or unreachable); the stage is retried"
            )
        ok, payload = pickle.loads(answer.read_bytes())
    if not ok:
        raise payload
    return payload


def relay_until_exit(fd: int, child: Any) -> None:
    """Relay the child's events until its end of the pipe closes, or it has exited (a process it started that
    kept the pipe open must not hold the stage)."""
    import selectors

    pending = b""
    with selectors.DefaultSelector() as selector, os.fdopen(fd, "rb", buffering=0) as events:
        selector.register(events, selectors.EVENT_READ)
        while True:
            if not selector.select(timeout=1.0):
                if child.poll() is not None:
                    break
                continue
            chunk = events.read(65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                relay(line.decode("utf-8", errors="replace"))
    if pending:
        relay(pending.decode("utf-8", errors="replace"))
    child.wait()


def relay(line: str) -> None:
    """One event from the child, `[level number, rendered event]`, logged here as it was rendered there."""
    try:
        level, message = json.loads(line)
    except (ValueError, TypeError):
        level, message = logging.INFO, line.rstrip("\n")
    logging.getLogger(LOGGER_NAME).log(int(level), message)


class _PipeHandler(logging.Handler):
    """The child's events, one JSON line each (level, rendered message), to the caller's end of the pipe."""

    def __init__(self, fd: int):
        super().__init__()
        self.stream = os.fdopen(fd, "w", encoding="utf-8", buffering=1)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(json.dumps([record.levelno, record.getMessage()]) + "\n")
        except Exception:  # noqa: BLE001 - a log line must never fail the work
            self.handleError(record)


def drive(job: Path, answer: Path, log_fd: int | None = None) -> None:
    """The child process (`python -m llm_pipeline.engine.ray_driver JOB ANSWER [LOG_FD]`): the caller's logging
    (to LOG_FD when given, the caller relays it), the function, and its result or its error pickled to ANSWER."""
    import structlog

    from llm_pipeline.logging import configure_logging

    target, args, log_level, structured, context = pickle.loads(job.read_bytes())
    configure_logging(log_level, structured)
    if log_fd is not None:
        os.set_inheritable(log_fd, False)  # the processes this one starts (Ray's) do not hold the pipe open
        logger = logging.getLogger(LOGGER_NAME)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.addHandler(_PipeHandler(log_fd))
    structlog.contextvars.bind_contextvars(**context)
    module, _, name = target.partition(":")
    try:
        result: tuple[bool, Any] = (True, getattr(importlib.import_module(module), name)(*args))
    except Exception as exc:  # handed to the stage's process, raised there as itself
        try:
            pickle.dumps(exc)
            result = (False, exc)
        except Exception:  # noqa: BLE001 - an error that cannot travel travels as its text
            result = (False, RuntimeError(f"{type(exc).__name__}: {exc}"))
    with atomic_open(answer, "wb") as handle:  # a driver killed mid-write leaves no answer, not half of one
        handle.write(pickle.dumps(result))
