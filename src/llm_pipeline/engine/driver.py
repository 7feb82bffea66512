"""A Ray driver in a child process of the stage's: `in_driver(execution, "module:function", *args)` runs the
function there and hands back its result, or raises its error.

Ray ends a driver whose cluster head went away (60 s after losing it, from C++, no exception to catch), and that
must cost the stage an attempt, not the flow run's process. A child that dies so becomes a RayUnavailableError
naming the address (the stage retry table retries it); an error the function raises comes back as itself. The
child gets the caller's logging (format, level, and the run and stage fields)."""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import Any

from llm_pipeline.config import ExecutionConfig
from llm_pipeline.engine.ray_session import RayUnavailableError, describe, resolve_address
from llm_pipeline.io import atomic_open


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
        child = subprocess.run([sys.executable, "-m", "llm_pipeline.engine.ray_driver", str(job), str(answer)])
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


def drive(job: Path, answer: Path) -> None:
    """The child process (`python -m llm_pipeline.engine.ray_driver JOB ANSWER`): the caller's logging, the
    function, and its result or its error pickled to ANSWER."""
    import structlog

    from llm_pipeline.logging import configure_logging

    target, args, log_level, structured, context = pickle.loads(job.read_bytes())
    configure_logging(log_level, structured)
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
