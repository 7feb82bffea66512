"""The compose stack for the tests that need it (test_stack.py, test_ui.py): built, brought up with the CPU
override and deployed once per test session, under its own compose project and env file, so a developer's own
stack and .env are left alone. Registered as a plugin in conftest.py."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.conftest import published_port, require_docker, trace

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "llm-pipeline-e2e"
SWARM_STACK = "llmswarm"  # test_swarm.py's stack


def set_env(path: Path, values: dict[str, str]) -> None:
    """Set KEY=value lines in an env file (added at the end when missing)."""
    text = path.read_text()
    for key, value in values.items():
        text, found = re.subn(rf"(?m)^{key}=.*$", f"{key}={value}", text)
        if not found:
            text += f"\n{key}={value}\n"
    path.write_text(text)


def make(target: str, env: dict[str, str], timeout: float = 900, *args: str) -> subprocess.CompletedProcess:
    started = time.monotonic()
    result = subprocess.run(
        ["make", target, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    trace("make", " ".join([target, *args]), started, f"rc={result.returncode}")
    return result


def compose(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    command = [
        "docker",
        "compose",
        "--env-file",
        env["ENV_FILE"],
        "-f",
        "docker-compose.yml",
        "-f",
        "docker-compose.cpu.yml",
        *args,
    ]
    started = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    trace("compose", " ".join(args), started, f"rc={result.returncode}")
    return result


def shared(env: dict[str, str], script: str) -> str:
    result = compose(env, "run", "--rm", "--no-deps", "--entrypoint", "sh", "deployer", "-c", script)
    assert result.returncode == 0, result.stderr
    return result.stdout


FAIL_A_RUN = """
import sys
from prefect.client.orchestration import get_client
from prefect.states import Failed, Running
with get_client(sync_client=True) as client:
    deployment = client.read_deployment_by_name(sys.argv[1])
    run = client.create_flow_run_from_deployment(deployment.id)
    client.set_flow_run_state(run.id, Running(), force=True)
    client.set_flow_run_state(run.id, Failed(message=sys.argv[2]), force=True)
    print(run.id)
"""


def fail_a_run(env: dict[str, str], deployment: str, message: str) -> str:
    """A run of `deployment` failed through the stack's API, as the deployer container sees it; its id."""
    failed = compose(env, "run", "--rm", "deployer", "python", "-c", FAIL_A_RUN, deployment, message)
    assert failed.returncode == 0, failed.stderr[-2000:]
    return failed.stdout.strip().splitlines()[-1]


def alert_trail(stack: dict, run_id: str, since: str) -> str:
    """What the stack's event system did about a run since `since` (ISO time), for a test's failure message: the
    run's events, the automations' triggered/action events, the Redis consumer groups' backlogs, and the end of
    prefect-services' log."""
    import json

    import httpx

    api = httpx.Client(
        base_url=f"http://127.0.0.1:{stack['port']}/api", auth=tuple(stack["auth"].split(":", 1)), timeout=20
    )
    lines = []
    for what, extra in (
        ("the run's events", {"any_resource": {"id": [f"prefect.flow-run.{run_id}"]}}),
        ("automation events", {"event": {"prefix": ["prefect.automation"]}}),
    ):
        body = {"filter": {"occurred": {"since": since}, "order": "ASC", **extra}, "limit": 50}
        try:
            events = api.post("/events/filter", json=body).json().get("events", [])
        except (httpx.HTTPError, ValueError) as error:
            lines.append(f"{what}: unreadable ({error!r})")
            continue
        lines.append(f"{what} ({len(events)}):")
        lines += [
            f"  {e['occurred']} {e['event']} {e['resource'].get('prefect.resource.name', '')} "
            f"{json.dumps(e.get('payload', {}))[:300]}"
            for e in events
        ]
    try:  # the trail is a failure's message: an API that cannot answer must not replace the failure
        automations = api.post("/automations/filter", json={}).json()
    except (httpx.HTTPError, ValueError) as error:
        automations, lines = [], [*lines, f"automations: unreadable ({error!r})"]
    lines += [f"automation {a['name']!r} enabled={a['enabled']} actions={[x['type'] for x in a['actions']]}"
              for a in automations]  # fmt: skip
    for stream in ("events", "actions"):  # each consumer group's backlog: a trigger service behind shows here
        groups = compose(stack["env"], "exec", "-T", "redis", "redis-cli", "--no-raw", "XINFO", "GROUPS", stream)
        lines.append(f"redis XINFO GROUPS {stream}: " + " ".join((groups.stdout or groups.stderr).split()))
    services = compose(stack["env"], "logs", "--no-color", "--since", since, "prefect-services").stdout
    notable = re.compile(rf"{run_id}|(?i:error|exception|traceback|automation change)")
    about = [line for line in services.splitlines() if notable.search(line)]
    lines += ["prefect-services log since then, the lines about the run or an error (last 60):", *about[-60:]]
    return "\n".join(lines)


