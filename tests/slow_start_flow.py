"""A flow whose module takes minutes to import when SLOW_START_MARKER names a file: the flow-run process loads its
flow before it proposes Running, so its run stays Pending (Submitting) the while, and a worker killed then leaves
it there with no process (tests/test_recovery.py). The process id goes to the marker first."""

from __future__ import annotations

import os
import time
from pathlib import Path

from prefect import flow

if marker := os.environ.get("SLOW_START_MARKER"):
    Path(marker).write_text(str(os.getpid()))
    time.sleep(600)


@flow(name="slow-start")
def slow_start() -> str:
    return "started"
