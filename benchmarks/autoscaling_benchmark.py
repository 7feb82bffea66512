"""Autoscaling on the compose stack (issue 17, must-have 8): the time to drain a backlog of short flow runs across
several deployments with the autoscaler on (up to --max-workers cpu-workers) against one fixed cpu-worker, on the
same stack in the same sitting, as a ratio.

    python benchmarks/autoscaling_benchmark.py --runs 20 --deployments 5 --json docs/autoscaling-benchmark.json

The stack is this repository's (make up / make deploy, CPU override) under its own compose project and env file.
The runs are copies of the `health-check` deployment (a short flow that reads the API and records an artifact:
a few seconds of work after a process start), each copy one run at a time as every deployment here is. Both
modes run the production policy (threshold 0.8, sustain 10 s, cooldowns 5m / 10m) at the same WORKER_LIMIT; only
SCALING_POOLS (off, then the CPU pool) and SCALING_MAX_WORKERS differ. "Drain" is from the first run's creation
to the last run's end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.conftest import free_port  # noqa: E402 - the stack tests' own helpers
from tests.stack import compose, make, set_env  # noqa: E402

PROJECT = "llm-pipeline-bench"
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")

QUEUE = """
import json, sys
from prefect.client.orchestration import get_client
runs, copies, tag = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
with get_client(sync_client=True) as client:
    base = client.read_deployment_by_name("health-check/health-check")
    ids = []
    for number in range(copies):
        ids.append(client.create_deployment(
            flow_id=base.flow_id, name=f"bench-{number}", work_pool_name=base.work_pool_name,
            work_queue_name="low", entrypoint=base.entrypoint, path=base.path, pull_steps=base.pull_steps,
            parameters=base.parameters, job_variables=base.job_variables, concurrency_limit=1, tags=["benchmark"]))
    made = [str(client.create_flow_run_from_deployment(ids[n % copies], tags=[tag]).id) for n in range(runs)]
    print(json.dumps(made))
"""


class Stack:
    def __init__(self, env_file: Path, port: int, auth: str):
        self.env = {**os.environ, "ENV_FILE": str(env_file), "COMPOSE_PROJECT_NAME": PROJECT, "GPU": "0"}
        user, password = auth.split(":", 1)
        self.api = httpx.Client(base_url=f"http://127.0.0.1:{port}/api", auth=(user, password), timeout=30)

    def compose(self, *args: str) -> subprocess.CompletedProcess:
        done = compose(self.env, *args, timeout=1200)
        if done.returncode != 0:
            raise RuntimeError(f"docker compose {' '.join(args)}: {done.stderr[-2000:]}")
        return done

    def make(self, target: str) -> None:
        done = make(target, self.env, timeout=2400)
        if done.returncode != 0:
            raise RuntimeError(f"make {target}: {done.stdout[-1500:]} {done.stderr[-1500:]}")

    def workers(self) -> int:
        command = ["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"]
        command += ["--filter", "label=com.docker.compose.service=cpu-worker"]
        return len(subprocess.run(command, capture_output=True, text=True).stdout.split())

    def drain(self, runs: int, copies: int, tag: str) -> dict[str, Any]:
        started = time.time()
        made = self.compose("run", "--rm", "deployer", "python", "-c", QUEUE, str(runs), str(copies), tag)
        ids = json.loads(made.stdout.strip().splitlines()[-1])
        most, rows = self.workers(), []
        while True:
            most = max(most, self.workers())
            rows = [self.api.get(f"/flow_runs/{run}").json() for run in ids]
            if all(row["state_type"] in FINAL for row in rows):
                break
            time.sleep(1)
        ends = [_epoch(row["end_time"]) for row in rows]
        queued = [_epoch(row["start_time"]) - _epoch(row["expected_start_time"]) for row in rows]
        return {
            "runs": runs,
            "deployments": copies,
            "completed": sum(row["state_type"] == "COMPLETED" for row in rows),
            "drain_s": round(max(ends) - started, 1),
            "queue_mean_s": round(sum(queued) / len(queued), 1),
            "queue_max_s": round(max(queued), 1),
            "run_mean_s": round(sum(row["total_run_time"] for row in rows) / len(rows), 1),
            "most_workers": most,
        }


def _epoch(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--deployments", type=int, default=5)
    parser.add_argument("--max-workers", type=int, default=4)
    parser.add_argument("--worker-limit", type=int, default=1, help="flow runs per worker (WORKER_LIMIT)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="autoscaling-bench-"))
    port, outputs, auth = free_port(), free_port(), f"admin:{secrets.token_urlsafe(16)}"
    env_file = folder / "bench.env"
    env_file.write_text((ROOT / ".env.example").read_text())
    set_env(
        env_file,
        {
            "POSTGRES_PASSWORD": secrets.token_urlsafe(16),
            "PREFECT_SERVER_API_AUTH_STRING": auth,
            "PREFECT_PORT": str(port),
            "OUTPUTS_PORT": str(outputs),
            "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",
            "WORKER_LIMIT": str(args.worker_limit),
            "SCALING_POOLS": "",
        },
    )
    stack = Stack(env_file, port, auth)
    results = []
    try:
        stack.make("up")
        stack.make("deploy")
        fixed = stack.drain(args.runs, args.deployments, "fixed")
        results.append({"mode": "one fixed worker", **fixed})
        print(json.dumps(results[-1]), flush=True)
        set_env(
            env_file, {"SCALING_POOLS": "llm-pipeline-pool=cpu-worker", "SCALING_MAX_WORKERS": str(args.max_workers)}
        )
        stack.compose("up", "-d", "--wait", "autoscaler")
        scaled = stack.drain(args.runs, args.deployments, "autoscaled")
        results.append({"mode": f"autoscaled, max {args.max_workers}", **scaled})
        print(json.dumps(results[-1]), flush=True)
    finally:
        compose(stack.env, "--profile", "tools", "down", "-v", "--remove-orphans", timeout=600)
    ratio = round(results[0]["drain_s"] / results[1]["drain_s"], 2)
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}",
        "worker_limit": args.worker_limit,
        "results": results,
        "speedup": ratio,
        "date": time.strftime("%Y-%m-%d"),
    }
    print(f"drain: fixed {results[0]['drain_s']} s, autoscaled {results[1]['drain_s']} s: {ratio}x")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
