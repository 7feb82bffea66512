"""Health figures from the Prefect API: flow runs in a window, with their deployments and the resource use
their pipelines recorded (the `<key>-resources` table artifacts), handed to the library's computation
(llm_pipeline.health). Used by `llm-pipeline health` and by the scheduled `health-check` deployment, which
records a table artifact and, for each deployment over a threshold, emits the `llm-pipeline.health.breached`
event that the alert automation (flows/alerts.py) sends to Slack, the webhook and email."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow

from flows.alerts import HEALTH_EVENT
from flows.artifacts import RESOURCES_SUFFIX, artifact_key
from llm_pipeline.health import DeploymentHealth, RunRecord, Thresholds, deployment_health, parse_window
from llm_pipeline.logging import get_logger

NO_DEPLOYMENT = "(no deployment)"
log = get_logger("health")


async def _run_resources(client: Any, run_ids: list[Any]) -> dict[str, dict[str, float | None]]:
    """flow run id -> the `(run)` row of its resources table artifact."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId

    found: dict[str, dict[str, float | None]] = {}
    for start in range(0, len(run_ids), 200):
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_=RESOURCES_SUFFIX)),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=run_ids[start : start + 200])),
        )
        for artifact in artifacts:
            rows = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
            run_row = next((r for r in rows or [] if isinstance(r, dict) and r.get("stage") == "(run)"), None)
            if run_row and artifact.flow_run_id:
                found[str(artifact.flow_run_id)] = {k: v for k, v in run_row.items() if k != "stage"}
    return found


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
        resources = await _run_resources(client, [r.id for r in runs])
    return [
        RunRecord(
            deployment=names.get(r.deployment_id, NO_DEPLOYMENT) if r.deployment_id else NO_DEPLOYMENT,
            # Late is a Scheduled state by name: it counts as waiting, and is shown as such.
            state="LATE" if r.state_name == "Late" else str(r.state_type.value),
            expected_start=r.expected_start_time,
            start=r.start_time,
            run_time=r.total_run_time,
            resources=resources.get(str(r.id)),
        )
        for r in runs
    ]


AUTOSCALER_VARIABLE = "llm-pipeline-autoscaler"  # written by services/autoscaling every tick


async def fetch_pools() -> list[dict[str, Any]]:
    """Each work pool's workers as Prefect sees them (online: heartbeat within its window) and, for the pools the
    autoscaler scales, its last reading: replicas, draining, demand, capacity, utilization, last decision."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import WorkerFilter, WorkerFilterStatus

    async with get_client() as client:
        scaled = await client.read_variable_by_name(AUTOSCALER_VARIABLE)
        scaled = scaled.value if scaled is not None and isinstance(scaled.value, dict) else {}
        pools = []
        for pool in await client.read_work_pools():
            online = await client.read_workers_for_work_pool(
                pool.name, worker_filter=WorkerFilter(status=WorkerFilterStatus(any_=["ONLINE"]))
            )
            pools.append({"pool": pool.name, "workers_online": len(online), "autoscaler": scaled.get(pool.name)})
    return pools


def pool_status() -> list[dict[str, Any]]:
    return asyncio.run(fetch_pools())


def gpu_slot_status() -> dict[str, int] | None:
    """`gpu-slots` as flows/outage.py's `slot_reading` sees it (None where the limit does not exist)."""
    from prefect.client.orchestration import get_client

    from flows.outage import slot_reading

    async def read() -> dict[str, int] | None:
        async with get_client() as client:
            return await slot_reading(client)

    return asyncio.run(read())


def emit_breach(source: str, name: str, window: str, breaches: list[str], figures: dict[str, Any]) -> None:
    """The event the health alert pages on (flows/alerts.py's templates read this payload), about the resource
    `llm-pipeline.health.<source>`: a deployment over a threshold, or the autoscaler's unheld GPU slots."""
    from prefect.events import emit_event

    emit_event(
        event=HEALTH_EVENT,
        resource={"prefect.resource.id": f"llm-pipeline.health.{source}", "prefect.resource.name": name},
        payload={"deployment": name, "window": window, "breaches": breaches, "figures": figures},
    )


def pipeline_health(window: timedelta, thresholds: Thresholds) -> list[DeploymentHealth]:
    now = datetime.now(UTC)
    return deployment_health(asyncio.run(fetch_runs(window, now)), now, thresholds)


@flow(name="health-check")
def health_check(
    window: str = "24h",
    min_success_rate: float = 0.95,
    max_error_rate: float = 0.05,
    max_duration: str = "2h",
    max_queue: str = "30m",
    max_resource_pct: float = 80.0,
) -> dict[str, Any]:
    """The five health figures per deployment over `window`; a table artifact, and an alert event for each
    deployment that crosses a threshold. The run itself completes either way: a breach is news, not a failure."""
    from prefect.artifacts import create_table_artifact

    thresholds = Thresholds(
        min_success_rate, max_error_rate, parse_window(max_duration), parse_window(max_queue), max_resource_pct
    )
    report = pipeline_health(parse_window(window), thresholds)
    rows = [{**h.as_dict(), "breaches": "; ".join(h.breaches) or "ok"} for h in report]
    if rows:
        create_table_artifact(table=rows, key="pipeline-health", description=f"health over the last {window}")
    unhealthy = [h for h in report if h.breaches]
    for h in unhealthy:
        figures = {k: v for k, v in h.as_dict().items() if k not in ("deployment", "breaches")}
        emit_breach(artifact_key(h.deployment), h.deployment, window, h.breaches, figures)
        log.warning("health_breached", deployment=h.deployment, breaches=h.breaches)
    return {"window": window, "deployments": len(report), "unhealthy": [h.deployment for h in unhealthy]}
