"""The retry table at the stage level, row by row, on a real Prefect server: a declared stage that raises one
error class is run as the flow runs it (flows/pipeline.py's stage_task), then its task run's tries and the waits
between them are read back from the server's state history."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import pytest

from llm_pipeline.config import load_config
from llm_pipeline.errors import (
    DataValidationError,
    ModelLoadError,
    RateLimitedError,
    ResourceExhaustedError,
    ServiceUnavailableError,
    TransientError,
)
from llm_pipeline.stages import Stage

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

DELAYS = {"rate_limit_initial_s": 0.3, "rate_limit_max_s": 30.0, "timeout_step_s": 0.7, "oom_delay_s": 1.5}
SLACK_S = 2.5  # a try's own time plus the engine's scheduling, on a loaded 2-core machine

ERRORS = {
    "rate_limit": lambda: RateLimitedError("429 Too Many Requests"),
    "service_unavailable": lambda: ServiceUnavailableError("503 from upstream"),
    "transient": lambda: TransientError("connection reset"),
    "model_load": lambda: ModelLoadError("weights unreadable"),
    "resource_exhausted": lambda: ResourceExhaustedError("CUDA out of memory"),
    "data_validation": lambda: DataValidationError("not a parquet file"),
    "a_bug": lambda: ValueError("a bug: retrying repeats it"),
}


def _stage(plan: list[str]) -> Stage:
    """A stage raising the planned errors in turn, then succeeding."""
    calls = itertools.count()

    def run(ctx: Any) -> dict[str, Any]:
        attempt = next(calls)
        if attempt < len(plan):
            raise ERRORS[plan[attempt]]()
        return {"attempts": attempt + 1}

    return Stage(name="flaky-stage", run=run)


def _run(plan: list[str], tmp_path: Path) -> tuple[Any, list[Any]]:
    """Run the planned stage in a flow on the test server; (the final state, the task run's state history)."""
    from prefect import flow

    from flows.pipeline import stage_task

    config = load_config(ROOT / "configs" / "test.yaml", {"stage_retry": DELAYS, "output_path": str(tmp_path)})

    @flow(name="retry-row")
    def retry_row(label: str) -> None:
        stage = _stage(plan)
        stage_task(stage, config)(stage=stage, config=config, run_dir=str(tmp_path), run_id="r", group="tests", key={})

    state = retry_row(",".join(plan), return_state=True)
    return state, asyncio.run(_history(state.state_details.flow_run_id))


async def _history(flow_run_id: Any) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter

    async with get_client() as client:
        for _ in range(30):  # task-run rows reach the database asynchronously
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [flow_run_id]}))
            if runs and runs[0].state and runs[0].state.is_final():
                states = await client.read_task_run_states(runs[0].id)
                return sorted(states, key=lambda s: s.timestamp)
            await asyncio.sleep(1)
    raise AssertionError("the task run never reached a final state on the server")


def _starts(states: list[Any]) -> list[float]:
    return [s.timestamp.timestamp() for s in states if s.type.value == "RUNNING"]


def _gaps(states: list[Any]) -> list[float]:
    starts = _starts(states)
    return [b - a for a, b in itertools.pairwise(starts)]


@pytest.mark.parametrize(
    ("label", "tries", "waits"),
    [
        # exponential: 0.3 x 2^(k-1), plus up to 0.3 of jitter
        ("rate_limit", 5, [(0.3, 0.6), (0.6, 0.9), (1.2, 1.5), (2.4, 2.7)]),
        ("service_unavailable", 3, [(0.7, 0.7), (1.4, 1.4)]),  # linear: 0.7 x k
        ("transient", 3, [(0.7, 0.7), (1.4, 1.4)]),
        ("model_load", 2, [(0.0, 0.0)]),  # immediate
        ("resource_exhausted", 2, [(1.5, 1.5)]),  # one long delay
        ("data_validation", 1, []),  # never
        ("a_bug", 1, []),  # outside the table: never
    ],
)
def test_each_row_of_the_table(prefect_server, tmp_path: Path, label: str, tries: int, waits: list) -> None:
    state, states = _run([label] * 6, tmp_path)  # fails more often than any row allows
    assert state.is_failed()
    assert len(_starts(states)) == tries, [s.name for s in states]
    gaps = _gaps(states)
    for gap, (low, high) in zip(gaps, waits, strict=True):
        assert low <= gap <= high + SLACK_S, (label, gaps)
    if waits and waits[0][0] > 0:
        assert "AwaitingRetry" in [s.name for s in states]  # the wait is Prefect's, visible in the UI


def test_tries_are_counted_per_class(prefect_server, tmp_path: Path) -> None:
    """Two 429s then timeouts: 2 of 5 and then 3 of 3, so the fifth try is the last."""
    state, states = _run(["rate_limit", "rate_limit"] + ["service_unavailable"] * 4, tmp_path)
    assert state.is_failed() and len(_starts(states)) == 5


def test_a_stage_that_recovers_completes(prefect_server, tmp_path: Path) -> None:
    state, states = _run(["service_unavailable", "service_unavailable"], tmp_path)
    assert state.is_completed() and len(_starts(states)) == 3
