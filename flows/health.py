"""Health figures from the Prefect API: flow runs in a window, with their deployments, handed to the library's
computation (llm_pipeline.health). Used by `llm-pipeline health`."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from llm_pipeline.health import DeploymentHealth, RunRecord, Thresholds, deployment_health

NO_DEPLOYMENT = "(no deployment)"


async def fetch_runs(window: timedelta, now: datetime) -> list[RunRecord]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterExpectedStartTime

    since = now - window
    async with get_client() as client:
        runs = []
        offset = 0
        while True:  # the API pages at 200
            page = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(expected_start_time=FlowRunFilterExpectedStartTime(after_=since)),
                limit=200,
                offset=offset,
            )
            runs.extend(page)
            offset += len(page)
            if len(page) < 200:
                break
        names = {}
        for deployment_id in {r.deployment_id for r in runs if r.deployment_id}:
            deployment = await client.read_deployment(deployment_id)
            flow = await client.read_flow(deployment.flow_id)
            names[deployment_id] = f"{flow.name}/{deployment.name}"
    return [
        RunRecord(
            deployment=names.get(r.deployment_id, NO_DEPLOYMENT) if r.deployment_id else NO_DEPLOYMENT,
            # Late is a Scheduled state by name: it counts as waiting, and is shown as such.
            state="LATE" if r.state_name == "Late" else str(r.state_type.value),
            expected_start=r.expected_start_time,
            start=r.start_time,
            run_time=r.total_run_time,
        )
        for r in runs
    ]


def pipeline_health(window: timedelta, thresholds: Thresholds) -> list[DeploymentHealth]:
    now = datetime.now(UTC)
    return deployment_health(asyncio.run(fetch_runs(window, now)), now, thresholds)
