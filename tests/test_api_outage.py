"""A GPU stage's `gpu-slots` slot through a restart of the Prefect API: a real server (its leases in a real Redis,
as the stack keeps them) is stopped and started again on the same port while a separate process waits for the slot,
and again while it holds it. Prefect's own `concurrency()` failed the stage in the first case ("Unable to acquire
concurrency slots", CI's chaos run) and stops renewing in the second, so the slot lapsed to the next GPU stage while
the first still ran. Also through an outage: a run's process asking for its deployment, and a run ending (its final
state reported once the API is back)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest

from tests.conftest import PrefectServer, prefect_api, wait_until

ROOT = Path(__file__).resolve().parents[1]
LIMIT = "gpu-slots"
LEASE_S = 60  # the API's minimum, the stage's own (flows/pipeline.py GPU_SLOT_LEASE_S)
REPOSSESS_S = 5  # how often this server expires lapsed leases (the default is 15 s)
OUTAGE_S = 90
pytestmark = pytest.mark.slow

HOLDER = """
import sys
from flows.outage import held_slot
with held_slot(sys.argv[1], lease_s=float(sys.argv[2])):
    print("HELD", flush=True)
    sys.stdin.readline()
print("RELEASED", flush=True)
"""


LOOKUP = """
from flows.pipeline import _deployment_name
print("DEPLOYMENT", _deployment_name(), flush=True)
"""


FINISHER = """
import sys
from prefect import flow

@flow(name="outage-finisher")
def finisher() -> str:
    print("RUNNING", flush=True)
    sys.stdin.readline()  # the test stops the API, then lets the run end
    return "done"

finisher()
print("REPORTED", flush=True)
"""


class Output:
    """A child process's merged output, read as it comes, for waits on what it says."""

    def __init__(self, process: subprocess.Popen[str]):
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._reader.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.append(line.rstrip())

    def count(self, *words: str) -> int:
        return sum(all(w in line for w in words) for line in self.lines)

    def said(self, *words: str) -> bool:
        return self.count(*words) > 0

    def __str__(self) -> str:
        return "\n".join(self.lines[-40:])


class RestartableServer:
    def __init__(self, home: Path, redis_url: str):
        redis = urlparse(redis_url)
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        self.env = {
            "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
            "PREFECT_REDIS_MESSAGING_HOST": redis.hostname or "127.0.0.1",
            "PREFECT_REDIS_MESSAGING_PORT": str(redis.port),
            "PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS": str(REPOSSESS_S),
        }
        self.server = PrefectServer(home, extra_env=self.env)
        self.api_url = self.server.api_url

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server = PrefectServer(self.home, extra_env=self.env, port=self.server.port)


@pytest.fixture
def api(tmp_path: Path, redis_url: str) -> Iterator[RestartableServer]:
    server = RestartableServer(tmp_path / "home", redis_url)
    with prefect_api(server.api_url):
        from prefect import get_client
        from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

        with get_client(sync_client=True) as client:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=LIMIT, limit=1))
        yield server
    server.stop()


def take_slot(lease_s: float) -> Any:
    """The slot taken by this test (another GPU stage), or None while it is held elsewhere."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        try:
            response = client.increment_concurrency_slots_with_lease(
                names=[LIMIT], slots=1, mode="concurrency", lease_duration=lease_s
            )
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code == 423:
                return None
            raise
        return response.json()["lease_id"]


def spawn(env: dict[str, str], script: str, *args: str) -> tuple[subprocess.Popen[str], Output]:
    """A run's process (python -c `script` in the repository), its stdin open, its output read as it comes."""
    process = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return process, Output(process)


def start_holder(env: dict[str, str]) -> tuple[subprocess.Popen[str], Output]:
    """A GPU stage's process, as far as its slot goes: `held_slot` around a block that lasts until it is told on
    its stdin that the stage is done."""
    return spawn(env, HOLDER, LIMIT, str(LEASE_S))


@contextmanager
def run_script(script: str, env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[str], Output]]:
    """`spawn`, killed if it is still going when the test is done with it."""
    process, out = spawn(env, script)
    try:
        yield process, out
    finally:
        if process.poll() is None:
            process.kill()


