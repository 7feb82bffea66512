"""The llm-pipeline flow: one Prefect task per declared stage (llm_pipeline.stages.PIPELINE), in order.

What Prefect adds here, and nothing more: retries by error class (flows/retries.py), caching, run logs, the
run's identity, artifacts, and the hand-off of GPU-pool stages to their own deployment. Everything else comes
from the stage declarations: task names, which stages are cached and on what key (the stage's config sections,
the fingerprints of the stages it reads from, the library's code version; the run folder is left out, so a rerun
on unchanged input reuses the earlier result and links its files into the new run folder, and the manifest says
from where), which are retried, which report progress, and which prefer the GPU pool.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

# Importing this module runs flows/__init__.py first, which points Prefect's run logs at the library's logger.
from prefect import Task, flow, get_client, task
from prefect.cache_policies import TASK_SOURCE, Inputs
from prefect.client.orchestration import SyncPrefectClient
from prefect.runtime import deployment, flow_run
from prefect.states import Cancelling
from prefect.utilities.timeout import timeout

from flows import artifacts
from flows.outage import GPU_SLOTS, held_slot, lost_the_api, through_outage
from flows.retries import task_retry_options
from llm_pipeline.config import PipelineConfig, load_config
from llm_pipeline.errors import ConfigError, PipelineError, RunTimedOut, TransientError
from llm_pipeline.io import unwritable_folder, write_json
from llm_pipeline.logging import bound, configure_logging, get_logger
from llm_pipeline.manifest import Manifest
from llm_pipeline.stages import (
    MANIFEST_FILE,
    PIPELINE,
    Stage,
    StageResult,
    cache_key,
    code_version,
    materialize,
    outputs_exist,
    read_manifest,
    resolve_inputs,
    run_stage,
    stage_named,
)

log = get_logger("flow")

# Where set (the compose stack sets it on CPU workers), a stage declared for the GPU pool runs as the deployment
# `<this flow>/<stage name>` on that pool; unset (embedded mode, tests), it runs inline in the pipeline's process.
STAGE_FLOW_ENV = "LLM_PIPELINE_STAGE_FLOW"
STAGE_FLOW = "run-stage"
GPU_SLOT_LEASE_S = 60
HAND_OFF_POLL_S = 2

# The key is `key` (the stage's name, the config sections it reads, its inputs' fingerprints, the code version)
# and the task's source: the declaration object, the whole config, the run folder and run id are left out.
STAGE_CACHE = Inputs(exclude=["stage", "config", "run_dir", "run_id", "group"]) + TASK_SOURCE


def _run_declared_stage(
    stage: Stage, config: PipelineConfig, run_dir: str, run_id: str, group: str, key: dict[str, Any]
) -> StageResult:
    return run_stage(stage, config, Path(run_dir), run_id, group)


def stage_task(stage: Stage, config: PipelineConfig) -> Task[..., StageResult]:
    """The Prefect task for one declared stage. Built per flow run: its retry options hold per-run state."""
    options: dict[str, Any] = {"name": stage.name}
    if stage.cached:
        options.update(cache_policy=STAGE_CACHE, persist_result=True, result_serializer="json")
    if stage.retry == "table":
        options.update(task_retry_options(config.stage_retry))
    return task(**options)(_run_declared_stage)


def run_inline(
    stage: Stage, config: PipelineConfig, run_dir: Path, run_id: str, group: str, manifest: dict[str, Any], code: str
) -> StageResult:
    """Run a stage as a task of the current flow; a cached stage whose cached files were deleted runs again."""
    run = stage_task(stage, config)
    kwargs = {
        "stage": stage,
        "config": config,
        "run_dir": str(run_dir),
        "run_id": run_id,
        "group": group,
        "key": cache_key(stage, config, manifest, code) if stage.cached else {},
    }
    result = run(**kwargs)
    if not stage.cached:
        return result
    if not outputs_exist(result):
        log.warning("cached_outputs_missing", stage=stage.name, rerun=True)
        result = run.with_options(refresh_cache=True)(**kwargs)
    return materialize(result, run_dir)


def _deployment_name() -> str | None:
    """The run's deployment (None in embedded mode). Prefect asks the API with a client of its own, and a new client
    gives up on the first refused connection: through an API restart as the run begins, asked again."""
    return through_outage(deployment.get_name, "read the run's deployment")


def _stage_result_file(run_dir: Path, stage: Stage) -> Path:
    return run_dir / f"{stage.name}.stage.json"


def _hand_off(deployment_name: str, parameters: dict[str, Any], result_file: str) -> StageResult:
    """Run the stage as its deployment on its pool; its result comes back as a file on the shared volume."""
    from prefect.deployments import run_deployment

    log.info("stage_handed_off", deployment=deployment_name)
    key = uuid.uuid4().hex  # a creation retried through an API outage finds the run it made, never a second one
    child = through_outage(
        lambda: run_deployment(deployment_name, parameters=parameters, timeout=0, idempotency_key=key),
        "create the stage's run",
    )
    child_id = child.id
    with get_client(sync_client=True) as client:
        try:
            while not (child.state is not None and child.state.is_final()):
                time.sleep(HAND_OFF_POLL_S)
                child = through_outage(lambda: client.read_flow_run(child_id), f"follow flow run {child_id}")
        except BaseException:  # the pipeline stopped following it (execution.run_timeout): its worker stops it too
            cancel_stage_run(client, child_id)
            raise
    state = child.state
    if state is not None and state.is_crashed():
        # its worker died (or its heartbeats stopped): the stage's retry (TransientError's row) submits it again
        raise TransientError(f"deployment {deployment_name} crashed: {state.message or ''} (flow run {child.id})")
    if state is not None and state.is_failed() and lost_the_api(state.message):
        # it failed on reaching the API, not on its work (a call Prefect makes with a new client, which gives up on
        # the first refused connection, as the API restarted): TransientError's row; a finished stage is cached
        raise TransientError(f"deployment {deployment_name} lost the API: {state.message} (flow run {child.id})")
    if state is None or not state.is_completed():
        name = state.name if state else "unknown"
        raise PipelineError(
            f"deployment {deployment_name} ended {name}: {state.message if state else ''} (flow run {child.id})"
        )
    return StageResult.model_validate_json(Path(result_file).read_text())


def cancel_stage_run(client: SyncPrefectClient, flow_run_id: UUID, why: str = "its pipeline run stopped") -> bool:
    """Set a handed-off stage's run Cancelling (its worker stops it); a failure is logged, not raised: the caller's
    own outcome (the pipeline's error, the recovery's resubmission) is the one that matters."""
    try:
        client.set_flow_run_state(flow_run_id, Cancelling(message=why), force=True)
        log.warning("stage_run_cancelled", flow_run=str(flow_run_id), why=why)
        return True
    except Exception as exc:  # noqa: BLE001
        log.error("stage_run_not_cancelled", flow_run=str(flow_run_id), error=f"{type(exc).__name__}: {exc}"[:200])
        return False


def run_elsewhere(
    stage: Stage,
    config: PipelineConfig,
    flow_name: str,
    config_path: str,
    overrides: dict[str, Any] | None,
    run_dir: Path,
    run_id: str,
    group: str,
) -> StageResult:
    parameters = {
        "stage": stage.name,
        "config_path": config_path,
        "overrides": overrides,
        "run_dir": str(run_dir),
        "run_id": run_id,
        "group": group,
    }
    retries = task_retry_options(config.stage_retry) if stage.retry == "table" else {}
    hand_off = task(name=stage.name, **retries)(_hand_off)  # a crashed child is submitted again
    return hand_off(f"{flow_name}/{stage.name}", parameters, str(_stage_result_file(run_dir, stage)))


def _progress(prefix: str, stage: Stage) -> AbstractContextManager[None]:
    return artifacts.progress_artifacts(prefix, stage.name) if stage.progress else nullcontext()


@flow(name="llm-pipeline", log_prints=True)
def llm_pipeline(config_path: str = "configs/test.yaml", overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Documents in; deduplicated data, QA pairs, a benchmark, an evaluation report and a summary out."""
    config = load_config(config_path, overrides)  # a bad config fails here, before any work
    configure_logging(config.monitoring.log_level, config.monitoring.structured_logging)
    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + (flow_run.get_id() or "local")[:8]
    run_dir = (config.output_path / config.name / run_id).resolve()
    if problem := unwritable_folder(run_dir):  # on a worker too: named, and never retried
        raise ConfigError([("output_path", f"the run's outputs cannot be written in {run_dir} ({problem})")])
    # bound for the run's body only: the next flow in this process (a served flow, embedded runs one after
    # another) must not log its events under this run's id
    with bound(run_id=run_id, pipeline=config.name):
        return _run_pipeline(config, config_path, overrides, run_id, run_dir)


