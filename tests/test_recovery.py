"""A crashed worker never blocks the schedule: on a real Prefect server with real process workers, a worker and its
flow run are SIGKILLed (as the OOM killer does a container); the zombie automation marks the run Crashed, which
frees the deployment's slot, and the recovery automation resubmits it, once. The figures are printed (-s) and
recorded in docs/chaos.md."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest

from flows.recovery import BEAT_LAG_S
from tests.conftest import PrefectServer, Worker, prefect_api, wait_until
from tests.fakes.receivers import WebhookReceiver

ROOT = Path(__file__).resolve().parents[1]
POOL = "recovery-test-pool"
CHILD_POOL = "recovery-test-child-pool"  # the GPU pool's part: a stage handed off by a run on POOL
WINDOW_S = 55  # the zombie window in this test; heartbeats every 30 s (Prefect's minimum)
PENDING_WINDOW_S = 40  # the stuck-pending window in this test (10 minutes by default)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Any:
    """Its own server: the automations here must not act on the other tests' runs."""
    home = tmp_path_factory.mktemp("recovery-server")
    started = PrefectServer(home)
    with prefect_api(started.api_url):
        yield started
    started.stop()


def _client() -> Any:
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


@pytest.fixture(scope="module")
def hooks() -> Any:
    receiver = WebhookReceiver()
    yield receiver
    receiver.stop()


def _pages(hooks: WebhookReceiver, crashed_id: Any, alert: str) -> list[dict[str, Any]]:
    return [
        r.body
        for r in hooks.at("/hook")
        if r.body.get("alert") == alert and r.body.get("flow_run_id") == str(crashed_id)
    ]


@pytest.fixture(scope="module")
def deployed(server, hooks) -> dict[str, Any]:
    from prefect import flow
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    from flows.alerts import AlertSettings, apply_alerts
    from flows.recovery import CONFIRM_FLOW, RECOVERY_FLOW, RecoverySettings
    from workers.pools import process_job_template

    with _client() as client:
        for pool in (POOL, CHILD_POOL):
            client.create_work_pool(WorkPoolCreate(name=pool, type="process", base_job_template=process_job_template()))
    limit = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)  # as in production
    flow.from_source(source=str(ROOT), entrypoint="tests/orchestration_flows.py:sleep_once").deploy(
        name="victim", work_pool_name=POOL, concurrency_limit=limit, print_next_steps=False
    )
    flow.from_source(source=str(ROOT), entrypoint="tests/orchestration_flows.py:hands_off_once").deploy(
        name="victim", work_pool_name=POOL, concurrency_limit=limit, print_next_steps=False
    )
    flow.from_source(source=str(ROOT), entrypoint="tests/orchestration_flows.py:sleep_once").deploy(
        name="stage", work_pool_name=CHILD_POOL, print_next_steps=False
    )
    flow.from_source(source=str(ROOT), entrypoint="tests/orchestration_flows.py:times_out").deploy(
        name="slow", work_pool_name=POOL, concurrency_limit=limit, print_next_steps=False
    )
    flow.from_source(source=str(ROOT), entrypoint="tests/slow_start_flow.py:slow_start").deploy(
        name="victim", work_pool_name=POOL, concurrency_limit=limit, print_next_steps=False
    )
    flow.from_source(source=str(ROOT), entrypoint="flows/recovery.py:resubmit_crashed").deploy(
        name=RECOVERY_FLOW, work_pool_name=POOL, print_next_steps=False
    )
    flow.from_source(source=str(ROOT), entrypoint="flows/recovery.py:crash_if_silent").deploy(
        name=CONFIRM_FLOW, work_pool_name=POOL, print_next_steps=False
    )
    settings = RecoverySettings(
        heartbeat_window=timedelta(seconds=WINDOW_S),
        pending_window=timedelta(seconds=PENDING_WINDOW_S),
        max_resubmits=1,
    )
    outcome = asyncio.run(apply_alerts(AlertSettings(webhook_url=f"{hooks.url}/hook"), settings))
    assert outcome["llm-pipeline: crash zombie flow runs"] == "created"
    return {"settings": settings}


