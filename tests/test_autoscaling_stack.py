"""The autoscaler on the compose stack (issue 17, must-have 6b), as an operator meets it: with SCALING_MAX_WORKERS=3,
WORKER_LIMIT=1 and cooldowns of seconds, three pipelines queued at once raise the cpu-workers above one (replicas
that `docker compose ps` lists), a worker picked for removal while it holds a run drains and its run completes,
all three complete, the workers fall back to one after the down cooldown, each decision is a Prefect event and a
line of `llm-pipeline health`, the UI's Event Feed shows them in Chromium, and `make down` removes every replica.

The session's stack runs the autoscaler with no pool to scale (SCALING_POOLS empty, tests/stack.py) so that the
other stack and chaos tests keep the workers they start; this test turns it on for its own span and back off.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import wait_until
from tests.stack import PROJECT, compose, make, set_env

pytestmark = pytest.mark.slow

AUTOSCALING = {
    "SCALING_POOLS": "llm-pipeline-pool=cpu-worker",
    "WORKER_LIMIT": "1",
    "SCALING_MIN_WORKERS": "1",
    "SCALING_MAX_WORKERS": "3",
    "SCALING_SCALE_UP_COOLDOWN": "10s",
    "SCALING_SCALE_DOWN_COOLDOWN": "20s",
    # the product's default: a worker the test drains itself still counts as serving until it exits, and a
    # scale-down decided within seconds of that drain took the pool below its minimum for a tick (README: "A
    # worker stopped by hand")
    "SCALING_SUSTAIN": "10s",
    "SCALING_INTERVAL": "2s",
}
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")

# Two more deployments of the test pipeline (each deployment runs one at a time: three queued runs of one
# deployment would need one worker), then one run of each with parameters no earlier run used (no cache hit).
QUEUE_PIPELINES = """
import json, sys, uuid
from prefect.client.orchestration import get_client
with get_client(sync_client=True) as client:
    base = client.read_deployment_by_name("llm-pipeline/test-pipeline")
    ids = [base.id]
    for copy in ("autoscaling-a", "autoscaling-b"):
        ids.append(client.create_deployment(
            flow_id=base.flow_id, name=copy, work_pool_name=base.work_pool_name, work_queue_name=base.work_queue_name,
            entrypoint=base.entrypoint, path=base.path, pull_steps=base.pull_steps, parameters=base.parameters,
            job_variables=base.job_variables, concurrency_limit=1, tags=["autoscaling-test"]))
    runs = []
    for deployment_id in ids:
        size = 11 + uuid.uuid4().int % 80
        parameters = {"config_path": "configs/test.yaml", "overrides": {"benchmark": {"size": size}}}
        runs.append(str(client.create_flow_run_from_deployment(deployment_id, parameters=parameters).id))
    print(json.dumps(runs))
"""


def replicas(everything: bool = False) -> list[dict[str, Any]]:
    """The stack's cpu-worker containers as the Engine sees them: name, state, managed by the autoscaler."""
    command = ["docker", "ps", "--format", "{{json .}}", "--filter", f"label=com.docker.compose.project={PROJECT}"]
    command += ["--filter", "label=com.docker.compose.service=cpu-worker"] + (["-a"] if everything else [])
    rows = [json.loads(line) for line in subprocess.run(command, capture_output=True, text=True).stdout.splitlines()]
    return [
        {"name": r["Names"], "state": r["State"], "managed": "llm-pipeline.autoscaler=true" in r["Labels"]}
        for r in rows
    ]


@pytest.fixture
def autoscaling(stack, deployed) -> Iterator[dict[str, Any]]:
    env_file = Path(stack["env"]["ENV_FILE"])
    original = env_file.read_text()
    set_env(env_file, AUTOSCALING)
    turned_on = compose(stack["env"], "up", "-d", "--wait", timeout=600)  # cpu-worker (limit 1), autoscaler anew
    assert turned_on.returncode == 0, turned_on.stderr[-3000:]
    try:
        yield stack
    finally:
        env_file.write_text(original)
        back = make("up", stack["env"], timeout=1200)  # the session's stack as it was (after the `make down` here)
        assert back.returncode == 0, back.stdout[-2000:] + back.stderr[-2000:]


class Api:
    def __init__(self, stack: dict[str, Any]):
        user, password = stack["auth"].split(":", 1)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{stack['port']}/api", auth=(user, password), timeout=20)

    def state(self, run_id: str) -> str | None:
        try:
            return self.client.get(f"/flow_runs/{run_id}").json().get("state_type")
        except httpx.HTTPError:
            return None

    def events(self, prefix: str) -> list[dict[str, Any]]:
        body = {"filter": {"event": {"prefix": [prefix]}}, "limit": 50}  # the last day's (the API's default)
        return self.client.post("/events/filter", json=body).json()["events"]


def event_feed(stack: dict[str, Any]) -> str:
    """The text of the UI's Event Feed page once the autoscaler's events show, in Chromium."""
    from playwright.sync_api import sync_playwright

    from tests.test_ui import chromium_path, log_in, visit

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        try:
            page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
            log_in(page, stack)
            # the feed filtered to the autoscaler's two event types, as its "Events" picker writes the address
            # (the runs' own events would push them off the first page)
            names = quote(json.dumps(["llm-pipeline.autoscaler.scaled-up", "llm-pipeline.autoscaler.scaled-down"]))
            url = f"http://127.0.0.1:{stack['port']}/v2/events?events={names}"
            return visit(page, url, "Llm Pipeline Autoscaler Scaled", 60_000)
        finally:
            browser.close()


