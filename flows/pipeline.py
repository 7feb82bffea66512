"""The llm-pipeline flow: seven Prefect tasks, each wrapping one library stage (llm_pipeline.stages).

What Prefect adds here, and nothing more: retries by error class (flows/retries.py), caching, run logs,
and the run's identity. Caching: a stage's key is its own config section, the fingerprint of the files it
reads, the library's code version and the task's source; the run folder is left out, so a rerun on unchanged
input reuses the earlier result and links its files into the new run folder (the manifest says from where).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

# Importing this module runs flows/__init__.py first, which points Prefect's run logs at the library's logger.
from prefect import flow, task
from prefect.cache_policies import TASK_SOURCE, Inputs
from prefect.concurrency.sync import concurrency
from prefect.runtime import deployment, flow_run

from flows import artifacts
from flows.retries import retry_condition
from llm_pipeline import stages
from llm_pipeline.config import PipelineConfig, load_config
from llm_pipeline.errors import PipelineError
from llm_pipeline.io import file_fingerprint, write_json
from llm_pipeline.logging import bind, bound, configure_logging, get_logger
from llm_pipeline.manifest import Manifest
from llm_pipeline.stages import StageResult, materialize, outputs_exist

log = get_logger("flow")

# Where set (the compose stack sets it on CPU workers), the evaluation stage runs as this deployment on the GPU
# pool; unset (embedded mode, tests), it runs inline in the pipeline's own process.
EVALUATION_DEPLOYMENT_ENV = "LLM_PIPELINE_EVALUATION_DEPLOYMENT"
GPU_SLOTS = "gpu-slots"
STAGE_RESULT_FILE = "evaluate-models.stage.json"

# The key leaves out the whole config (each stage passes the sections it depends on in `key`), the run folder,
# and upstream results (their fingerprints are in `key`).
STAGE_CACHE = Inputs(exclude=["config", "run_dir", "upstream"]) + TASK_SOURCE
CACHED = {"cache_policy": STAGE_CACHE, "persist_result": True, "result_serializer": "json"}
RETRYING = {
    "retries": 2,
    "retry_delay_seconds": [5, 30],
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_condition,
}


@task(name="initialize-pipeline")
def initialize_pipeline(config: PipelineConfig, run_dir: str, run_id: str) -> StageResult:
    with bound(stage="initialize-pipeline"):
        return stages.initialize_pipeline(config, Path(run_dir), run_id)


@task(name="load-and-deduplicate-data", **CACHED, **RETRYING)
def load_and_deduplicate_data(config: PipelineConfig, run_dir: str, key: dict[str, Any]) -> StageResult:
    with bound(stage="load-and-deduplicate-data"):
        return stages.load_and_deduplicate_data(config, Path(run_dir))


@task(name="generate-qa-pairs", **CACHED, **RETRYING)
def generate_qa_pairs(config: PipelineConfig, run_dir: str, upstream: StageResult, key: dict[str, Any]) -> StageResult:
    with bound(stage="generate-qa-pairs"):
        return stages.generate_qa_pairs(config, upstream.path("documents"), Path(run_dir))


@task(name="setup-experiment-tracking")
def setup_experiment_tracking(
    config: PipelineConfig, run_dir: str, run_id: str, upstream: dict[str, StageResult]
) -> StageResult:
    with bound(stage="setup-experiment-tracking"):
        counts = {name: r.counts for name, r in upstream.items()}
        return stages.setup_experiment_tracking(
            config,
            Path(run_dir),
            run_id,
            deployment.get_name() or "local",
            counts,
            upstream["generate-qa-pairs"].path("qa_pairs"),
        )


@task(name="generate-benchmark", **CACHED, **RETRYING)
def generate_benchmark(
    config: PipelineConfig, run_dir: str, upstream: dict[str, StageResult], key: dict[str, Any]
) -> StageResult:
    with bound(stage="generate-benchmark"):
        return stages.generate_benchmark(
            config, upstream["qa"].path("qa_pairs"), upstream["documents"].path("documents"), Path(run_dir)
        )


@task(name="evaluate-models", **CACHED, **RETRYING)
def evaluate_models(config: PipelineConfig, run_dir: str, upstream: StageResult, key: dict[str, Any]) -> StageResult:
    with bound(stage="evaluate-models"):
        return stages.evaluate_models(config, upstream.path("benchmark"), Path(run_dir))


@task(name="evaluate-models")
def evaluate_models_elsewhere(deployment_name: str, parameters: dict[str, Any], run_dir: str) -> StageResult:
    """Hand the stage to the evaluation deployment (GPU pool); results come back as files on the shared volume."""
    from prefect.deployments import run_deployment

    with bound(stage="evaluate-models"):
        log.info("evaluation_handed_off", deployment=deployment_name)
        child = run_deployment(deployment_name, parameters=parameters, timeout=None, poll_interval=2)
        state = child.state
        if state is None or not state.is_completed():
            name = state.name if state else "unknown"
            raise PipelineError(
                f"evaluation deployment {deployment_name} ended {name}: "
                f"{state.message if state else ''} (flow run {child.id})"
            )
        return StageResult.model_validate_json((Path(run_dir) / STAGE_RESULT_FILE).read_text())


@task(name="finalize-pipeline")
def finalize_pipeline(
    config: PipelineConfig, run_dir: str, manifest: dict[str, Any], results: dict[str, StageResult]
) -> StageResult:
    with bound(stage="finalize-pipeline"):
        return stages.finalize_pipeline(config, Path(run_dir), manifest, results)


def _cached_call(task_fn: Any, run_dir: Path, **kwargs: Any) -> StageResult:
    """Run a cached task; if its cached files were deleted since, run it again for real."""
    result = task_fn(run_dir=str(run_dir), **kwargs)
    if not outputs_exist(result):
        log.warning("cached_outputs_missing", stage=result.stage, rerun=True)
        result = task_fn.with_options(refresh_cache=True)(run_dir=str(run_dir), **kwargs)
    return materialize(result, run_dir)


def _evaluate(config: PipelineConfig, run_dir: Path, bench: StageResult, code: str) -> StageResult:
    return _cached_call(
        evaluate_models,
        run_dir,
        config=config,
        upstream=bench,
        key={**_section(config, "evaluation"), "input": bench.fingerprint, "code": code},
    )


def _section(config: PipelineConfig, *names: str) -> dict[str, Any]:
    return {name: config.model_dump(mode="json")[name] for name in names}


@flow(name="llm-pipeline", log_prints=True)
def llm_pipeline(config_path: str = "configs/test.yaml", overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Documents in; deduplicated data, QA pairs, a benchmark, an evaluation report and a summary out."""
    config = load_config(config_path, overrides)  # a bad config fails here, before any work
    configure_logging(config.monitoring.log_level, config.monitoring.structured_logging)
    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + (flow_run.get_id() or "local")[:8]
    run_dir = (config.output_path / config.name / run_id).resolve()
    bind(run_id=run_id, pipeline=config.name)
    code = stages.code_version()
    prefix = artifacts.artifact_key(deployment.get_name() or config.name)
    manifest = Manifest(run_dir / "manifest.json", config.name, run_id, config.fingerprint(), code)
    results: dict[str, StageResult] = {}

    def record(result: StageResult) -> StageResult:
        results[result.stage] = result
        manifest.record(result.stage, "cached" if result.cached else "completed", result)
        artifacts.stage_summary(prefix, result)
        return result

    current = stages.STAGES[0]
    try:
        record(initialize_pipeline(config, str(run_dir), run_id))
        current = stages.STAGES[1]
        data = record(
            _cached_call(
                load_and_deduplicate_data,
                run_dir,
                config=config,
                key={**_section(config, "data", "dedup"), "input": file_fingerprint(config.data.path), "code": code},
            )
        )
        current = stages.STAGES[2]
        with artifacts.progress_artifacts(prefix, current):
            qa = record(
                _cached_call(
                    generate_qa_pairs,
                    run_dir,
                    config=config,
                    upstream=data,
                    key={**_section(config, "qa"), "input": data.fingerprint, "code": code},
                )
            )
        current = stages.STAGES[3]
        record(setup_experiment_tracking(config, str(run_dir), run_id, {s: results[s] for s in stages.STAGES[1:3]}))
        current = stages.STAGES[4]
        bench = record(
            _cached_call(
                generate_benchmark,
                run_dir,
                config=config,
                upstream={"qa": qa, "documents": data},
                key={
                    **_section(config, "benchmark"),
                    "domain": config.domain,
                    "input": [qa.fingerprint, data.fingerprint],
                    "code": code,
                },
            )
        )
        current = stages.STAGES[5]
        elsewhere = os.environ.get(EVALUATION_DEPLOYMENT_ENV)
        if elsewhere:
            parameters = {
                "config_path": config_path,
                "overrides": overrides,
                "run_dir": str(run_dir),
                "benchmark_stage": bench.model_dump(mode="json"),
            }
            record(evaluate_models_elsewhere(elsewhere, parameters, str(run_dir)))
        else:
            with artifacts.progress_artifacts(prefix, current):
                record(_evaluate(config, run_dir, bench, code))
        current = stages.STAGES[6]
        final = record(finalize_pipeline(config, str(run_dir), manifest.data, results))
    except Exception as exc:
        manifest.record(current, "failed", error=f"{type(exc).__name__}: {exc}")
        manifest.finish("failed")
        artifacts.resources_table(prefix, results)  # a failed run's resource use counts in health too
        log.error("pipeline_failed", stage=current, error=f"{type(exc).__name__}: {exc}")
        raise
    manifest.finish("completed")
    artifacts.resources_table(prefix, results)
    artifacts.metrics_table(prefix, Path(final.outputs["summary"]))
    tracking = json.loads(results[stages.STAGES[3]].path("tracking").read_text())
    artifacts.report_artifact(prefix, run_id, final, tracking)
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


@flow(name="evaluate-models")
def evaluate_models_flow(
    config_path: str, run_dir: str, benchmark_stage: dict[str, Any], overrides: dict[str, Any] | None = None
) -> str:
    """The evaluation stage as its own flow, deployed on the GPU pool and called by the pipeline with
    run_deployment. It holds a `gpu-slots` global concurrency slot while it runs (a no-op where that limit does
    not exist) and writes its StageResult beside its outputs, so the hand-off back is a file, not a pickle."""
    config = load_config(config_path, overrides)
    configure_logging(config.monitoring.log_level, config.monitoring.structured_logging)
    folder = Path(run_dir)
    bind(run_id=folder.name, pipeline=config.name)
    bench = StageResult.model_validate(benchmark_stage)
    prefix = artifacts.artifact_key(deployment.get_name() or "evaluate-models", config.name)
    with concurrency(GPU_SLOTS, occupy=1), artifacts.progress_artifacts(prefix, "evaluate-models"):
        result = _evaluate(config, folder, bench, stages.code_version())
    artifacts.stage_summary(prefix, result)
    path = folder / STAGE_RESULT_FILE
    write_json(path, result.model_dump(mode="json"))
    _release_accelerator_memory()
    return str(path)


def _release_accelerator_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