def _state(run_id: Any) -> Any:
    with _client() as client:
        return client.read_flow_run(run_id)


def _kill_tree(process: psutil.Process) -> None:
    """SIGKILL a worker and every process under it at once: what a container's OOM kill does."""
    family = [process, *process.children(recursive=True)]
    for member in family:
        with contextlib.suppress(ProcessLookupError):
            os.kill(member.pid, signal.SIGKILL)


def _children(parent_id: Any) -> list[Any]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with _client() as client:
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id]))
        )


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _resubmissions(crashed_id: Any) -> list[Any]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    with _client() as client:
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"resubmitted-from:{crashed_id}"]))
        )


def test_a_killed_worker_leaves_no_zombie_and_its_run_is_resubmitted(server, deployed, hooks, tmp_path: Path) -> None:
    """The victim hands a stage off to a second pool, as the pipeline does its GPU stages: the stage's run, on a
    worker that stays up, is cancelled and its process stopped once its parent is Crashed (Prefect cancels the
    children of a Cancelled run only: without this a stalled stage kept its GPU from the resubmission for good)."""
    from prefect.deployments import run_deployment

    marker, stage_marker = tmp_path / "victim.pid", tmp_path / "stage.pid"
    parameters = {"marker": str(marker), "child": "sleep-once/stage", "child_marker": str(stage_marker)}
    env = {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}
    with Worker(server.api_url, CHILD_POOL, tmp_path, env=env):  # the stage's pool: its worker stays up
        first = Worker(server.api_url, POOL, tmp_path, env=env)
        victim = run_deployment("hands-off-once/victim", parameters=parameters, timeout=0)
        wait_until(lambda: stage_marker.exists() and _state(victim.id).state.is_running(), 180, "the stage to run")
        [stage] = _children(victim.id)
        queued = run_deployment("hands-off-once/victim", parameters=parameters, timeout=0)
        time.sleep(3)  # the heartbeat at start has reached the server
        assert _state(queued.id).state.name == "AwaitingConcurrencySlot"  # the slot is the victim's
        killed_at = time.monotonic()
        _kill_tree(psutil.Process(first.process.pid))
        first.process.wait(timeout=30)
        first.log.close()
        with Worker(server.api_url, POOL, tmp_path, env=env):  # Docker restarts the worker
            crashed = wait_until(lambda: (r := _state(victim.id)).state.is_crashed() and r, WINDOW_S + 60, "Crashed")
            detected_s = time.monotonic() - killed_at
            assert "no heartbeat" in (crashed.state.message or "")
            [again] = wait_until(lambda: _resubmissions(victim.id), 120, "the resubmitted run")
            assert again.parameters == crashed.parameters and "recovery-attempt:1" in again.tags
            orphan = wait_until(lambda: (r := _state(stage.id)).state.is_final() and r, 120, "the orphan to end")
            assert orphan.state.is_cancelled(), orphan.state
            with _client() as client:
                why = [s.message for s in client.read_flow_run_states(stage.id) if s.name == "Cancelling"]
            assert why and f"its pipeline run {victim.id} crashed" in why[0], why
            wait_until(lambda: _gone(int(stage_marker.read_text())), 60, "the orphaned stage's process to be stopped")
            done = wait_until(lambda: (r := _state(again.id)).state.is_final() and r, 180, "the resubmission to end")
            recovered_s = time.monotonic() - killed_at
            assert done.state.is_completed(), done.state
            queued_done = wait_until(lambda: (r := _state(queued.id)).state.is_final() and r, 180, "the queued run")
            assert queued_done.state.is_completed()  # not blocked past recovery
    [crash] = wait_until(lambda: _pages(hooks, victim.id, "failed"), 60, "the crash alert")
    assert crash["state"] == "Crashed" and "no heartbeat" in crash["message"]
    [page] = wait_until(lambda: _pages(hooks, victim.id, "recovery"), 60, "the recovery alert")
    assert page["message"].startswith(f"crashed, resubmitted as {again.name} ({again.id})"), page
    assert page["deployment"] == "hands-off-once/victim" and page["resubmitted_id"] == str(again.id)
    print(f"\nworker SIGKILLed: Crashed after {detected_s:.0f} s, resubmission Completed {recovered_s:.0f} s after")
    # the window after the last heartbeat, the event pipeline, then the check: a heartbeat's period and its lag
    assert detected_s <= WINDOW_S + 30 + 20 + 30 + BEAT_LAG_S + 15