def test_three_queued_pipelines_scale_the_workers_up_then_back_to_one(autoscaling) -> None:
    import docker
    from services.autoscaling.replicas import ComposeService
    from services.autoscaling.service import VARIABLE

    env, api = autoscaling["env"], Api(autoscaling)
    queued = compose(env, "run", "--rm", "deployer", "python", "-c", QUEUE_PIPELINES)
    assert queued.returncode == 0, queued.stderr[-3000:]
    run_ids = json.loads(queued.stdout.strip().splitlines()[-1])

    # up: one worker taking one run at a time cannot hold three runs
    wait_until(lambda: len([r for r in replicas() if r["state"] == "running"]) > 1, 180, "a second cpu-worker")
    listed = compose(env, "ps", "--format", "{{.Name}}", "cpu-worker").stdout.split()
    assert any(name.startswith(f"{PROJECT}-cpu-worker-") and name != f"{PROJECT}-cpu-worker-1" for name in listed)

    # a worker picked for removal while it holds a run: drained by the autoscaler's own code, its run completes
    service = ComposeService(docker.from_env(), PROJECT, "cpu-worker")

    def busy_with_a_run() -> list[tuple[Any, str]]:
        """Busy replicas with the run they hold: the last of ours their log names, still in flight. Polled: one
        read right after the replica turned busy once found no run id in its log (cause not traced)."""
        found = []
        for replica in service.serving():
            if replica.managed and service.busy(replica):
                logged = subprocess.run(["docker", "logs", replica.id], capture_output=True, text=True)
                text = logged.stdout + logged.stderr
                named = [run for run in run_ids if run in text]
                if named and api.state(held := max(named, key=text.rfind)) in ("PENDING", "RUNNING"):
                    found.append((replica, held))
        return found

    victim, held = wait_until(busy_with_a_run, 240, "a busy replica whose log names its run")[0]
    drained: list[Any] = []
    service.drain(victim, timeout_s=900, done=lambda replica, error: drained.append((replica.name, error)))
    assert api.state(held) in ("PENDING", "RUNNING")  # the drain began with the run in flight

    finals = {
        run: wait_until(lambda run=run: (s := api.state(run)) in FINAL and s, 900, f"run {run}") for run in run_ids
    }
    assert finals == dict.fromkeys(run_ids, "COMPLETED")
    wait_until(lambda: drained, 120, "the drained replica to be removed")
    assert drained == [(victim.name, None)]
    # by id: the autoscaler may start a new replica under the freed name at once (seen: cpu-worker-3 again)
    gone = subprocess.run(["docker", "ps", "-a", "-q", "--no-trunc", "--filter", f"id={victim.id}"],
                          capture_output=True, text=True).stdout.split()  # fmt: skip
    assert gone == [], f"the drained replica {victim.name} is still there"

    # down: idle after the down cooldown, back to one worker and no stopped container left
    # (which one stays is the autoscaler's pick: idle first, then its own replicas; compose's may go)
    wait_until(lambda: [r["state"] for r in replicas(everything=True)] == ["running"], 180, "one worker")

    up = re.compile(r"scaled llm-pipeline-pool 1 -> [23]: utilization \d\.\d\d > 0\.8")
    down = re.compile(r"scaled llm-pipeline-pool [23] -> 1: utilization 0\.00 < 0\.2")

    def both_events() -> list[str]:  # events reach the API's store a moment after they are sent
        messages = [event["payload"].get("message", "") for event in api.events("llm-pipeline.autoscaler.scaled")]
        seen = any(up.fullmatch(m) for m in messages) and any(down.fullmatch(m) for m in messages)
        return messages if seen else []

    wait_until(both_events, 60, "the scale-up and scale-down events in the API")
    feed = event_feed(autoscaling)  # as the on-call person sees them: the UI's Event Feed, in a real browser
    assert "llm-pipeline.autoscaler.scaled-up" in feed and "llm-pipeline.autoscaler.scaled-down" in feed, feed[:3000]
    assert "Work pool\nllm-pipeline-pool" in feed, feed[:3000]
    logged = compose(env, "logs", "--no-color", "autoscaler").stdout
    assert '"event": "autoscaler.scaled"' in logged and '"direction": "up"' in logged

    # health shows the autoscaler's state as of its last tick: the tick that decided the scale-down published the
    # replicas it counted before it (2 or 3), and a later one the single worker (the full suite once read it between)
    def published() -> Any:
        value = api.client.get(f"/variables/name/{VARIABLE}").json().get("value") or {}
        return value.get("llm-pipeline-pool", {}).get("replicas") == 1

    wait_until(published, 60, "the autoscaler to publish one worker")
    health = compose(env, "run", "--rm", "deployer", "llm-pipeline", "health", "--json", "--window", "1h")
    pools = {p["pool"]: p for p in json.loads(health.stdout[health.stdout.index("{") :])["pools"]}
    scaled = pools["llm-pipeline-pool"]["autoscaler"]
    assert scaled["replicas"] == 1 and scaled["min"] == 1 and scaled["max"] == 3
    assert scaled["last_decision"]["message"].endswith("< 0.2")

    # `make down` removes every replica: three of them held by SCALING_MIN_WORKERS=3 first
    set_env(Path(env["ENV_FILE"]), {"SCALING_MIN_WORKERS": "3"})
    held_up = compose(env, "up", "-d", "--wait", "autoscaler")
    assert held_up.returncode == 0, held_up.stderr[-2000:]
    wait_until(lambda: len([r for r in replicas() if r["state"] == "running"]) == 3, 120, "three cpu-workers")
    down = make("down", env, timeout=600)
    assert down.returncode == 0, down.stderr[-2000:]
    left = subprocess.run(
        ["docker", "ps", "-a", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"],
        capture_output=True,
        text=True,
    ).stdout.split()
    assert left == [], f"containers left after make down: {left}"