def end_holder(holder: subprocess.Popen[str], out: Output) -> None:
    assert holder.stdin is not None
    holder.stdin.write("done\n")
    holder.stdin.flush()
    assert holder.wait(timeout=60) == 0, str(out)


def release(lease: Any) -> None:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        client.release_concurrency_slots_with_lease(lease)


def test_a_gpu_slot_is_acquired_and_kept_through_api_restarts(api: RestartableServer, tmp_path: Path) -> None:
    other = take_slot(600)
    assert other is not None
    env = {
        **os.environ,
        "PREFECT_API_URL": api.api_url,
        # the client's own retries (2+4+8+16+32 s by default) would outlast this short outage on their own: one
        # retry, so the restart here is as long, to the client, as a minute's restart of the stack's API
        "PREFECT_CLIENT_MAX_RETRIES": "1",
        "PYTHONPATH": str(ROOT),
    }
    holder, out = start_holder(env)
    try:
        wait_until(lambda: out.said("slot_waiting"), 120, f"the holder to wait for the taken slot:\n{out}")

        # 1. the API restarts while the stage waits for its slot
        api.stop()
        wait_until(lambda: out.said("api_unreachable", "acquire"), 60, f"the holder to meet the outage:\n{out}")
        assert holder.poll() is None, f"the holder gave up on the outage:\n{out}"
        api.start()
        release(other)
        wait_until(lambda: out.said("HELD"), 120, f"the holder to get the slot after the restart:\n{out}")
        assert take_slot(LEASE_S) is None, "the slot the holder got is not held"

        # 2. the API restarts while the stage holds its slot, past the point where Prefect's renewal gives up
        api.stop()
        wait_until(lambda: out.count("api_unreachable", "renew") >= 3, 90, f"renewals through the outage:\n{out}")
        outage_ended = time.monotonic()
        api.start()
        # a lease not renewed since before the outage has lapsed by now, and been repossessed
        time.sleep(max(0.0, outage_ended + LEASE_S + 2 * REPOSSESS_S - time.monotonic()))
        assert holder.poll() is None, f"the holder died:\n{out}"
        assert not out.said("slot_lease_lapsed"), str(out)
        assert take_slot(LEASE_S) is None, f"the slot lapsed while its holder ran:\n{out}"

        # 3. the stage ends: the slot is free at once, not when a lease runs out
        end_holder(holder, out)
        assert out.said("RELEASED")
        assert take_slot(LEASE_S) is not None, "the holder's slot was not released"
    finally:
        if holder.poll() is None:
            holder.kill()