def test_a_worker_killed_while_starting_a_run_leaves_it_pending_no_longer(
    server, deployed, hooks, tmp_path: Path
) -> None:
    """The worker is SIGKILLed while its run's process still loads the flow (before Running, so no heartbeat ever
    comes): the stuck-pending rule has the check mark the run Crashed once it has been Pending for the window, and
    the run is resubmitted and completes on the worker that replaces it."""
    from prefect.deployments import run_deployment

    marker = tmp_path / "slow-start.pid"
    first = Worker(server.api_url, POOL, tmp_path, env={"SLOW_START_MARKER": str(marker)})
    try:
        victim = run_deployment("slow-start/victim", timeout=0)
        wait_until(marker.exists, 180, "the run's process to start loading its flow")
        assert _state(victim.id).state.is_pending(), _state(victim.id).state
        killed_at = time.monotonic()
        _kill_tree(psutil.Process(first.process.pid))
        first.process.wait(timeout=30)
    finally:
        first.log.close()
    # SIGKILL is delivered, and the process torn down, after kill() returns: asked at once, it was still alive once
    # (a full suite, 2026-12-07). Ten seconds for it; a process that outlives them was not killed.
    wait_until(lambda: _gone(int(marker.read_text())), 10, "the run's process to die with its worker")
    with Worker(server.api_url, POOL, tmp_path):  # the worker that replaces it: the check and the resubmission run here
        crashed = wait_until(lambda: (r := _state(victim.id)).state.is_crashed() and r, 300, "Crashed")
        detected_s = time.monotonic() - killed_at
        assert f"Pending for {PENDING_WINDOW_S} s, never started" in (crashed.state.message or ""), crashed.state
        [again] = wait_until(lambda: _resubmissions(victim.id), 120, "the resubmitted run")
        done = wait_until(lambda: (r := _state(again.id)).state.is_final() and r, 180, "the resubmission to end")
        assert done.state.is_completed(), done.state
    [page] = wait_until(lambda: _pages(hooks, victim.id, "recovery"), 60, "the recovery alert")
    assert page["resubmitted_id"] == str(again.id), page
    print(f"\nworker SIGKILLed while starting a run: Crashed after {detected_s:.0f} s (window {PENDING_WINDOW_S} s)")
    # the window (counted from the Pending it was left in, before the kill), the event pipeline, the check's wait
    assert detected_s <= PENDING_WINDOW_S + 30 + 20 + 30 + BEAT_LAG_S + 15


