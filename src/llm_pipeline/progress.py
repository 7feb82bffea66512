"""Progress for long stages: a rich bar on an interactive terminal, a log line per tenth elsewhere (workers, CI)."""

from __future__ import annotations

import os
import sys
from typing import Any


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
        self._next_log = 0.1

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
        elif self.total and self.done / self.total >= self._next_log:
            from llm_pipeline.logging import get_logger

            get_logger("progress").info("progress", what=self.description, done=self.done, total=self.total)
            while self._next_log <= self.done / self.total:
                self._next_log += 0.1

    def __exit__(self, *_: object) -> None:
        if self._bar is not None:
            self._bar.stop()