def wait_for_the_triggers_to_load(stack: dict, name: str, since: str, bound_s: float = 12.0) -> bool:
    """Wait until prefect-services' triggers service says it loaded the automation `name` as changed since `since`
    (its log: "Received automation change notification: updated for <id>", from Postgres NOTIFY); at most
    `bound_s`, past the service's own reconcile of every automation each 5 s. It judges events by its cached copy:
    a run failed 2.6 s after `flows.alerts` changed the failure alert's action to the test's webhook fired the old
    DoNothing (a full suite, 2026-12-05), and no page came. Whether the notification was seen."""

    import httpx

    api = httpx.Client(
        base_url=f"http://127.0.0.1:{stack['port']}/api", auth=tuple(stack["auth"].split(":", 1)), timeout=20
    )
    [automation] = [a for a in api.post("/automations/filter", json={}).json() if a["name"] == name]
    wanted = f"automation change notification: updated for {automation['id']}"
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        if wanted in compose(stack["env"], "logs", "--no-color", "--since", since, "prefect-services").stdout:
            return True
        time.sleep(0.5)
    return False


HF_TOKEN = "hf_" + secrets.token_hex(17)


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    require_docker()
    port, outputs_port = published_port(), published_port()
    env_file = tmp_path_factory.mktemp("stack") / "stack.env"
    auth = f"admin:{secrets.token_urlsafe(16)}"
    env_file.write_text(
        (ROOT / ".env.example")
        .read_text()
        .replace("POSTGRES_PASSWORD=\n", f"POSTGRES_PASSWORD={secrets.token_urlsafe(16)}\n")
        .replace("PREFECT_SERVER_API_AUTH_STRING=\n", f"PREFECT_SERVER_API_AUTH_STRING={auth}\n")
        .replace("RAY_AUTH_TOKEN=\n", f"RAY_AUTH_TOKEN={secrets.token_hex(32)}\n")
        .replace("HF_TOKEN=\n", f"HF_TOKEN={HF_TOKEN}\n")  # never used (the hub is off): checked never to leak
        .replace("PREFECT_PORT=4200", f"PREFECT_PORT={port}")
        .replace("ALERT_COOLDOWN=15m", "ALERT_COOLDOWN=10s")  # one test's page must not swallow the next's
        # the trigger service says at INFO which automation covered which event: alert_trail reads it on a miss
        .replace("PREFECT_SERVER_LOGGING_LEVEL=WARNING", "PREFECT_SERVER_LOGGING_LEVEL=INFO")
        # the autoscaler runs but scales nothing, so each test keeps the workers it starts; test_autoscaling_stack
        # turns it on for its own span
        .replace("SCALING_POOLS=llm-pipeline-pool=cpu-worker,llm-pipeline-gpu-pool=gpu-worker", "SCALING_POOLS=")
        # the GPU-slot audit gives back a slot nobody holds after 20 s, not 3 minutes (test_chaos's lost-lease case)
        .replace("SCALING_SLOT_AUDIT_GRACE=3m", "SCALING_SLOT_AUDIT_GRACE=20s")
        .replace("OUTPUTS_PORT=4201", f"OUTPUTS_PORT={outputs_port}")
        .replace("OUTPUTS_PUBLIC_URL=http://127.0.0.1:4201", f"OUTPUTS_PUBLIC_URL=http://127.0.0.1:{outputs_port}")
        .replace("PREFECT_UI_API_URL=http://127.0.0.1:4200/api", f"PREFECT_UI_API_URL=http://127.0.0.1:{port}/api")
    )
    env = {
        **os.environ,
        "ENV_FILE": str(env_file),
        "COMPOSE_PROJECT_NAME": PROJECT,
        "GPU": "0",
        "COMPOSE_BAKE": "false",
    }
    # A test session killed before its teardown (a cancelled job, a session cut off) leaves this project's
    # containers and volumes behind, and Postgres would keep that session's password in pgdata and refuse this
    # one's ("password authentication failed"): the project is the tests' own, so whatever is left of it goes.
    take_down(env, leftovers=True)
    up = make("up", env, timeout=2400)
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    up_at = datetime.now(UTC).isoformat(timespec="seconds")  # the end of start-up, for the logs of that span
    yield {"env": env, "port": port, "outputs_port": outputs_port, "auth": auth, "up_at": up_at}
    take_down(env)


