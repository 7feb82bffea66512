"""`llm-pipeline health` on a real Prefect server with seeded flow runs: the figures, the thresholds, the exit code."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from llm_pipeline.health import RunRecord, Thresholds, deployment_health, parse_window

pytestmark = pytest.mark.slow


def _usage(cpu: float, memory: float) -> str:
    """A pipeline's resources table artifact (flows/artifacts.py): per-stage rows and the run's row."""
    rows = [
        {"stage": "generate-qa-pairs", "cpu_mean_pct": cpu, "memory_max_pct": memory},
        {"stage": "(run)", "cpu_mean_pct": cpu, "memory_max_pct": memory, "gpu_util_mean_pct": None},
    ]
    return json.dumps(rows)


async def _seed() -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactCreate
    from prefect.states import Completed, Failed, Running, Scheduled

    async with get_client() as client:
        flow_id = await client.create_flow_from_name("health-seed")
        nightly = await client.create_deployment(flow_id=flow_id, name="nightly")
        steady = await client.create_deployment(flow_id=flow_id, name="steady")
        now = datetime.now(UTC)
        plan = [
            (nightly, now - timedelta(minutes=20), Completed, (60.0, 91.0)),  # 20 minutes late; memory at 91 %
            (nightly, now, Completed, (40.0, 50.0)),
            (nightly, now, Completed, None),  # no resources recorded (e.g. an older run)
            (nightly, now, Completed, None),
            (nightly, now, Failed, None),
            (steady, now, Completed, (10.0, 30.0)),
            (steady, now, Completed, (20.0, 40.0)),
        ]
        for deployment_id, scheduled, final, usage in plan:
            run = await client.create_flow_run_from_deployment(deployment_id, state=Scheduled(scheduled_time=scheduled))
            await client.set_flow_run_state(run.id, Running(), force=True)
            time.sleep(0.3)
            if usage:
                await client.create_artifact(
                    ArtifactCreate(key="seed-resources", type="table", data=_usage(*usage), flow_run_id=run.id)
                )
            await client.set_flow_run_state(run.id, final(), force=True)


def test_health_per_deployment_against_thresholds(prefect_server, tmp_path: Path) -> None:
    asyncio.run(_seed())
    env = {**os.environ, "PREFECT_API_URL": prefect_server.api_url}
    command = [sys.executable, "-m", "flows.cli", "health", "--window", "1h", "--max-queue", "10m", "--json"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr  # a threshold is crossed
    report = {d["deployment"]: d for d in json.loads(done.stdout)["deployments"]}
    nightly, steady = report["health-seed/nightly"], report["health-seed/steady"]
    assert nightly["runs"] == 5 and nightly["success_rate"] == 0.8 and nightly["error_rate"] == 0.2
    assert 1150 < nightly["max_queue_s"] < 1300  # the run that started 20 minutes after its time
    assert 0.25 < nightly["max_duration_s"] < 30
    assert nightly["cpu_mean_pct"] == 50.0 and nightly["memory_max_pct"] == 91.0  # mean of means, max of peaks
    assert nightly["gpu_util_mean_pct"] is None  # no GPU figures recorded
    assert len(nightly["breaches"]) == 4 and "memory 91 % > 80 %" in nightly["breaches"]  # + success, errors, queue
    assert steady["success_rate"] == 1.0 and steady["breaches"] == []
    assert steady["cpu_mean_pct"] == 15.0 and steady["memory_max_pct"] == 40.0

    wide = {**env, "COLUMNS": "200"}  # not a terminal: rich would fold the table to 80 columns
    table = subprocess.run(command[:-1], env=wide, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert table.returncode == 1 and "health-seed/nightly" in table.stdout and "success rate 80%" in table.stdout


def test_health_says_how_many_gpu_slots_no_run_holds(prefect_server, tmp_path: Path) -> None:
    """`llm-pipeline health` reads gpu-slots as the autoscaler's audit does: slots counted against the GPU pool's
    runs that could hold them, so an operator sees a slot leaked by a lost lease before the audit gives it back."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    env = {**os.environ, "PREFECT_API_URL": prefect_server.api_url, "COLUMNS": "250"}
    command = [sys.executable, "-m", "flows.cli", "health", "--window", "1h"]
    before = subprocess.run([*command, "--json"], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert json.loads(before.stdout)["gpu_slots"] is None  # not made on this server

    async def leak() -> None:  # two slots taken without a lease, no run on the GPU pool: as a lost store leaves them
        async with get_client() as client:
            await client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name="gpu-slots", limit=2))
            await client.increment_concurrency_slots(names=["gpu-slots"], slots=2, mode="concurrency")

    async def tidy() -> None:
        async with get_client() as client:
            await client.delete_global_concurrency_limit_by_name("gpu-slots")

    asyncio.run(leak())
    try:
        shown = subprocess.run([*command, "--json"], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert json.loads(shown.stdout)["gpu_slots"] == {"limit": 2, "counted": 2, "holders": 0}
        table = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert "gpu-slots: 2 of 2 counted; GPU-pool runs Running or Cancelling: 0; 2 unheld" in table.stdout, table
    finally:
        asyncio.run(tidy())


def test_health_figures_and_defaults() -> None:
    now = datetime.now(UTC)
    runs = [
        RunRecord("d", "COMPLETED", now - timedelta(hours=3), now - timedelta(hours=3), timedelta(hours=2, minutes=1)),
        RunRecord("d", "SCHEDULED", now - timedelta(minutes=45), None, timedelta(0)),  # waiting, and late
        RunRecord("d", "CANCELLED", now, now, timedelta(seconds=5)),  # not counted in the rates
    ]
    (health,) = deployment_health(runs, now, Thresholds())
    assert health.success_rate == 1.0 and health.finished == 1
    assert health.breaches == ["duration 7260 s > 7200 s", "queue time 2700 s > 1800 s"]
    assert health.cpu_mean_pct is None  # nothing sampled
    busy = [RunRecord("g", "COMPLETED", now, now, timedelta(seconds=1), {"gpu_memory_max_pct": 97.5})]
    (gpu,) = deployment_health(busy, now, Thresholds(max_resource_pct=95))
    assert gpu.breaches == ["GPU memory 98 % > 95 %"]
    assert parse_window("7d") == timedelta(days=7) and parse_window("90m") == timedelta(minutes=90)
    with pytest.raises(ValueError, match="e.g. 7d"):
        parse_window("week")
