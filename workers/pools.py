"""Work pools, their queues and the GPU-slot limit, as code. `apply` is idempotent: it creates what is missing,
updates what differs, and reports what it changed (nothing, the second time).

    python -m workers.pools            # against PREFECT_API_URL; `make deploy` runs it first

Pools (the spec's work_pool_config):
  llm-pipeline-pool         process worker(s) on CPU: data and QA stages, the main flows
  llm-pipeline-gpu-pool     process worker(s) on a GPU host: the evaluation deployment
  llm-pipeline-docker-pool  docker worker variant: one container per flow run from the project image; GPUs
                            through the base job template's device requests (container_create_kwargs)
Each pool has queues high / normal / low at priorities 1 / 2 / 3 with concurrency limits 2 / 5 / 10. Prefect
gives every pool a `default` queue at priority 1; it is moved below the three (priority 4, limit 1): deployments
here always name their queue, so `default` only catches a deployment created by hand without one.
"""

from __future__ import annotations

import asyncio
import copy
import os
from dataclasses import dataclass, field
from typing import Any

from flows.outage import GPU_POOL, GPU_SLOTS  # the GPU stages' pool, and the global limit they hold a slot of

CPU_POOL = "llm-pipeline-pool"
DOCKER_POOL = "llm-pipeline-docker-pool"
IMAGE = os.environ.get("LLM_PIPELINE_IMAGE", "llm-pipeline:cpu")
COMPOSE_PROJECT = os.environ.get("COMPOSE_PROJECT_NAME", "llm-pipeline")
HEARTBEAT_SECONDS = os.environ.get("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "30")
CLIENT_RETRY_EXTRA_CODES = os.environ.get("PREFECT_CLIENT_RETRY_EXTRA_CODES", "500")
# A flow run's process retries an API call this many times (back-off 2, 4, ... 128 s: about 4 minutes; Prefect's
# default, 5, is about a minute). A run that ends while the API is away reports its end once it is back instead of
# dying with the run left Running (then Crashed by its worker, and a GPU stage run again): tests/test_api_outage.py.
# The workers keep the default: a poll blocked for minutes fails their health check.
FLOW_RUN_CLIENT_RETRIES = os.environ.get("FLOW_RUN_CLIENT_MAX_RETRIES", "7")


@dataclass(frozen=True)
class QueueSpec:
    name: str
    priority: int
    limit: int
    description: str = ""


QUEUES = (
    QueueSpec("high", 1, 2, "scheduled production runs (EV charging)"),
    QueueSpec("normal", 2, 5, "weekly and on-demand runs"),
    QueueSpec("low", 3, 10, "tests and backfills"),
    QueueSpec("default", 4, 1, "catch-all for deployments that name no queue; ours always name one"),
)


@dataclass
class PoolSpec:
    name: str
    type: str
    limit: int | None
    description: str
    queues: tuple[QueueSpec, ...] = QUEUES
    base_job_template: dict[str, Any] = field(default_factory=dict)


def docker_job_template() -> dict[str, Any]:
    """prefect-docker's default template, with the project image, the shared volume and network, and GPUs."""
    from prefect_docker.worker import DockerWorker

    template = copy.deepcopy(DockerWorker.get_default_base_job_template())
    variables = template["variables"]["properties"]
    variables["image"]["default"] = IMAGE
    # Images are built on the host (`make up`); a pull would fail where no registry is reachable.
    variables["image_pull_policy"]["default"] = "Never"
    variables["volumes"]["default"] = [f"{COMPOSE_PROJECT}_shared:/shared"]
    variables["networks"]["default"] = [f"{COMPOSE_PROJECT}_default"]
    variables["auto_remove"]["default"] = True
    # GPUs through docker-py DeviceRequests: all GPUs by default. A host without the NVIDIA runtime rejects any
    # nvidia request, so CPU-only deployments set the job variable container_create_kwargs to {} (see
    # flows/deployments.py, LLM_PIPELINE_GPU=0).
    variables["container_create_kwargs"]["default"] = {
        "device_requests": [{"driver": "nvidia", "count": -1, "capabilities": [["gpu"]]}]
    }
    # A flow-run container's heartbeats must come as often as the workers' do: the zombie automation crashes a
    # deployment run whose heartbeats stop for RECOVERY_HEARTBEAT_WINDOW (Prefect's default is every 180 s).
    # And it rides out a database restart as they do: a 500 from the API is retried (docker-compose.yml says why).
    variables["env"]["default"] = {
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": HEARTBEAT_SECONDS,
        "PREFECT_CLIENT_RETRY_EXTRA_CODES": CLIENT_RETRY_EXTRA_CODES,
        "PREFECT_CLIENT_MAX_RETRIES": FLOW_RUN_CLIENT_RETRIES,
    }
    return template


def process_job_template() -> dict[str, Any]:
    """Prefect's process template; a flow run's process inherits its worker's environment, and gets this on top."""
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    template["variables"]["properties"]["env"]["default"] = {"PREFECT_CLIENT_MAX_RETRIES": FLOW_RUN_CLIENT_RETRIES}
    return template


def pool_specs() -> list[PoolSpec]:
    return [
        PoolSpec(
            CPU_POOL,
            "process",
            int(os.environ.get("CPU_POOL_LIMIT", "8")),
            "CPU workers: data, dedup and QA stages, and the main pipeline flows",
            base_job_template=process_job_template(),
        ),
        PoolSpec(
            GPU_POOL,
            "process",
            int(os.environ.get("GPU_POOL_LIMIT", "2")),
            "GPU workers: model evaluation (falls back to CPU where no GPU is present)",
            base_job_template=process_job_template(),
        ),
        PoolSpec(
            DOCKER_POOL,
            "docker",
            int(os.environ.get("DOCKER_POOL_LIMIT", "4")),
            "docker worker variant: one container per flow run from the project image",
            base_job_template=docker_job_template(),
        ),
    ]


async def apply(client: Any | None = None) -> list[str]:
    """Bring pools, queues and limits to the specs above; returns a line per change (empty when none)."""
    from prefect.client.orchestration import get_client

    if client is None:
        async with get_client() as owned:
            return await apply(owned)
    changes: list[str] = []
    for spec in pool_specs():
        changes += await _apply_pool(client, spec)
    changes += await _apply_global_limit(client, GPU_SLOTS, int(os.environ.get("GPU_SLOTS", "1")))
    return changes


async def _apply_pool(client: Any, spec: PoolSpec) -> list[str]:
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound

    changes = []
    try:
        pool = await client.read_work_pool(spec.name)
    except ObjectNotFound:
        pool = await client.create_work_pool(
            WorkPoolCreate(
                name=spec.name,
                type=spec.type,
                description=spec.description,
                concurrency_limit=spec.limit,
                base_job_template=spec.base_job_template,
            )
        )
        changes.append(f"created pool {spec.name} ({spec.type}, limit {spec.limit})")
    else:
        if pool.type != spec.type:
            raise RuntimeError(
                f"pool {spec.name} exists with type {pool.type}, expected {spec.type}: "
                "delete it (prefect work-pool delete) and deploy again"
            )
        update = {}
        if pool.concurrency_limit != spec.limit:
            update["concurrency_limit"] = spec.limit
        if pool.description != spec.description:
            update["description"] = spec.description
        if pool.base_job_template != spec.base_job_template:
            update["base_job_template"] = spec.base_job_template
        if update:
            await client.update_work_pool(spec.name, WorkPoolUpdate(**update))
            changes.append(f"updated pool {spec.name}: {', '.join(sorted(update))}")
    existing = {q.name: q for q in await client.read_work_queues(work_pool_name=spec.name)}
    for queue in spec.queues:
        current = existing.get(queue.name)
        if current is None:
            await client.create_work_queue(
                name=queue.name,
                work_pool_name=spec.name,
                priority=queue.priority,
                concurrency_limit=queue.limit,
                description=queue.description,
            )
            changes.append(f"created queue {spec.name}/{queue.name} (priority {queue.priority}, limit {queue.limit})")
        elif (current.priority, current.concurrency_limit, current.description) != (
            queue.priority,
            queue.limit,
            queue.description,
        ):
            await client.update_work_queue(
                current.id, priority=queue.priority, concurrency_limit=queue.limit, description=queue.description
            )
            changes.append(f"updated queue {spec.name}/{queue.name}")
    return changes


async def _apply_global_limit(client: Any, name: str, limit: int) -> list[str]:
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectNotFound

    try:
        current = await client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        await client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
        return [f"created global concurrency limit {name} = {limit}"]
    if current.limit != limit or not current.active:
        await client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=limit, active=True))
        return [f"updated global concurrency limit {name} = {limit}"]
    return []


def main() -> None:
    changes = asyncio.run(apply())
    for line in changes or ["pools, queues and limits already up to date"]:
        print(line)


if __name__ == "__main__":
    main()