def take_down(env: dict[str, str], leftovers: bool = False) -> None:
    """The tests' compose project down, every profile's services, volumes and all. With `leftovers`, first what
    `down` does not know of that a killed session can leave running on the same engine, loading the machine for the
    whole next session: the docker pool's flow-run containers on the project's network, test_stack's
    PROJECT-pgpass project, and test_swarm's stack (removed again, with its volumes, where test_swarm starts)."""
    if leftovers:
        filters = (f"network={PROJECT}_default", f"label=com.docker.compose.project={PROJECT}-pgpass")
        strays = {
            container
            for where in filters
            for container in subprocess.run(
                ["docker", "ps", "-aq", "--filter", where], capture_output=True, text=True, check=False
            ).stdout.split()
        }
        if strays:
            started = time.monotonic()
            subprocess.run(["docker", "rm", "-f", "-v", *sorted(strays)], capture_output=True, check=False)
            trace("docker", f"rm {len(strays)} leftover containers", started)
        stacks = subprocess.run(["docker", "stack", "ls", "--format", "{{.Name}}"], capture_output=True, text=True)
        if SWARM_STACK in stacks.stdout.split():  # its services restart on any engine start until removed
            started = time.monotonic()
            subprocess.run(["docker", "stack", "rm", SWARM_STACK], capture_output=True, check=False)
            trace("docker", f"stack rm {SWARM_STACK} (leftover)", started)
    down = compose(env, "--profile", "*", "down", "-v", "--remove-orphans", timeout=300)
    assert down.returncode == 0, down.stderr[-2000:]


@pytest.fixture(scope="session")
def deployed(stack) -> subprocess.CompletedProcess:
    first = make("deploy", stack["env"], timeout=600)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    return first


@pytest.fixture(scope="session")
def test_run(stack, deployed) -> str:
    """The flow run id of one `make run-test` on the stack (run once per session, shared by the tests)."""
    import re

    if "test_run_id" not in stack:
        result = make("run-test", stack["env"], timeout=1200)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "Completed" in result.stdout
        stack["run_test_stdout"] = result.stdout
        stack["test_run_id"] = re.search(r"started flow run \S+ \(([0-9a-f-]{36})\)", result.stdout).group(1)
    return stack["test_run_id"]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # noqa: ARG001 - keeps each phase's report on the test (test_ui's shots)
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
