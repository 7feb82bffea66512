"""The autoscaler's parts below the stack (issue 17): demand as a pool's limits allow it, counted by hand and read
from a real Prefect server; a replica's create body copied from a container's inspect output (labels, its own
host name, a GPU of its own); and the draining worker, stopped by a real SIGTERM while it holds a run."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from services.autoscaling.demand import PoolLimits, QueuedRun, effective_demand
from services.autoscaling.replicas import (
    DEVICES,
    MANAGED,
    NUMBER,
    ComposeService,
    claimed_devices,
    removal_for,
    replica_config,
    uses_gpus,
    worker_limit_of,
)
from services.autoscaling.settings import AutoscalerSettings
from tests.conftest import free_port, require_docker, wait_until

ROOT = Path(__file__).resolve().parents[1]


# --- demand, by hand ---------------------------------------------------------------------------------------------
def runs(active: int = 0, ready: int = 0, queue: str = "low", deployment: str | None = None) -> list[QueuedRun]:
    return [QueuedRun(True, queue, deployment)] * active + [QueuedRun(False, queue, deployment)] * ready


def test_demand_counts_running_and_ready_runs() -> None:
    assert effective_demand(runs(active=1, ready=2), PoolLimits()) == 3
    assert effective_demand([], PoolLimits()) == 0


def test_a_deployments_own_limit_holds_its_runs_back_from_demand() -> None:
    # each of our deployments runs one at a time: two more of it queued need no worker
    limits = PoolLimits(deployments={"ev": 1})
    assert effective_demand(runs(active=1, ready=2, deployment="ev"), limits) == 1
    assert effective_demand(runs(ready=3, deployment="ev"), limits) == 1
    assert effective_demand(runs(ready=3, deployment="ev") + runs(ready=2, deployment="other"), limits) == 3


def test_queue_and_pool_limits_and_pauses_cap_demand() -> None:
    assert effective_demand(runs(ready=5, queue="high"), PoolLimits(queues={"high": 2})) == 2
    assert effective_demand(runs(active=2, ready=5, queue="high"), PoolLimits(queues={"high": 2})) == 2
    assert effective_demand(runs(active=7, ready=5), PoolLimits(pool=8)) == 8
    assert effective_demand(runs(active=1, ready=4), PoolLimits(paused=True)) == 1
    paused_low = PoolLimits(paused_queues=frozenset({"low"}))
    assert effective_demand(runs(ready=4) + runs(ready=1, queue="normal"), paused_low) == 1


# --- replicas, from an inspect output -------------------------------------------------------------------------------
def inspected(device_requests: list | None = None, command: list[str] | None = None) -> dict:
    """The parts of `docker inspect` of a compose-made worker that a replica is made from."""
    return {
        "Config": {
            "Hostname": "0123456789ab",
            "Image": "llm-pipeline:cpu",
            "Cmd": command or ["python", "-m", "workers.serve", "--pool", "p", "--with-healthcheck", "--limit", "4"],
            "Env": ["PREFECT_API_URL=http://prefect-server:4200/api", "NVIDIA_VISIBLE_DEVICES=all"],
            "Labels": {
                "com.docker.compose.project": "stack",
                "com.docker.compose.service": "gpu-worker",
                NUMBER: "1",
                "com.docker.compose.oneoff": "False",
            },
            "Healthcheck": {"Test": ["CMD", "true"]},
        },
        "HostConfig": {
            "RestartPolicy": {"Name": "unless-stopped"},
            "Mounts": [{"Type": "volume", "Source": "stack_shared", "Target": "/shared"}],
            "DeviceRequests": device_requests,
        },
        "NetworkSettings": {"Networks": {"stack_default": {"Aliases": ["stack-gpu-worker-1", "gpu-worker"]}}},
    }


def test_a_replica_is_one_of_the_services_own_with_a_host_name_of_its_own() -> None:
    body = replica_config(inspected(), "stack-gpu-worker-3", 3)
    assert "Hostname" not in body  # the worker's name (pool@host) tells replicas apart
    assert body["Labels"]["com.docker.compose.project"] == "stack"
    assert body["Labels"]["com.docker.compose.service"] == "gpu-worker"
    assert body["Labels"][NUMBER] == "3" and body["Labels"][MANAGED] == "true"
    assert body["HostConfig"]["Mounts"][0]["Target"] == "/shared"
    assert body["HostConfig"]["RestartPolicy"] == {"Name": "unless-stopped"}
    assert body["NetworkingConfig"]["EndpointsConfig"]["stack_default"]["Aliases"] == [
        "gpu-worker",
        "stack-gpu-worker-3",
    ]
    assert worker_limit_of(inspected()) == 4
    assert worker_limit_of(inspected(command=["prefect", "worker", "start"])) is None


def test_a_gpu_replica_is_pinned_to_a_device_of_its_own() -> None:
    by_count = [{"Driver": "nvidia", "Count": 1, "Capabilities": [["gpu"]]}]
    template = inspected(device_requests=by_count)
    assert uses_gpus(template) and not uses_gpus(inspected())
    devices = ["0", "1", "2", "3"]
    assert claimed_devices(template, devices) == {"0"}
    assert claimed_devices(inspected([{"Driver": "nvidia", "Count": -1}]), devices) == set(devices)
    body = replica_config(template, "stack-gpu-worker-2", 2, devices=["2"])
    [request] = body["HostConfig"]["DeviceRequests"]
    assert request["DeviceIDs"] == ["2"] and request["Count"] == 0
    assert "NVIDIA_VISIBLE_DEVICES=2" in body["Env"] and "NVIDIA_VISIBLE_DEVICES=all" not in body["Env"]
    assert body["Labels"][DEVICES] == "2"
    assert claimed_devices(body, devices) == {"2"}


def test_the_pools_it_scales_are_pool_equals_service_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    assert AutoscalerSettings().pool_services() == {
        "llm-pipeline-pool": "cpu-worker",
        "llm-pipeline-gpu-pool": "gpu-worker",
    }
    monkeypatch.setenv("SCALING_POOLS", "")
    assert AutoscalerSettings().pool_services() == {}
    monkeypatch.setenv("SCALING_POOLS", "llm-pipeline-pool")
    with pytest.raises(ValueError, match="pool=service"):
        AutoscalerSettings()


# --- against a real Prefect server ---------------------------------------------------------------------------------
def _pool(name: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    from workers import pools

    with get_client(sync_client=True) as client:
        client.create_work_pool(
            WorkPoolCreate(name=name, type="process", base_job_template=pools.process_job_template())
        )
        client.create_work_queue(name="low", work_pool_name=name, priority=1, concurrency_limit=10)


def _deploy(pool: str, name: str, limit: int | None = None) -> str:
    from prefect import flow

    return str(
        flow.from_source(source=str(ROOT), entrypoint="tests/orchestration_flows.py:sleeper").deploy(
            name=name, work_pool_name=pool, work_queue_name="low", concurrency_limit=limit, print_next_steps=False
        )
    )


def test_demand_read_from_the_api_leaves_out_what_a_limit_holds_back(prefect_server) -> None:
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    from services.autoscaling.demand import read_demand

    pool = f"demand-{uuid.uuid4().hex[:6]}"
    _pool(pool)
    _deploy(pool, f"{pool}-one-at-a-time", limit=1)
    _deploy(pool, f"{pool}-free")
    for _ in range(3):
        run_deployment(f"sleeper/{pool}-one-at-a-time", timeout=0)
    for _ in range(2):
        run_deployment(f"sleeper/{pool}-free", timeout=0)

    async def read() -> int:
        async with get_client() as client:
            return await read_demand(client, pool)

    # no worker: nothing runs; 1 of the limited deployment's 3 could start, and both free runs
    assert asyncio.run(read()) == 3


def test_slots_no_gpu_pool_run_holds_are_given_back_after_the_grace_and_only_those(prefect_server) -> None:
    """The GPU-slot audit against a real server: slots counted (taken without a lease, as a lost lease store leaves
    them) beyond the pool's Running runs are given back once every look for the grace has seen them, never
    before, and never the slot a Running run may hold; a look that finds no excess starts the clock again."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.deployments import run_deployment
    from prefect.states import Completed, Running

    from services.autoscaling.slots import SlotAudit

    pool, limit = f"audit-{uuid.uuid4().hex[:6]}", f"slots-{uuid.uuid4().hex[:6]}"
    _pool(pool)
    _deploy(pool, f"{pool}-stage")
    holder = run_deployment(f"sleeper/{pool}-stage", timeout=0)  # no worker: it is set Running by hand below

    async def go() -> list[tuple[int, int]]:
        audit = SlotAudit(limit, pool, grace_s=30)
        seen = []
        async with get_client() as client:
            missing = await audit.tick(client, 0.0)  # the limit not made yet: nothing to audit
            await client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=limit, limit=3))
            await client.increment_concurrency_slots(names=[limit], slots=3, mode="concurrency")
            await client.set_flow_run_state(holder.id, Running(), force=True)

            async def look(now: float) -> None:
                freed = await audit.tick(client, now)
                seen.append((freed, (await client.read_global_concurrency_limit_by_name(limit)).active_slots))

            for now in (0.0, 10.0, 29.0):  # 3 counted, 1 run that may hold one: 2 unheld, within the grace
                await look(now)
            await client.update_global_concurrency_limit(limit, GlobalConcurrencyLimitUpdate(active_slots=2))
            await look(31.0)  # past the grace: the fewest unheld seen (1, in the last look) given back
            await look(40.0)  # the holder's slot is left: counted 1, 1 Running
            await client.increment_concurrency_slots(names=[limit], slots=1, mode="concurrency")
            await look(50.0)  # unheld again: the clock starts
            await client.release_concurrency_slots(names=[limit], slots=1, occupancy_seconds=1)
            await look(60.0)  # a look with none unheld (a run that ended between the two reads, say)
            await client.increment_concurrency_slots(names=[limit], slots=1, mode="concurrency")
            await look(70.0)  # the clock starts again here, not at 50
            await look(95.0)
            await client.set_flow_run_state(holder.id, Completed(), force=True)
            await look(101.0)  # past the grace since 70: the fewest unheld seen since then (1), not the 2 now unheld
            await look(102.0)  # the holder's slot, now unheld, waits its own grace
            await look(133.0)
            return [(missing, -1), *seen]

    assert asyncio.run(go()) == [
        (0, -1),
        (0, 3), (0, 3), (0, 3),
        (1, 1),
        (0, 1),
        (0, 2),
        (0, 1),
        (0, 2), (0, 2),
        (1, 1),
        (0, 1),
        (1, 0),
    ]  # fmt: skip


