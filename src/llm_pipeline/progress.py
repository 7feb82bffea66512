"""Progress bars for long stages: rich on an interactive terminal, silent elsewhere (CI, workers, tests)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def enabled() -> bool:
    setting = os.environ.get("LLM_PIPELINE_PROGRESS", "auto").lower()
    if setting in ("0", "false", "off"):
        return False
    return setting in ("1", "true", "on") or sys.stderr.isatty()


def progress(items: Iterable[T], total: int | None = None, description: str = "working") -> Iterator[T]:
    if not enabled():
        yield from items
        return
    from rich.progress import track

    yield from track(items, total=total, description=description, transient=True)