def _run_pipeline(
    config: PipelineConfig, config_path: str, overrides: dict[str, Any] | None, run_id: str, run_dir: Path
) -> dict[str, Any]:
    code = code_version()
    name = _deployment_name()
    group = name or "local"
    prefix = artifacts.artifact_key(name or config.name)
    manifest = Manifest(run_dir / MANIFEST_FILE, config.name, run_id, config.fingerprint(), code)
    stage_flow_name = os.environ.get(STAGE_FLOW_ENV)
    results: dict[str, StageResult] = {}
    current = PIPELINE[0].name
    run_limit = config.execution.run_timeout
    run_deadline = time.monotonic() + run_limit.total_seconds() if run_limit is not None else None
    try:
        for stage in PIPELINE:
            current = stage.name
            manifest.record(stage.name, "running")  # a crash from here on leaves the stage it was in
            with _deadline(stage.name, config.execution.stage_timeouts.get(stage.name), run_limit, run_deadline):
                if stage.runs_on_pool(config) and stage_flow_name:
                    result = run_elsewhere(
                        stage, config, stage_flow_name, config_path, overrides, run_dir, run_id, group
                    )
                else:
                    with _progress(prefix, stage):
                        result = run_inline(stage, config, run_dir, run_id, group, manifest.data, code)
            results[stage.name] = result
            manifest.record(stage.name, "cached" if result.cached else "completed", result)
            artifacts.stage_summary(prefix, result, config.output_path)
    except Exception as exc:
        try:
            manifest.record(current, "failed", error=f"{type(exc).__name__}: {exc}")
            manifest.finish("failed")
        except OSError as unwritable:  # the folder itself is the trouble: the stage's error is the one to report
            log.error(
                "manifest_unwritable", path=str(manifest.path), error=f"{type(unwritable).__name__}: {unwritable}"
            )
        artifacts.resources_table(prefix, results)  # a failed run's resource use counts in health too
        log.error("pipeline_failed", stage=current, error=f"{type(exc).__name__}: {exc}")
        raise
    manifest.finish("completed")
    last = PIPELINE[-1]
    final = results[last.name]
    artifacts.resources_table(prefix, results)
    artifacts.metrics_table(prefix, Path(final.outputs["summary"]))
    tracking = json.loads(resolve_inputs(last, manifest.data, run_dir)["tracking"].read_text())
    artifacts.report_artifact(prefix, run_id, final, tracking, config.output_path)
    log.info("pipeline_completed", run_dir=str(run_dir), report=final.outputs["report"])
    return {
        "run_id": run_id,
        "flow_run_id": flow_run.get_id(),
        "run_dir": str(run_dir),
        "report": final.outputs["report"],
        "summary": final.outputs["summary"],
        "stages": {name: r.counts for name, r in results.items()},
        "cached": [name for name, r in results.items() if r.cached],
    }


