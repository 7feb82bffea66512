"""A pool's demand as the autoscaler counts it: the flow runs that occupy a worker (Running, Pending, Cancelling)
plus those a new worker could start now (Scheduled or Late and due), read from the Prefect API.

A worker cannot start a run that a limit holds back, so such a run is not demand: a deployment's own concurrency
limit (each of ours is 1: a second run waits as AwaitingConcurrencySlot), a work queue's limit (high 2, normal 5,
low 10), a paused queue or pool, and the pool's limit over the total. Counting them would add workers that sit idle.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

ACTIVE = ("RUNNING", "PENDING", "CANCELLING")
HELD = "AwaitingConcurrencySlot"  # a deployment's limit turned the run back: it waits for a slot, not a worker


@dataclass(frozen=True)
class QueuedRun:
    active: bool  # holds a worker slot now
    queue: str
    deployment: str | None


@dataclass(frozen=True)
class PoolLimits:
    pool: int | None = None
    paused: bool = False
    queues: dict[str, int | None] = field(default_factory=dict)  # queue name -> limit (None: no limit)
    paused_queues: frozenset[str] = frozenset()
    deployments: dict[str, int] = field(default_factory=dict)  # deployment id -> its concurrency limit


def effective_demand(runs: list[QueuedRun], limits: PoolLimits) -> int:
    """Active runs plus the ready runs that some worker could start now, given every limit in their way."""
    active = [run for run in runs if run.active]
    ready = [run for run in runs if not run.active]
    if limits.paused:
        ready = []
    busy_queue = Counter(run.queue for run in active)
    busy_deployment = Counter(run.deployment for run in active if run.deployment)
    startable = 0
    room = max(0, limits.pool - len(active)) if limits.pool is not None else len(ready)
    for run in ready:
        if startable >= room:
            break
        if run.queue in limits.paused_queues:
            continue
        queue_limit = limits.queues.get(run.queue)
        if queue_limit is not None and busy_queue[run.queue] >= queue_limit:
            continue
        deployment_limit = limits.deployments.get(run.deployment or "")
        if deployment_limit is not None and busy_deployment[run.deployment] >= deployment_limit:
            continue
        busy_queue[run.queue] += 1  # once started it takes the slot the next ready run would need
        if run.deployment:
            busy_deployment[run.deployment] += 1
        startable += 1
    return len(active) + startable


async def read_demand(client: Any, pool: str, now: datetime | None = None, cap: int = 200) -> int:
    """`effective_demand` of `pool` from the API (`client`: Prefect's async client). Reads at most `cap` runs of
    each kind (the API's page): more than the most workers could take changes no decision."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterNextScheduledStartTime,
        FlowRunFilterState,
        FlowRunFilterStateName,
        FlowRunFilterStateType,
        WorkPoolFilter,
        WorkPoolFilterName,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    now = now or datetime.now(UTC)
    in_pool = WorkPoolFilter(name=WorkPoolFilterName(any_=[pool]))
    active = await client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType(name) for name in ACTIVE]))
        ),
        work_pool_filter=in_pool,
        limit=cap,
    )
    ready = await client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]),
                name=FlowRunFilterStateName(not_any_=[HELD]),
            ),
            next_scheduled_start_time=FlowRunFilterNextScheduledStartTime(before_=now),
        ),
        work_pool_filter=in_pool,
        sort=FlowRunSort.NEXT_SCHEDULED_START_TIME_ASC,
        limit=cap,
    )
    runs = [
        QueuedRun(active=kind == "active", queue=run.work_queue_name or "default", deployment=_id(run.deployment_id))
        for kind, batch in (("active", active), ("ready", ready))
        for run in batch
    ]
    return effective_demand(runs, await read_limits(client, pool, {run.deployment for run in runs} - {None}))


async def read_limits(client: Any, pool: str, deployment_ids: set[str | None]) -> PoolLimits:
    work_pool = await client.read_work_pool(pool)
    queues = await client.read_work_queues(work_pool_name=pool)
    deployments: dict[str, int] = {}
    for deployment_id in deployment_ids:
        try:
            deployment = await client.read_deployment(deployment_id)
        except Exception:  # deleted since the run was made: its runs count without a deployment limit
            continue
        limit = getattr(getattr(deployment, "global_concurrency_limit", None), "limit", None)
        if limit is not None:
            deployments[str(deployment_id)] = int(limit)
    return PoolLimits(
        pool=work_pool.concurrency_limit,
        paused=bool(work_pool.is_paused),
        queues={queue.name: queue.concurrency_limit for queue in queues},
        paused_queues=frozenset(queue.name for queue in queues if queue.is_paused),
        deployments=deployments,
    )


def _id(value: Any) -> str | None:
    return str(value) if value is not None else None