def test_a_draining_worker_finishes_its_run_takes_no_new_one_then_exits(prefect_server, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    pool = f"drain-{uuid.uuid4().hex[:6]}"
    _pool(pool)
    _deploy(pool, pool)
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        [sys.executable, "-m", "workers.serve", "--pool", pool, "--limit", "2"],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={
            **os.environ,
            "PREFECT_API_URL": prefect_server.api_url,
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_WORKER_WEBSERVER_PORT": str(free_port()),
        },
    )
    try:
        held = run_deployment(f"sleeper/{pool}", parameters={"seconds": 12}, timeout=0)
        with get_client(sync_client=True) as client:

            def state(run_id: object) -> str:
                return client.read_flow_run(run_id).state.name

            wait_until(lambda: state(held.id) == "Running", 120, "the worker to start the run")
            worker.send_signal(signal.SIGTERM)  # what `docker stop` sends: the autoscaler's scale-down
            later = run_deployment(f"sleeper/{pool}", parameters={"seconds": 1}, timeout=0)
            wait_until(lambda: state(held.id) in ("Completed", "Failed", "Crashed"), 120, "the held run to end")
            assert state(held.id) == "Completed"
            worker.wait(timeout=60)
            assert worker.returncode == 0
            assert state(later.id) in ("Scheduled", "Late")  # never taken by the draining worker
    finally:
        if worker.poll() is None:
            worker.kill()
        log.close()
    output = (tmp_path / "worker.log").read_text()
    assert "draining: takes no more flow runs, 1 still running" in output, output[-2000:]
    assert "drained, stopping" in output


