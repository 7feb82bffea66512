"""The production orchestration against real parts: Prefect server on Postgres (testcontainers), real process
workers. Pools and queues as code, deployments and schedules, queue limits, priorities, the hand-off to the GPU
pool through run_deployment, and a failed child failing its parent."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Worker, prefect_api, wait_until
from workers import pools

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
SMALL = {"benchmark": {"size": 16}, "evaluation": {"metrics": ["rouge", "bleu", "exact_match"]}}


@pytest.fixture(scope="module")
def api(postgres_prefect_server, tmp_path_factory):
    storage = tmp_path_factory.mktemp("pg-results")
    with prefect_api(postgres_prefect_server.api_url, storage):
        yield postgres_prefect_server


def client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def wait_final(flow_run_ids: list[Any], timeout: float) -> list[Any]:
    deadline = time.monotonic() + timeout
    with client() as c:
        while True:
            runs = [c.read_flow_run(i) for i in flow_run_ids]
            if all(r.state and r.state.is_final() for r in runs) or time.monotonic() > deadline:
                return runs
            time.sleep(1)


@pytest.fixture(scope="module")
def applied(api) -> list[str]:
    return asyncio.run(pools.apply())


@pytest.fixture(scope="module")
def deployed(applied) -> list[str]:
    from flows.deployments import deploy_all

    return deploy_all(source=ROOT)


def test_pools_queues_and_limits_as_code_are_idempotent(applied) -> None:
    assert any(line.startswith("created pool llm-pipeline-pool") for line in applied)
    assert asyncio.run(pools.apply()) == []  # a second `make deploy` changes nothing
    with client() as c:
        for name in (pools.CPU_POOL, pools.GPU_POOL, pools.DOCKER_POOL):
            queues = {q.name: (q.priority, q.concurrency_limit) for q in c.read_work_queues(work_pool_name=name)}
            assert queues == {"high": (1, 2), "normal": (2, 5), "low": (3, 10), "default": (4, 1)}, name
            assert c.read_work_pool(name).concurrency_limit is not None
        assert c.read_work_pool(pools.DOCKER_POOL).type == "docker"
        template = c.read_work_pool(pools.DOCKER_POOL).base_job_template
        assert template["job_configuration"]["container_create_kwargs"] == "{{ container_create_kwargs }}"
        request = template["variables"]["properties"]["container_create_kwargs"]["default"]["device_requests"][0]
        assert request["driver"] == "nvidia" and request["capabilities"] == [["gpu"]]
        assert c.read_global_concurrency_limit_by_name(pools.GPU_SLOTS).limit == 1


def test_deployments_have_their_schedules_queues_and_limits(deployed) -> None:
    from flows.deployments import deploy_all

    expected = {
        "test-pipeline": ("low", None, pools.CPU_POOL),
        "ev-charging-pipeline": ("high", "0 3 * * *", pools.CPU_POOL),
        "general-pipeline": ("normal", "0 2 * * 0", pools.CPU_POOL),
        "evaluate-models": ("high", None, pools.GPU_POOL),
        "finetune-model": ("high", None, pools.GPU_POOL),
        "health-check": ("normal", "0 * * * *", pools.CPU_POOL),
    }
    with client() as c:
        for name, (queue, cron, pool) in expected.items():
            flow_name = {
                "evaluate-models": "run-stage",
                "finetune-model": "run-stage",
                "health-check": "health-check",
            }.get(name, "llm-pipeline")
            deployment = c.read_deployment_by_name(f"{flow_name}/{name}")
            assert deployment.work_queue_name == queue and deployment.work_pool_name == pool, name
            crons = [(s.schedule.cron, s.schedule.timezone) for s in deployment.schedules]
            assert crons == ([(cron, "UTC")] if cron else []), name
            assert deployment.global_concurrency_limit is not None
            assert deployment.global_concurrency_limit.limit == 1, name
    assert deploy_all(source=ROOT) == deployed  # redeploying updates in place: same ids


@pytest.fixture(scope="module")
def workers(deployed, tmp_path_factory):
    """A CPU and a GPU-pool process worker, as the compose stack runs them (the GPU one on CPU here)."""
    home = tmp_path_factory.mktemp("workers")
    out = home / "outputs"
    env = {
        "PIPELINE__OUTPUT_PATH": str(out),
        "PREFECT_LOCAL_STORAGE_PATH": str(home / "results"),
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
    }
    cpu = Worker(
        pytest_api_url(),
        pools.CPU_POOL,
        home,
        env={**env, "LLM_PIPELINE_STAGE_FLOW": "run-stage"},  # GPU-pool stages run as run-stage/<stage>
    )
    gpu = Worker(pytest_api_url(), pools.GPU_POOL, home, env=env)
    yield out
    for worker in (cpu, gpu):  # both told first: their waits for a run still going overlap
        worker.terminate()
    cpu.stop()
    gpu.stop()


def pytest_api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


def test_test_deployment_completes_and_hands_evaluation_to_the_gpu_pool(workers) -> None:
    from prefect.deployments import run_deployment

    run = run_deployment("llm-pipeline/test-pipeline", parameters={"overrides": SMALL}, timeout=0)
    [final] = wait_final([run.id], timeout=600)
    assert final.state.is_completed(), final.state
    with client() as c:
        children = [
            r
            for r in c.read_flow_runs()
            if r.parent_task_run_id and r.deployment_id and c.read_deployment(r.deployment_id).name == "evaluate-models"
        ]
    assert children and all(r.state.is_completed() for r in children)
    [run_dir] = [p for p in (workers / "test-pipeline").iterdir() if p.name.endswith(str(run.id)[:8])]
    assert (run_dir / "evaluate-models.stage.json").exists()
    assert sum(1 for _ in (run_dir / "predictions.jsonl").open()) == 2 * 16
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["stages"]["evaluate-models"]["status"] == "completed"


def test_finetuning_is_handed_to_the_gpu_pool_and_its_adapter_evaluated(workers, tmp_path) -> None:
    """finetune.enabled: the stage runs as run-stage/finetune-model on the GPU pool's worker (holding a gpu-slots
    slot), its adapter comes back through the shared folder, and evaluation (on the GPU pool too) scores it."""
    from prefect.deployments import run_deployment

    from llm_pipeline.evaluation.candidates import answer_messages
    from tests.tiny_models import save, tiny_llama, train_tokenizer

    corpus = (ROOT / "data/ev_charging/documents.jsonl").read_text(errors="replace")
    tokenizer = train_tokenizer([corpus, *[m["content"] for m in answer_messages("question", "context")]])
    base = save(tiny_llama(tokenizer), tokenizer, tmp_path / "base")
    finetune = {"enabled": True, "base_model": str(base), "max_steps": 4, "device": "cpu", "eval_max_new_tokens": 4}
    run = run_deployment(
        "llm-pipeline/test-pipeline", parameters={"overrides": {**SMALL, "finetune": finetune}}, timeout=0
    )
    [final] = wait_final([run.id], timeout=900)
    assert final.state.is_completed(), final.state
    with client() as c:
        children = {
            c.read_deployment(r.deployment_id).name: r
            for r in c.read_flow_runs()
            if r.parent_task_run_id and r.deployment_id and r.parameters.get("run_id", "").endswith(str(run.id)[:8])
        }
    assert {"finetune-model", "evaluate-models"} <= set(children)
    assert all(r.state.is_completed() for r in children.values())
    [run_dir] = [p for p in (workers / "test-pipeline").iterdir() if p.name.endswith(str(run.id)[:8])]
    assert json.loads((run_dir / "finetune.json").read_text())["steps"] == 4
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    assert {"base", "tuned"} <= set(json.loads((run_dir / "evaluation.json").read_text()))


def test_a_failed_evaluation_child_fails_the_pipeline(workers) -> None:
    from prefect import flow
    from prefect.deployments import run_deployment

    flow.from_source(source=str(ROOT), entrypoint="tests/orchestration_flows.py:always_fails").deploy(
        name="evaluate-models", work_pool_name=pools.GPU_POOL, work_queue_name="high", print_next_steps=False
    )
    run = run_deployment(
        "llm-pipeline/test-pipeline",
        parameters={"overrides": SMALL},
        timeout=0,
        job_variables={"env": {"LLM_PIPELINE_STAGE_FLOW": "always-fails"}},  # its evaluate-models deployment
    )
    [final] = wait_final([run.id], timeout=600)
    assert final.state.is_failed(), final.state
    assert "always-fails/evaluate-models" in (final.state.message or "") or _task_failed(run.id, "evaluate-models")


def test_a_stage_past_its_timeout_cancels_the_run_it_handed_off(workers) -> None:
    """The GPU pool's evaluation hangs (a stage flow that never returns): at its limit (execution.stage_timeouts,
    counted from the stage's start: the stages before it do not count) the pipeline fails TimedOut naming the
    stage, and the child run it was waiting on is cancelled and its process killed by its worker, so it holds
    neither the GPU nor a gpu-slots slot."""
    import psutil
    from prefect import flow
    from prefect.deployments import run_deployment

    flow.from_source(source=str(ROOT), entrypoint="tests/orchestration_flows.py:stalls").deploy(
        name="evaluate-models", work_pool_name=pools.GPU_POOL, work_queue_name="high", print_next_steps=False
    )
    limits = {"run_timeout": "1h", "stage_timeouts": {"evaluate-models": "60s"}}  # the child starts within it
    run = run_deployment(
        "llm-pipeline/test-pipeline",
        parameters={"overrides": {**SMALL, "execution": limits}},
        timeout=0,
        job_variables={"env": {"LLM_PIPELINE_STAGE_FLOW": "stalls"}},  # its evaluate-models deployment
    )
    [final] = wait_final([run.id], timeout=600)
    assert final.state.is_failed() and final.state.name == "TimedOut", final.state
    assert "execution.stage_timeouts.evaluate-models: the stage was still running" in (final.state.message or ""), (
        final.state.message
    )
    [run_dir] = [p for p in (workers / "test-pipeline").iterdir() if p.name.endswith(str(run.id)[:8])]
    pid = int((run_dir / "evaluate-models.stalled.pid").read_text())
    with client() as c:
        [child] = [
            r
            for r in c.read_flow_runs()
            if r.parent_task_run_id and r.parameters.get("run_id", "").endswith(str(run.id)[:8])
        ]
    [child] = wait_final([child.id], timeout=120)
    assert child.state.is_cancelled(), child.state

    def gone() -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_until(gone, 60, "the stalled stage's process to be killed")


def _task_failed(flow_run_id: Any, name: str) -> bool:
    from prefect.client.schemas.filters import FlowRunFilter

    with client() as c:
        runs = c.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [flow_run_id]}))
    return any(r.name.startswith(name) and r.state.is_failed() for r in runs)


def _deploy_sleeper(pool: str, queue: str, name: str) -> None:
    from prefect import flow

    flow.from_source(source=str(ROOT), entrypoint="tests/orchestration_flows.py:sleeper").deploy(
        name=name, work_pool_name=pool, work_queue_name=queue, print_next_steps=False
    )


def _make_pool(name: str, queues: dict[str, tuple[int, int | None]], limit: int | None) -> None:
    from prefect.client.schemas.actions import WorkPoolCreate

    with client() as c:
        c.create_work_pool(
            WorkPoolCreate(
                name=name, type="process", concurrency_limit=limit, base_job_template=pools.process_job_template()
            )
        )
        for queue, (priority, queue_limit) in queues.items():
            c.create_work_queue(name=queue, work_pool_name=name, priority=priority, concurrency_limit=queue_limit)


def _intervals(runs: list[Any]) -> list[tuple[float, float]]:
    return [(r.start_time.timestamp(), r.end_time.timestamp()) for r in runs]


def test_a_queue_limited_to_two_never_runs_more_than_two(api, tmp_path: Path) -> None:
    from prefect.deployments import run_deployment

    _make_pool("limit-test-pool", {"limited": (1, 2)}, limit=None)
    _deploy_sleeper("limit-test-pool", "limited", "limited")
    runs = [run_deployment("sleeper/limited", parameters={"seconds": 4, "label": str(i)}, timeout=0) for i in range(6)]
    with Worker(api.api_url, "limit-test-pool", tmp_path):
        finals = wait_final([r.id for r in runs], timeout=240)
    assert all(r.state.is_completed() for r in finals), [r.state for r in finals]
    intervals = _intervals(finals)
    overlap = max(sum(1 for s, e in intervals if s <= t < e) for t, _ in intervals)
    assert overlap == 2  # two at once (the limit is used), never three


def test_high_priority_runs_start_before_low_ones(api, tmp_path: Path) -> None:
    from prefect.deployments import run_deployment

    _make_pool("priority-test-pool", {"high": (1, None), "low": (3, None)}, limit=1)
    _deploy_sleeper("priority-test-pool", "low", "low")
    _deploy_sleeper("priority-test-pool", "high", "high")
    low = [run_deployment("sleeper/low", parameters={"seconds": 0.5, "label": f"low{i}"}, timeout=0) for i in range(3)]
    high = [
        run_deployment("sleeper/high", parameters={"seconds": 0.5, "label": f"high{i}"}, timeout=0) for i in range(3)
    ]
    with Worker(api.api_url, "priority-test-pool", tmp_path):  # started after all six were queued
        finals = wait_final([r.id for r in low + high], timeout=240)
    assert all(r.state.is_completed() for r in finals)
    started = {r.id: r.start_time for r in finals}
    assert max(started[r.id] for r in high) < min(started[r.id] for r in low)
    assert max(started.values()) - min(started.values()) < timedelta(minutes=3)
