"""The scheduled deployments, as code. `make deploy` runs this after workers/pools.py; rerunning it updates the
deployments in place (same names), so it is idempotent.

    python -m flows.deployments                # against PREFECT_API_URL

Why Python rather than prefect.yaml: the schedules' timezone, the source folder and the pools come from the
environment and from workers/pools.py, and one function registers all of them the same way, which a test can
call against a real server. Each deployment but crash-silent-run has a concurrency limit of 1 with ENQUEUE, so a
scheduled run never overlaps the previous one: the next waits in the queue instead.

| deployment                             | flow           | pool      | queue  | schedule                  |
| test-pipeline                          | llm-pipeline   | CPU       | low    | none (manual)             |
| ev-charging-pipeline                   | llm-pipeline   | CPU       | high   | 0 3 * * * (daily 03:00)   |
| general-pipeline                       | llm-pipeline   | CPU       | normal | 0 2 * * 0 (Sunday 02:00)  |
| evaluate-models (each GPU-pool stage)  | run-stage      | GPU       | high   | none (called by the above)|
| health-check                           | health-check   | CPU       | normal | 0 * * * * (hourly)        |
| resubmit-crashed                       | resubmit-crashed| CPU      | high   | none (the recovery automation)|
| crash-silent-run                       | crash-silent-run| CPU      | high   | none (zombie, stuck-pending rules)|
| test-pipeline-docker                   | llm-pipeline   | docker    | low    | none (the docker variant) |

The docker variant runs from the project image (code baked in at /app), one container per flow run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_pipeline.stages import PIPELINE
from workers.pools import CPU_POOL, DOCKER_POOL, GPU_POOL, IMAGE

SOURCE = Path(os.environ.get("LLM_PIPELINE_SOURCE", Path(__file__).resolve().parents[1]))
TIMEZONE = os.environ.get("PIPELINE_SCHEDULE_TIMEZONE", "UTC")
# 0 on hosts without the NVIDIA runtime (docker-compose.cpu.yml sets it): docker-pool runs request no GPU.
GPU_ENABLED = os.environ.get("LLM_PIPELINE_GPU", "1") != "0"
HEALTH_CRON = os.environ.get("HEALTH_CHECK_CRON", "0 * * * *")
HEALTH_WINDOW = os.environ.get("HEALTH_CHECK_WINDOW", "24h")


@dataclass(frozen=True)
class DeploymentSpec:
    name: str
    entrypoint: str
    pool: str
    queue: str
    cron: str | None
    parameters: dict[str, Any]
    description: str
    tags: tuple[str, ...] = ()
    limit: int | None = 1  # runs at once (None: only the queue's limit)


def specs(cpu_pool: str = CPU_POOL, gpu_pool: str = GPU_POOL) -> list[DeploymentSpec]:
    pipeline = "flows/pipeline.py:llm_pipeline"
    return [
        DeploymentSpec(
            "test-pipeline",
            pipeline,
            cpu_pool,
            "low",
            None,
            {"config_path": "configs/test.yaml"},
            "Minimal processing on the sample: triggered by hand and by `make run-test`.",
            ("test",),
        ),
        DeploymentSpec(
            "ev-charging-pipeline",
            pipeline,
            cpu_pool,
            "high",
            "0 3 * * *",
            {"config_path": "configs/ev_charging.yaml"},
            "EV-charging knowledge, daily at 03:00.",
            ("production", "ev"),
        ),
        DeploymentSpec(
            "general-pipeline",
            pipeline,
            cpu_pool,
            "normal",
            "0 2 * * 0",
            {"config_path": "configs/general.yaml"},
            "General domain, weekly on Sunday at 02:00.",
            ("production",),
        ),
        *(
            DeploymentSpec(
                stage.name,
                "flows/pipeline.py:stage_flow",
                gpu_pool,
                "high",
                None,
                {},
                f"The {stage.name} stage on the GPU pool; called by the pipelines with run_deployment.",
                ("gpu",),
            )
            for stage in PIPELINE
            if stage.pool == "gpu"
        ),
        DeploymentSpec(
            "resubmit-crashed",
            "flows/recovery.py:resubmit_crashed",
            cpu_pool,
            "high",
            None,
            {"flow_run_id": ""},
            "Resubmits a Crashed run with its parameters (RECOVERY_MAX_RESUBMITS per original run); started by the "
            "`llm-pipeline: resubmit crashed flow runs` automation.",
            ("recovery",),
        ),
        DeploymentSpec(
            "crash-silent-run",
            "flows/recovery.py:crash_if_silent",
            cpu_pool,
            "high",
            None,
            {"flow_run_id": ""},
            "Sets a run whose heartbeats stopped Crashed, unless it beats again (heartbeats are lost while the API is "
            "away); started by the `llm-pipeline: crash zombie flow runs` automation.",
            ("recovery",),
            limit=None,  # an API outage silences every running run at once: their checks need not wait in line
        ),
        DeploymentSpec(
            "health-check",
            "flows/health.py:health_check",
            cpu_pool,
            "normal",
            HEALTH_CRON,
            {"window": HEALTH_WINDOW},
            "Success, errors, durations, queue times and resource use per deployment against the spec's "
            "thresholds; a breach raises the `llm-pipeline: health threshold crossed` alert.",
            ("monitoring",),
        ),
    ]


def deploy_all(
    source: Path = SOURCE,
    timezone: str = TIMEZONE,
    cpu_pool: str = CPU_POOL,
    gpu_pool: str = GPU_POOL,
    only: list[str] | None = None,
) -> list[str]:
    """Register (or update) every deployment; returns their ids."""
    from prefect import flow
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.schedules import Cron

    ids = []
    for spec in specs(cpu_pool, gpu_pool):
        if only and spec.name not in only:
            continue
        loaded = flow.from_source(source=str(source), entrypoint=spec.entrypoint)
        ids.append(
            str(
                loaded.deploy(
                    name=spec.name,
                    work_pool_name=spec.pool,
                    work_queue_name=spec.queue,
                    schedules=[Cron(spec.cron, timezone=timezone)] if spec.cron else [],
                    parameters=spec.parameters,
                    description=spec.description,
                    tags=list(spec.tags),
                    concurrency_limit=ConcurrencyLimitConfig(
                        limit=spec.limit, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE
                    )
                    if spec.limit
                    else None,
                    print_next_steps=False,
                    build=False,
                    push=False,
                )
            )
        )
    if not only or "test-pipeline-docker" in only:
        ids.append(deploy_docker_variant())
    return ids


def deploy_docker_variant(image: str = IMAGE, pool: str = DOCKER_POOL) -> str:
    """The test pipeline on the docker pool: the flow-run container is the project image, so no source pull."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    from flows.pipeline import llm_pipeline

    job_variables: dict[str, Any] = {} if GPU_ENABLED else {"container_create_kwargs": {}}
    return str(
        llm_pipeline.deploy(
            name="test-pipeline-docker",
            work_pool_name=pool,
            work_queue_name="low",
            image=image,
            build=False,
            push=False,
            parameters={"config_path": "configs/test.yaml"},
            job_variables=job_variables,
            description="The test pipeline in a container per flow run (docker worker variant).",
            tags=["test"],
            concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE),
            print_next_steps=False,
        )
    )


def main() -> None:
    ids = deploy_all()
    for deployment_id, spec in zip(ids, specs(), strict=False):
        schedule = f"cron '{spec.cron}' {TIMEZONE}" if spec.cron else "no schedule"
        print(f"deployed {spec.name:22} pool={spec.pool} queue={spec.queue} {schedule} id={deployment_id}")
    print(f"deployed {'test-pipeline-docker':22} pool={DOCKER_POOL} queue=low image={IMAGE} id={ids[-1]}")


if __name__ == "__main__":
    main()