def test_a_scale_down_leaves_its_target_when_a_replica_left_since_the_count() -> None:
    """Three replicas of a compose service (real containers on the Engine) counted, a scale-down to one decided on
    that count, then one of them stopped by someone else before the autoscaler drains (seen on the stack: a worker
    drained by hand exited between the count and the drain). Draining "as many as the decision's difference" (two)
    would take both that are left; the autoscaler drains only what is over the target now, and one stays."""
    import docker

    require_docker()
    client = docker.from_env()
    project = f"scaledown-{uuid.uuid4().hex[:6]}"
    made = [
        client.containers.run(
            "debian:bookworm-slim",
            ["sleep", "infinity"],
            name=f"{project}-cpu-worker-{number}",
            labels={
                "com.docker.compose.project": project,
                "com.docker.compose.service": "cpu-worker",
                NUMBER: str(number),
                MANAGED: "true" if number > 1 else "false",
            },
            init=True,  # sleep takes the SIGTERM of `docker stop` (as the worker drains on it)
            detach=True,
        )  # fmt: skip
        for number in (1, 2, 3)
    ]
    try:
        service = ComposeService(client, project, "cpu-worker")
        counted = len(service.serving())
        assert counted == 3
        made[2].stop(timeout=5)  # gone between the count and the drain
        assert len(service.choose_for_removal(counted - 1)) == 2, "the old arithmetic: both that are left"
        drained = removal_for(service, keep=1)
        assert len(drained) == 1
        for replica in drained:
            service.drain(replica, timeout_s=5)
        wait_until(lambda: service.draining == 0, 60, "the drain")
        assert [r.status for r in service.replicas()] == ["running"]
        assert removal_for(service, keep=1) == []  # at the target: nothing more to drain
    finally:
        for container in made:
            with contextlib.suppress(Exception):
                container.remove(force=True)
