"""The same compose files deployed as a Docker Swarm stack (issue 17, must-have 7), on a single-node swarm: `make
swarm-up` and `make swarm-deploy` bring it up, the workers are a replicated service, and the autoscaler scales that
service's replicas (SCALING_BACKEND=swarm) with three queued pipelines: above one, all three complete, back to one.

The engine is put in swarm mode for this module and taken out after it when it was not in swarm mode before.
The image comes from the session's compose stack (tests/stack.py builds it).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import published_port, wait_until
from tests.stack import ROOT, SWARM_STACK, make, set_env
from tests.test_autoscaling_stack import AUTOSCALING, FINAL, QUEUE_PIPELINES

pytestmark = pytest.mark.slow
STACK = SWARM_STACK


def docker(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


def replicas_of(service: str) -> int:
    spec = json.loads(docker("service", "inspect", f"{STACK}_{service}").stdout)[0]["Spec"]
    return spec["Mode"]["Replicated"]["Replicas"]


def running_tasks(service: str) -> int:
    listed = docker("service", "ps", "-q", "--filter", "desired-state=running", f"{STACK}_{service}").stdout
    return len(listed.split())


def autoscaler_logs() -> str:
    logs = docker("service", "logs", "--raw", f"{STACK}_autoscaler")
    return logs.stdout + logs.stderr


@pytest.fixture(scope="module")
def swarm(stack, tmp_path_factory) -> Iterator[dict[str, Any]]:
    state = docker("info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip()
    joined_here = state != "active"
    if joined_here:
        init = docker("swarm", "init", "--advertise-addr", "127.0.0.1")
        assert init.returncode == 0, init.stderr
    port, outputs = published_port(), published_port()
    env_file = tmp_path_factory.mktemp("swarm") / "swarm.env"
    env_file.write_text(Path(stack["env"]["ENV_FILE"]).read_text())
    set_env(
        env_file,
        {
            **AUTOSCALING,
            "PREFECT_PORT": str(port),
            "OUTPUTS_PORT": str(outputs),
            "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",
        },
    )
    env = {**os.environ, "ENV_FILE": str(env_file), "STACK": STACK, "GPU": "0", "COMPOSE_PROJECT_NAME": STACK}
    remove_stack(env)  # what a session killed before its teardown left (its pgdata holds another password)
    try:
        up = make("swarm-up", env, timeout=600)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        api = httpx.Client(base_url=f"http://127.0.0.1:{port}/api", auth=tuple(stack["auth"].split(":", 1)), timeout=20)

        def answers() -> bool:
            try:
                return api.get("/health").status_code == 200 and api.post("/work_pools/filter", json={}).is_success
            except httpx.HTTPError:
                return False

        wait_until(answers, 600, "the swarm stack's API")
        deployed = make("swarm-deploy", env, timeout=600)
        assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
        yield {"env": env, "api": api, "port": port, "auth": stack["auth"]}
    finally:
        remove_stack(env)
        if joined_here:
            docker("swarm", "leave", "--force")


def remove_stack(env: dict[str, str]) -> None:
    """The swarm stack, its containers and its volumes gone (a no-op where there is none)."""
    make("swarm-down", env, timeout=300)
    wait_until(
        lambda: not docker("ps", "-aq", "--filter", f"label=com.docker.stack.namespace={STACK}").stdout.split(),
        300,
        "the swarm stack's containers to go",
    )
    volumes = docker("volume", "ls", "-q", "--filter", f"label=com.docker.stack.namespace={STACK}").stdout.split()
    if volumes:
        docker("volume", "rm", *volumes)


def test_the_swarm_stacks_workers_are_a_replicated_service_the_autoscaler_scales(swarm) -> None:
    api = swarm["api"]
    assert replicas_of("cpu-worker") == 1
    wait_until(lambda: '"backend": "swarm"' in autoscaler_logs(), 120, "the autoscaler started on its swarm backend")

    queued = subprocess.run(
        [sys.executable, "-c", QUEUE_PIPELINES],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={
            **os.environ,
            "PREFECT_API_URL": f"http://127.0.0.1:{swarm['port']}/api",
            "PREFECT_API_AUTH_STRING": swarm["auth"],
        },
        timeout=300,
    )
    assert queued.returncode == 0, queued.stderr[-3000:]
    run_ids = json.loads(queued.stdout.strip().splitlines()[-1])

    wait_until(lambda: replicas_of("cpu-worker") > 1, 240, "the cpu-worker service scaled above one replica")
    wait_until(lambda: running_tasks("cpu-worker") > 1, 240, "a second cpu-worker task running")

    def state(run: str) -> str | None:
        try:
            return api.get(f"/flow_runs/{run}").json().get("state_type")
        except httpx.HTTPError:
            return None

    finals = {run: wait_until(lambda run=run: (s := state(run)) in FINAL and s, 900, f"run {run}") for run in run_ids}
    assert finals == dict.fromkeys(run_ids, "COMPLETED")
    wait_until(lambda: replicas_of("cpu-worker") == 1, 180, "the service back to one replica")
    scaled = [json.loads(line) for line in autoscaler_logs().splitlines() if '"autoscaler.scaled"' in line]
    assert any(re.fullmatch(r"scaled llm-pipeline-pool 1 -> [23]: .*", s["message"]) for s in scaled), scaled
    assert any(s["direction"] == "down" and s["workers_to"] == 1 for s in scaled), scaled
