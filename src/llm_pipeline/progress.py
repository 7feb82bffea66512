"""Progress for long stages: a rich bar on an interactive terminal, a log line per tenth elsewhere (workers, CI),
and, at each tenth, the listeners registered with `add_listener` (the flows turn them into Prefect progress
artifacts; the library knows nothing of Prefect)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

Listener = Callable[[str, int, int], None]  # (description, done, total)
_listeners: list[Listener] = []


def add_listener(listener: Listener) -> None:
    _listeners.append(listener)


def remove_listener(listener: Listener) -> None:
    if listener in _listeners:
        _listeners.remove(listener)


def enabled() -> bool:
    setting = os.environ.get("LLM_PIPELINE_PROGRESS", "auto").lower()
    if setting in ("0", "false", "off"):
        return False
    return setting in ("1", "true", "on") or sys.stderr.isatty()


class ProgressCounter:
    """A bar advanced by hand (for work that completes out of order, such as concurrent requests); off a
    terminal it logs a line at each tenth instead, so a worker's log still shows how far a long stage is."""

    def __init__(self, total: int, description: str):
        self.total, self.description, self.done = total, description, 0
        self._bar: Any = None
        self._task: Any = None
        self._tenths = 0  # tenths of the total reported so far

    def __enter__(self) -> ProgressCounter:
        if enabled() and self.total:
            from rich.progress import Progress

            self._bar = Progress(transient=True)
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=self.total)
        return self

    def advance(self, step: int = 1) -> None:
        self.done += step
        if self._bar is not None:
            self._bar.update(self._task, advance=step)
        tenths = self.done * 10 // self.total if self.total else 0
        if tenths > self._tenths:
            self._tenths = tenths
            if self._bar is None:
                from llm_pipeline.logging import get_logger

                get_logger("progress").info("progress", what=self.description, done=self.done, total=self.total)
            for listener in list(_listeners):
                listener(self.description, self.done, self.total)

    def __exit__(self, *_: object) -> None:
        if self._bar is not None:
            self._bar.stop()