class _PastDeadline(TimeoutError):
    """The deadline's own timeout, told apart from a TimeoutError a stage raised."""


@contextmanager
def _deadline(
    stage: str, stage_limit: timedelta | None, run_limit: timedelta | None, run_deadline: float | None
) -> Iterator[None]:
    """The stage stopped at whichever comes first, its own limit (execution.stage_timeouts) or the run's deadline
    (execution.run_timeout, monotonic), with RunTimedOut naming the stage and the limit. One Prefect timeout scope
    per stage, never two nested: in the main thread (a worker's flow-run process, `llm-pipeline run`) it is an
    alarm, which interrupts a blocked system call too, and Prefect makes a scope inside an alarm a watcher thread,
    which cannot; elsewhere an exception raised in the thread at its next Python line."""
    left = None if run_deadline is None else run_deadline - time.monotonic()
    by_stage = stage_limit is not None and (left is None or stage_limit.total_seconds() <= left)
    seconds = stage_limit.total_seconds() if by_stage and stage_limit is not None else left
    if by_stage:
        reason = f"execution.stage_timeouts.{stage}: the stage was still running after {stage_limit}"
    else:
        reason = f"execution.run_timeout: the run was still in stage {stage} after {run_limit}"
    reason += "; stopped (not retried: a stalled stage stalls again). Raise the limit if it is only slow."
    if seconds is None:
        yield
        return
    if seconds <= 0:  # the run's time ran out between stages
        raise RunTimedOut(reason)
    try:
        with timeout(seconds, timeout_exc_type=_PastDeadline):
            yield
    except _PastDeadline as exc:
        raise RunTimedOut(reason) from exc


@flow(name=STAGE_FLOW)
def stage_flow(
    stage: str,
    config_path: str,
    run_dir: str,
    run_id: str,
    overrides: dict[str, Any] | None = None,
    group: str = "local",
) -> str:
    """One stage of a pipeline run as its own flow run: deployed once per GPU-pool stage (named after it) and
    called by the pipeline with run_deployment. It reads the stage's inputs through the run's manifest on the
    shared volume, holds a `gpu-slots` global concurrency slot while a GPU stage runs (a no-op where that limit
    does not exist), and writes its StageResult beside its outputs: the hand-off back is a file, not a pickle."""
    config = load_config(config_path, overrides)
    configure_logging(config.monitoring.log_level, config.monitoring.structured_logging)
    declared = stage_named(stage)
    folder = Path(run_dir)
    with bound(run_id=run_id, pipeline=config.name):
        return _run_stage_flow(declared, config, folder, run_id, group, stage)


def _run_stage_flow(declared: Stage, config: PipelineConfig, folder: Path, run_id: str, group: str, stage: str) -> str:
    prefix = artifacts.artifact_key(stage, config.name)  # its deployment is named after the stage (no API call)
    # a 60 s lease (the API's minimum), renewed while the stage runs (through an API restart too: flows/outage.py):
    # a killed gpu-worker's slot is repossessed a minute after its last renewal, before the zombie automation has
    # crashed the run, so the retry is not blocked
    slot = held_slot(GPU_SLOTS, lease_s=GPU_SLOT_LEASE_S) if declared.pool == "gpu" else nullcontext()
    with slot, _progress(prefix, declared):
        result = run_inline(declared, config, folder, run_id, group, read_manifest(folder), code_version())
    path = _stage_result_file(folder, declared)
    write_json(path, result.model_dump(mode="json"))  # first: the artifact after it may wait on the API
    artifacts.stage_summary(prefix, result, config.output_path)
    _release_accelerator_memory()
    return str(path)


def _release_accelerator_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
