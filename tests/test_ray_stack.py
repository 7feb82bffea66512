"""The stack's `ray` profile: ray-head and two ray-worker nodes from the project's image, the test deployment run on
the cpu-worker with `execution.engine=ray` to Completed, its load and dedup work and evaluation's scoring (from the
gpu-worker) done as Ray tasks on the worker nodes (Ray's state API, asked on the head), the dashboard on 127.0.0.1
only, and nothing left after `down`."""

from __future__ import annotations

import json
import re

import pytest

from tests.stack import compose, shared

pytestmark = pytest.mark.slow

RAY_SERVICES = ("ray-head", "ray-worker")


@pytest.fixture
def ray_profile(stack, deployed):
    env = stack["env"]
    up = compose(env, "--profile", "ray", "up", "-d", "--wait", *RAY_SERVICES, timeout=900)
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    yield env
    down = compose(env, "--profile", "ray", "rm", "-s", "-f", *RAY_SERVICES, timeout=300)
    assert down.returncode == 0, down.stderr[-2000:]


def test_the_test_deployment_completes_on_two_ray_workers(ray_profile) -> None:
    env = ray_profile
    status = compose(env, "exec", "-T", "ray-head", "ray", "status")
    assert status.returncode == 0, status.stderr[-2000:]
    active = status.stdout.split("Active:")[1].split("Pending:")[0]
    assert len(re.findall(r"node_[0-9a-f]+", active)) == 3, status.stdout  # the head and two workers

    # minhash (not the test config's hybrid): a dedup key of its own, so the session's earlier local run of the
    # test deployment is not a cache hit and the stage really runs on Ray
    overrides = json.dumps({"execution": {"engine": "ray"}, "dedup": {"method": "minhash"}})
    run = compose(env, "run", "--rm", "deployer", "llm-pipeline", "trigger", "llm-pipeline/test-pipeline",
                  "--wait", "--param", f"overrides={overrides}", timeout=1200)  # fmt: skip
    assert run.returncode == 0 and "Completed" in run.stdout, run.stdout[-3000:] + run.stderr[-3000:]
    run_id = re.search(r"started flow run \S+ \(([0-9a-f-]{36})\)", run.stdout).group(1)

    logs = compose(env, "logs", "--no-log-prefix", "cpu-worker").stdout
    events = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    connected = [e for e in events if e.get("event") == "ray_connected"]
    assert connected and connected[-1]["address"] == "ray://ray-head:10001", connected
    distributed = [e for e in events if e.get("event") == "minhash_distributed"]
    assert distributed and distributed[-1]["partitions"] >= 2, distributed  # one reducer per worker CPU

    # evaluation, on the GPU pool's worker, scored its answers on the same cluster
    gpu_logs = compose(env, "logs", "--no-log-prefix", "gpu-worker").stdout
    gpu_events = [json.loads(line) for line in gpu_logs.splitlines() if line.startswith("{")]
    assert [e for e in gpu_events if e.get("event") == "scored_on_ray"], "evaluation did not score on Ray"
    assert [e["address"] for e in gpu_events if e.get("event") == "ray_connected"][-1] == "ray://ray-head:10001"

    # the tasks ran on the worker nodes (the head offers no CPU), every one finished
    tasks = compose(env, "exec", "-T", "ray-head", "ray", "list", "tasks", "--format", "json", "--limit", "10000")
    assert tasks.returncode == 0, tasks.stderr[-2000:]
    names = ("_load", "_minhash", "_verify", "_score_shard")
    listed = [t for t in json.loads(tasks.stdout) if t.get("name", "").startswith(names)]
    assert {t["name"] for t in listed} >= {"_load_file", "_minhash_reduce", "_verify", "_score_shard"}, listed[:5]
    assert all(t["state"] == "FINISHED" for t in listed), [t["state"] for t in listed]

    manifest = json.loads(shared(env, f"cat /shared/outputs/test-pipeline/*{run_id[:8]}/manifest.json"))
    stage = manifest["stages"]["load-and-deduplicate-data"]
    assert manifest["status"] == "completed" and stage["status"] == "completed"
    assert stage["counts"]["dedup.removed.minhash"] > 0

    ports = compose(env, "port", "ray-head", "8265")
    assert ports.stdout.strip().startswith("127.0.0.1:"), ports.stdout  # the dashboard: this host only
