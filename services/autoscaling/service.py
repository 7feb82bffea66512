"""The autoscaler: every few seconds, each managed pool's demand from the Prefect API against its workers from the
Docker Engine API, the policy's decision, and the change made: replicas started, or drained and removed. Each
decision is a structured log line, a Prefect event on the work pool (the UI's event feed shows it) and a line of
the `llm-pipeline-autoscaler` variable that `llm-pipeline health` prints.

    python -m services.autoscaling          # in the stack: the `autoscaler` service, started by `make up`
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import socket
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.autoscaling.demand import read_demand
from services.autoscaling.policy import Decision, Observation, ScalingPolicy, ScalingState, decide, utilization
from services.autoscaling.replicas import (
    PROJECT,
    ComposeService,
    SwarmService,
    claimed_devices,
    removal_for,
    uses_gpus,
    worker_limit_of,
)
from services.autoscaling.settings import AutoscalerSettings, load_settings
from services.autoscaling.slots import SlotAudit

VARIABLE = "llm-pipeline-autoscaler"  # what `llm-pipeline health` reads
EVENT = "llm-pipeline.autoscaler.scaled"
TICK_FILE = Path("/tmp/autoscaler.tick")  # its mtime is the container's healthcheck


@dataclass
class ManagedPool:
    pool: str
    service: ComposeService | SwarmService
    policy: ScalingPolicy
    state: ScalingState = field(default_factory=ScalingState)
    devices: list[str] | None = None  # a GPU pool's devices; None: not pinned
    last: dict[str, Any] = field(default_factory=dict)


def _log() -> Any:
    from llm_pipeline.logging import get_logger

    return get_logger("autoscaler")


def gpu_devices(settings: AutoscalerSettings, docker_client: Any, image: str) -> list[str]:
    """The host's GPUs: SCALING_GPU_DEVICES when set, else asked of the NVIDIA runtime: `nvidia-smi` in a throwaway
    container of the GPU worker's image given every GPU (the runtime mounts the tool in). Empty when neither
    answers."""
    if settings.gpu_devices.strip():
        return [part.strip() for part in settings.gpu_devices.split(",") if part.strip()]
    try:
        from docker.types import DeviceRequest

        output = docker_client.containers.run(
            image,
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            device_requests=[DeviceRequest(count=-1, capabilities=[["gpu", "utility"]])],
            remove=True,
            entrypoint=[],
        )
        return [line.strip() for line in output.decode().splitlines() if line.strip()]
    except Exception as exc:
        _log().warning("autoscaler.gpu_probe_failed", error=str(exc)[:300])
        return []


class Autoscaler:
    def __init__(self, settings: AutoscalerSettings, docker_client: Any, project: str):
        self.settings = settings
        self.docker = docker_client
        self.project = project
        self.pools: list[ManagedPool] = []
        kind = SwarmService if settings.backend == "swarm" else ComposeService
        for pool, service in settings.pool_services().items():
            self.pools.append(ManagedPool(pool, kind(docker_client, project, service), settings.policy()))
        self.log = _log()
        self._configured: set[str] = set()
        self._errors: dict[str, str] = {}
        self._published: dict[str, Any] | None = None
        self.audit: SlotAudit | None = None
        if settings.slot_audit_grace > 0:
            from flows.outage import GPU_POOL, GPU_SLOTS

            self.audit = SlotAudit(GPU_SLOTS, GPU_POOL, settings.slot_audit_grace)

    # --- one tick ------------------------------------------------------------------------------------------------
    async def tick(self, client: Any) -> list[Decision]:
        made = []
        for managed in self.pools:
            try:
                decision = await self._tick_pool(client, managed)
            except Exception as exc:  # the API or the engine away for a moment, a pool not made yet: next tick
                error = f"{type(exc).__name__}: {str(exc)[:300]}"
                if self._errors.get(managed.pool) != error:  # said once, not every tick
                    self.log.warning("autoscaler.tick_failed", pool=managed.pool, error=error)
                self._errors[managed.pool] = error
                managed.last = {**managed.last, "error": error}
                continue
            if self._errors.pop(managed.pool, None):
                self.log.info("autoscaler.recovered", pool=managed.pool)
            if decision is not None:
                made.append(decision)
        await self._audit(client)
        await self._publish(client)
        TICK_FILE.touch()
        return made

    async def _audit(self, client: Any) -> None:
        if self.audit is None:
            return
        try:
            await self.audit.tick(client, time.monotonic())
        except Exception as exc:  # the API away for a moment: the next tick looks again
            error = f"{type(exc).__name__}: {str(exc)[:300]}"
            if self._errors.get("slot-audit") != error:
                self.log.warning("autoscaler.slot_audit_failed", error=error)
            self._errors["slot-audit"] = error
            return
        if self._errors.pop("slot-audit", None):
            self.log.info("autoscaler.recovered", part="slot-audit")

    async def _tick_pool(self, client: Any, managed: ManagedPool) -> Decision | None:
        service = managed.service
        for name in service.remove_exited():
            self.log.info("autoscaler.removed_exited", pool=managed.pool, container=name)
        serving = service.serving()
        template = serving[0] if serving else None
        if template is None:
            everything = service.replicas(everything=True)
            template = everything[0] if everything else None
        if template is None:  # not started (a profile that is off): nothing to copy, nothing to scale
            managed.last = {"replicas": 0, "note": f"no {service.service} container to copy"}
            return None
        self._configure(managed, template)
        demand = await read_demand(client, managed.pool)
        policy = managed.policy
        seen = Observation(at=time.monotonic(), demand=demand, workers=len(serving))
        decision, managed.state = decide(policy, managed.state, seen)
        level = utilization(demand, len(serving), policy.worker_limit)
        managed.last = {
            "replicas": len(serving),
            "draining": service.draining,
            "demand": demand,
            "capacity": len(serving) * policy.worker_limit,
            "utilization": None if math.isinf(level) else round(level, 3),
            "min": policy.min_workers,
            "max": policy.max_workers,
            "last_decision": managed.last.get("last_decision"),
        }
        if decision is None:
            return None
        await self._apply(client, managed, template, decision)
        return decision

    def _configure(self, managed: ManagedPool, template: Any) -> None:
        """Once per pool: its worker limit from the worker's own command line, and for a GPU pool its devices."""
        if managed.pool in self._configured:
            return
        self._configured.add(managed.pool)
        limit = worker_limit_of(template.attrs)
        if limit is not None and limit != managed.policy.worker_limit:
            managed.policy = replace(managed.policy, worker_limit=limit)
        if uses_gpus(template.attrs):
            managed.devices = gpu_devices(self.settings, self.docker, template.attrs["Config"]["Image"])
            most = min(managed.policy.max_workers, max(1, len(managed.devices)))
            if most < managed.policy.max_workers:
                managed.policy = replace(
                    managed.policy, max_workers=most, min_workers=min(managed.policy.min_workers, most)
                )
        self.log.info(
            "autoscaler.pool",
            pool=managed.pool,
            service=managed.service.service,
            worker_limit=managed.policy.worker_limit,
            min_workers=managed.policy.min_workers,
            max_workers=managed.policy.max_workers,
            gpus=managed.devices,
        )

    async def _apply(self, client: Any, managed: ManagedPool, template: Any, decision: Decision) -> None:
        service = managed.service
        change = decision.workers_to - decision.workers_from
        names: list[str] = []
        if change > 0:
            pins = None
            if managed.devices is not None:
                held = set().union(*(claimed_devices(r.attrs, managed.devices) for r in service.replicas()))
                free = [device for device in managed.devices if device not in held]
                pins = [[device] for device in free[:change]]
                change = len(pins)
            if change > 0:
                names = service.add(template, devices=pins, count=change)
        else:
            for replica in removal_for(service, decision.workers_to):
                service.drain(replica, self.settings.drain_timeout, done=self._drained(managed))
                names.append(replica.name)
        if not names and change > 0:  # a GPU pool with every GPU held: nothing was started
            self.log.warning("autoscaler.no_free_gpu", pool=managed.pool, wanted=decision.workers_to)
            return
        if not names:  # replicas left since the count: already at (or under) the target
            self.log.info("autoscaler.nothing_to_drain", pool=managed.pool, wanted=decision.workers_to)
            return
        shown = "inf" if math.isinf(decision.utilization) else f"{decision.utilization:.2f}"
        # down: exactly the target stays (removal_for counts the serving replicas as they are now)
        reached = decision.workers_from + len(names) if change > 0 else decision.workers_to
        message = f"scaled {managed.pool} {decision.workers_from} -> {reached}: {decision.reason}"
        self.log.info(
            "autoscaler.scaled",
            pool=managed.pool,
            service=service.service,
            direction=decision.direction,
            workers_from=decision.workers_from,
            workers_to=decision.workers_to,
            utilization=shown,
            reason=decision.reason,
            containers=names,
            message=message,
        )
        at = datetime.now(UTC).isoformat(timespec="seconds")
        managed.last["last_decision"] = {"message": message, "at": at, "containers": names}
        await self._event(client, managed, decision, message, names)

    def _drained(self, managed: ManagedPool) -> Any:
        def done(replica: Any, error: Exception | None) -> None:
            if error is None:
                self.log.info("autoscaler.drained", pool=managed.pool, container=replica.name)
            else:
                self.log.warning("autoscaler.drain_failed", pool=managed.pool, container=replica.name, error=str(error))

        return done

    async def _event(self, client: Any, managed: ManagedPool, decision: Decision, message: str, names: list) -> None:
        from prefect.events import emit_event

        try:
            work_pool = await client.read_work_pool(managed.pool)
            pool_id = str(work_pool.id)
        except Exception:
            pool_id = managed.pool
        emit_event(
            event=f"{EVENT}-{decision.direction}",
            resource={"prefect.resource.id": f"prefect.work-pool.{pool_id}", "prefect.resource.name": managed.pool},
            related=[
                {
                    "prefect.resource.id": f"llm-pipeline.compose-service.{self.project}.{managed.service.service}",
                    "prefect.resource.role": "compose-service",
                    "prefect.resource.name": managed.service.service,
                }
            ],
            payload={
                "message": message,
                "workers_from": decision.workers_from,
                "workers_to": decision.workers_to,
                "utilization": None if math.isinf(decision.utilization) else decision.utilization,
                "reason": decision.reason,
                "containers": names,
            },
        )

    async def _publish(self, client: Any) -> None:
        """The pools' state as the `llm-pipeline-autoscaler` variable, for `llm-pipeline health`: written when it
        changes, not every tick (each write is a `prefect.variable.updated` event in the UI's feed)."""
        from prefect.client.schemas.actions import VariableCreate, VariableUpdate

        value = {managed.pool: {"service": managed.service.service, **managed.last} for managed in self.pools}
        if value == self._published:
            return
        try:
            existing = await client.read_variable_by_name(VARIABLE)
            if existing is None:
                await client.create_variable(VariableCreate(name=VARIABLE, value=value))
            else:
                await client.update_variable(VariableUpdate(name=VARIABLE, value=value))
            self._published = value
        except Exception as exc:
            self.log.warning("autoscaler.publish_failed", error=str(exc)[:300])

    # --- the loop ------------------------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        from prefect.client.orchestration import get_client

        self.log.info(
            "autoscaler.started",
            project=self.project,
            backend=self.settings.backend,
            pools={m.pool: m.service.service for m in self.pools},
            interval_s=self.settings.interval,
            policy=str(self.settings.policy()),
            slot_audit_grace_s=self.settings.slot_audit_grace or None,
        )
        async with get_client() as client:
            while not stop.is_set():
                await self.tick(client)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.settings.interval)
        self.log.info("autoscaler.stopped", draining=sum(m.service.draining for m in self.pools))


STACK = "com.docker.stack.namespace"  # what `docker stack deploy` labels a stack's containers with


def own_project(docker_client: Any, fallback: str) -> str:
    """The compose project (or swarm stack) this container belongs to, from its own labels, so replicas join
    the right one."""
    try:
        labels = docker_client.containers.get(socket.gethostname()).labels
    except Exception:
        return fallback
    return labels.get(STACK) or labels.get(PROJECT) or fallback


def main() -> None:
    import os

    import docker
    from llm_pipeline.logging import configure_logging

    configure_logging(os.environ.get("LOG_LEVEL") or "INFO", structured=True)
    settings = load_settings()
    client = docker.from_env(timeout=60)
    autoscaler = Autoscaler(
        settings, client, own_project(client, os.environ.get("COMPOSE_PROJECT_NAME", "llm-pipeline"))
    )

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(number, stop.set)
        await autoscaler.run(stop)

    asyncio.run(go())