def test_the_zombie_check_spares_a_run_that_beats_and_crashes_one_that_does_not(
    server, deployed, hooks, tmp_path: Path
) -> None:
    """What the zombie rule starts before anything is marked (crash-silent-run): a run whose heartbeats reach the
    API is left to run (an API outage loses every run's heartbeats at once, and the rule counts that as silence:
    marked Crashed, a live run lost its slot's lease, which its engine answers by stopping it, and a copy was
    resubmitted beside it); a run that beats no more is marked Crashed a heartbeat's period later. The outage
    itself is tests/test_chaos.py's (the API stopped on the compose stack, its services up)."""
    from prefect.client.schemas.objects import StateType
    from prefect.deployments import run_deployment
    from prefect.states import State

    from flows.recovery import CONFIRM_DEPLOYMENT, last_heartbeat

    marker = tmp_path / "alive.pid"
    with Worker(server.api_url, POOL, tmp_path, env={"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}):
        alive = run_deployment("sleep-once/victim", parameters={"marker": str(marker), "seconds": 100}, timeout=0)

        def beating() -> bool:
            with _client() as client:
                return last_heartbeat(client, alive.id, datetime.now(UTC) - timedelta(minutes=5)) is not None

        wait_until(lambda: marker.exists() and beating(), 180, "the live run's first heartbeat")
        with _client() as client:  # a run the rule saw go silent and that has no process left: a killed one's
            deployment = client.read_deployment_by_name("sleep-once/victim")
            silent = client.create_flow_run_from_deployment(deployment.id, parameters={"marker": str(marker)})
            client.set_flow_run_state(silent.id, State(type=StateType.RUNNING), force=True)
        started = time.monotonic()
        checks = {
            name: run_deployment(
                CONFIRM_DEPLOYMENT, parameters={"flow_run_id": str(run.id), "window_s": WINDOW_S}, timeout=0
            )
            for name, run in (("alive", alive), ("silent", silent))
        }
        ended = {
            name: wait_until(lambda c=check: (r := _state(c.id)).state.is_final() and r, 180, f"the {name} check")
            for name, check in checks.items()
        }
        crashed_s = time.monotonic() - started
        verdicts = {name: (r.state.type, (r.state.message or "").split(":")[0]) for name, r in ended.items()}
        assert verdicts == {"alive": (StateType.COMPLETED, "alive"), "silent": (StateType.COMPLETED, "crashed")}, [
            r.state for r in ended.values()
        ]
        marked = _state(silent.id)
        assert marked.state.is_crashed() and "no heartbeat for 55 s" in (marked.state.message or ""), marked.state
        assert crashed_s >= 30 + BEAT_LAG_S - 5  # not before a heartbeat's period (and its lag) had passed
        done = wait_until(lambda: (r := _state(alive.id)).state.is_final() and r, 120, "the live run to end")
    with _client() as client:
        history = [s.type for s in client.read_flow_run_states(alive.id)]
    assert done.state.is_completed() and StateType.CRASHED not in history, history
    print(f"\nzombie check: a beating run spared, a silent one Crashed {crashed_s:.0f} s after the check began")


def test_without_the_check_deployment_silence_alone_marks_a_run_crashed(hooks, tmp_path: Path) -> None:
    """The rules' fallback where `make deploy` has not deployed the crash-silent-run check (an older stack, a
    deployment deleted by hand): installed anyway, they mark a run Crashed on silence alone (no check, so an API
    outage longer than the window would mark live runs too: the README's trade), and the crash pages. Both rules,
    on a server of its own with no worker: a run set Running by hand sends no heartbeat, as a killed one; a run set
    Pending never starts, as one whose worker died while starting it. No resubmit-crashed deployment either: the
    resubmit rule does nothing, and the Crashed run stays the end."""
    from prefect import flow
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.objects import StateType
    from prefect.states import State

    from flows.alerts import AlertSettings, apply_alerts
    from flows.recovery import RecoverySettings, silent_for, stuck_for
    from workers.pools import process_job_template

    home = tmp_path / "bare-server"
    home.mkdir()
    bare = PrefectServer(home)
    try:
        with prefect_api(bare.api_url):
            with _client() as client:
                client.create_work_pool(
                    WorkPoolCreate(name=POOL, type="process", base_job_template=process_job_template())
                )
            flow.from_source(source=str(ROOT), entrypoint="tests/orchestration_flows.py:sleep_once").deploy(
                name="victim", work_pool_name=POOL, print_next_steps=False
            )
            window = timedelta(seconds=15)
            settings = RecoverySettings(heartbeat_window=window, pending_window=window, max_resubmits=1)
            asyncio.run(apply_alerts(AlertSettings(webhook_url=f"{hooks.url}/hook"), settings))
            with _client() as client:
                actions = {a.name: [action.type for action in a.actions] for a in client.read_automations()}
                assert actions["llm-pipeline: crash zombie flow runs"] == ["change-flow-run-state"], actions
                assert actions["llm-pipeline: crash runs stuck pending"] == ["change-flow-run-state"], actions
                assert actions["llm-pipeline: resubmit crashed flow runs"] == ["do-nothing"], actions
                deployment = client.read_deployment_by_name("sleep-once/victim")
                runs = {}
                for name, state in (("silent", StateType.RUNNING), ("stuck", StateType.PENDING)):
                    runs[name] = client.create_flow_run_from_deployment(
                        deployment.id, parameters={"marker": str(tmp_path / name)}
                    )
                    client.set_flow_run_state(runs[name].id, State(type=state), force=True)
            started = time.monotonic()
            crashed = {
                name: wait_until(lambda r=run: (s := _state(r.id)).state.is_crashed() and s, 120, f"{name} Crashed")
                for name, run in runs.items()
            }
            marked_s = time.monotonic() - started
            assert crashed["silent"].state.message == silent_for(15), crashed["silent"].state
            assert crashed["stuck"].state.message == stuck_for(15), crashed["stuck"].state
            assert marked_s >= 15 - 1  # not before the window
            # one page for both: one message per deployment per cooldown (flows/alerts.py)
            pages = wait_until(
                lambda: [p for run in runs.values() for p in _pages(hooks, run.id, "failed")], 60, "the crash alert"
            )
            assert [p["state"] for p in pages] == ["Crashed"], pages
            assert any(why in pages[0]["message"] for why in (silent_for(15), stuck_for(15))), pages
            with _client() as client:
                assert len(client.read_flow_runs()) == 2  # nothing resubmitted, no check run
    finally:
        bare.stop()
    print(f"\nno check deployment: both runs Crashed on silence alone within {marked_s:.0f} s")


def test_a_resubmission_that_crashes_again_is_not_resubmitted_twice(server, deployed, hooks, tmp_path: Path) -> None:
    """RECOVERY_MAX_RESUBMITS=1 per original run: the resubmitted run's crash is the end, and a page says a person
    must look (the failure alert's cooldown may swallow a second crash of one deployment; this one has none)."""
    from prefect.client.schemas.objects import StateType
    from prefect.states import State

    from flows.recovery import resubmit_crashed

    with _client() as client:
        deployment = client.read_deployment_by_name("sleep-once/victim")
        run = client.create_flow_run_from_deployment(
            deployment.id, parameters={"marker": str(tmp_path / "m"), "seconds": 1}, tags=["recovery-attempt:1"]
        )
        client.set_flow_run_state(run.id, State(type=StateType.RUNNING), force=True)
        client.set_flow_run_state(run.id, State(type=StateType.CRASHED, message="killed"), force=True)
    # in a process of its own, as the resubmit-crashed deployment runs it: this test process's events client
    # may still point at another test module's server
    gave_up = subprocess.run(
        [sys.executable, "-c", f"from flows.recovery import resubmit_crashed; print(resubmit_crashed('{run.id}', 1))"],
        cwd=ROOT,
        env={**os.environ, "PREFECT_API_URL": server.api_url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert gave_up.returncode == 0 and gave_up.stdout.strip().splitlines()[-1] == "None", gave_up.stderr[-2000:]
    [page] = wait_until(lambda: _pages(hooks, run.id, "recovery"), 60, "the gave-up alert")
    assert "not resubmitted" in page["message"] and page["resubmitted_id"] is None, page
    assert resubmit_crashed(str(_crashed_child(deployment.id, tmp_path)), max_resubmits=1) is None
    failed_on_purpose = _failed_run(deployment.id, tmp_path)
    assert resubmit_crashed(str(failed_on_purpose), max_resubmits=1) is None  # Failed is the code's own verdict


def test_a_run_that_timed_out_pages_and_is_neither_crashed_nor_resubmitted(
    server, deployed, hooks, tmp_path: Path
) -> None:
    """A run stopped by its timeout ends `TimedOut`, a Failed-type state whose event is prefect.flow-run.TimedOut,
    not .Failed: the failure alert listened for .Failed and .Crashed only, and never paged for one (this test
    failed so). Past the zombie window it is still TimedOut and not resubmitted: a run that stalled would stall
    again (the zombie rule counts TimedOut as an end; Prefect also refuses its Crashed from a final state)."""
    from prefect.deployments import run_deployment

    with Worker(server.api_url, POOL, tmp_path, env={"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}):
        run = run_deployment("times-out/slow", timeout=0)
        ended = wait_until(lambda: (r := _state(run.id)).state.is_final() and r, 180, "the run to time out")
        assert ended.state.name == "TimedOut" and ended.state.is_failed(), ended.state
        [page] = wait_until(lambda: _pages(hooks, run.id, "failed"), 60, "the failure alert")
        assert page["state"] == "TimedOut", page
        # past the zombie window after its last heartbeat, and the trigger's evaluation
        time.sleep(WINDOW_S + 35)
    assert _state(run.id).state.name == "TimedOut"
    assert not _resubmissions(run.id)


def _failed_run(deployment_id: Any, tmp_path: Path) -> Any:
    from prefect.client.schemas.objects import StateType
    from prefect.states import State

    with _client() as client:
        run = client.create_flow_run_from_deployment(deployment_id, parameters={"marker": str(tmp_path / "f")})
        client.set_flow_run_state(run.id, State(type=StateType.RUNNING), force=True)
        client.set_flow_run_state(run.id, State(type=StateType.FAILED, message="a bug"), force=True)
    return run.id


def test_the_crashed_runs_manifest_says_crashed_and_where(tmp_path: Path) -> None:
    from llm_pipeline.manifest import Manifest, mark_crashed

    manifest = Manifest(tmp_path / "p" / "20261202T030000Z-abcdef12" / "manifest.json", "p", "r", "h", "c")
    manifest.path.parent.mkdir(parents=True)
    manifest.record("load-and-deduplicate-data", "completed")
    manifest.record("generate-qa-pairs", "running")
    path = mark_crashed(tmp_path, "abcdef12", "no heartbeat for 90 s")
    import json

    data = json.loads(path.read_text())
    assert data["status"] == "crashed" and data["crashed_in"] == "generate-qa-pairs"
    assert data["stages"]["generate-qa-pairs"]["status"] == "crashed"
    assert data["stages"]["load-and-deduplicate-data"]["status"] == "completed"
    assert mark_crashed(tmp_path, "abcdef12", "again") is None  # only a manifest still "running"


def _crashed_child(deployment_id: Any, tmp_path: Path) -> Any:
    """A Crashed run started from a parent run's task (as a GPU-pool stage's is): its parent retries it. The
    parent's task run is written through the API first (a task's own row reaches the server asynchronously)."""
    from prefect import task
    from prefect.client.schemas.objects import StateType
    from prefect.states import State

    @task(name="hand-off")
    def hand_off() -> None: ...

    with _client() as client:
        parent = client.create_flow_run_from_deployment(deployment_id, parameters={"marker": str(tmp_path / "p")})
        task_run = client.create_task_run(task=hand_off, flow_run_id=parent.id, dynamic_key="0")
        child = client.create_flow_run_from_deployment(
            deployment_id, parameters={"marker": str(tmp_path / "c")}, parent_task_run_id=task_run.id
        )
        client.set_flow_run_state(child.id, State(type=StateType.RUNNING), force=True)
        client.set_flow_run_state(child.id, State(type=StateType.CRASHED, message="killed"), force=True)
    return child.id