def test_a_lapsed_lease_is_taken_back_once_the_run_that_took_the_slot_lets_it_go(
    api: RestartableServer, tmp_path: Path
) -> None:
    """The holder's lease revoked under it (what the server's repossessor does to a lease past its time, after an
    outage longer than the lease): the slot is free, and another GPU stage (this test) takes it. The holder keeps
    running, says both are on the GPU, takes the slot back as soon as the other lets it go, and at its end releases
    the lease it holds then (the slot is free at once)."""
    import re

    env = {**os.environ, "PREFECT_API_URL": api.api_url, "PYTHONPATH": str(ROOT)}
    holder, out = start_holder(env)
    try:
        wait_until(lambda: out.said("HELD"), 120, f"the holder to get the slot:\n{out}")
        acquired = next(line for line in out.lines if "slot_acquired" in line)
        first_lease = re.search(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", acquired).group(0)
        release(first_lease)  # revoked and its slot freed, as the repossessor does
        other = take_slot(600)
        assert other is not None, "the revoked lease's slot is not free"

        wait_until(lambda: out.said("slot_taken_while_lapsed"), 60, f"the holder to find its lease lapsed:\n{out}")
        assert out.said("slot_lease_lapsed", first_lease)
        assert holder.poll() is None, f"the holder stopped on a lapsed lease:\n{out}"
        assert not out.said("slot_reacquired"), "taken back while the other run holds the slot"

        release(other)
        wait_until(lambda: out.said("slot_reacquired"), 30, f"the holder to take the slot back:\n{out}")
        assert take_slot(LEASE_S) is None, f"the slot taken back is not held:\n{out}"

        end_holder(holder, out)
        assert take_slot(LEASE_S) is not None, f"the slot taken back was not released at the holder's end:\n{out}"
    finally:
        if holder.poll() is None:
            holder.kill()


def test_a_run_asks_for_its_deployment_through_an_api_restart(api: RestartableServer) -> None:
    """A deployment run's process asks the API for its deployment's name (the pipeline's group, the artifacts' keys)
    while the API restarts. Prefect's runtime asks with a new client, which gives up on the first refused connection:
    in a full suite the GPU stage's run Failed that way ("ConnectError: All connection attempts failed") as the
    stack's API restarted, and with it the pipeline. Asked again until the API answers."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        deployment = client.create_deployment(flow_id=client.create_flow_from_name("outage-probe"), name="probe")
        run = client.create_flow_run_from_deployment(deployment)
    api.stop()
    env = {**os.environ, "PREFECT_API_URL": api.api_url, "PREFECT__FLOW_RUN_ID": str(run.id), "PYTHONPATH": str(ROOT)}
    with run_script(LOOKUP, env) as (process, out):
        wait_until(lambda: out.said("api_unreachable", "deployment") or process.poll() is not None, 120, str(out))
        assert process.poll() is None, f"the run gave up on the outage:\n{out}"
        api.start()
        assert process.wait(timeout=120) == 0, str(out)
        assert out.said("DEPLOYMENT probe"), str(out)


def test_a_stage_run_failed_on_a_network_error_reads_as_lost_the_api(api: RestartableServer) -> None:
    """The hand-off retries a stage run that Failed on a bare network error and fails the pipeline on any other
    failure, telling them apart by the message Prefect's flow engine writes: real flows' Failed states, read back
    from the server as the hand-off reads them, so a change in Prefect's wording fails here."""
    from prefect import flow, get_client

    from flows.outage import lost_the_api
    from llm_pipeline.errors import TransientError

    @flow(name="outage-message-probe")
    def failing(kind: str) -> None:
        if kind == "network":
            raise httpx.ConnectError("All connection attempts failed")
        raise TransientError("the stage's own endpoint timed out")

    read = {}
    with get_client(sync_client=True) as client:
        for kind in ("network", "own"):
            state = failing(kind, return_state=True)
            assert state.is_failed()
            read[kind] = client.read_flow_run(state.state_details.flow_run_id).state.message
    assert lost_the_api(read["network"]), read
    assert not lost_the_api(read["own"]), read


def test_a_run_that_ends_while_the_api_is_away_reports_its_end_once_it_is_back(api: RestartableServer) -> None:
    """A flow run's process that ends while the API is away for 90 s: its final state goes in once the API is back.
    With Prefect's default client retries (five, about a minute of back-off) the call gave up and the process died
    with the run still Running on the server (its worker then reports it Crashed, and the stage is run again): seen
    on the stack, a GPU stage ending during a 100 s outage. The workers give their flow runs more retries
    (workers/pools.py); this process gets the same environment."""
    from prefect import get_client

    from workers.pools import process_job_template

    flow_run_env = process_job_template()["variables"]["properties"]["env"].get("default", {})
    env = {**os.environ, "PREFECT_API_URL": api.api_url, "PYTHONPATH": str(ROOT), **flow_run_env}
    with run_script(FINISHER, env) as (process, out):
        wait_until(lambda: out.said("RUNNING"), 120, str(out))
        api.stop()
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
        time.sleep(OUTAGE_S)  # past the default retries' back-off (2 + 4 + 8 + 16 + 32 s)
        assert process.poll() is None, f"the run gave up on reporting its end:\n{out}"
        api.start()
        assert process.wait(timeout=300) == 0, str(out)
        assert out.said("REPORTED"), str(out)
    with get_client(sync_client=True) as client:
        [run] = client.read_flow_runs()
    assert run.state is not None and run.state.is_completed(), run.state
