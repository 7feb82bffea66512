"""Running one declared stage: its inputs resolved from the run's manifest (files, never objects), the stage
function timed and sampled, its declared outputs checked; and the stage's cache key, derived from its
declaration. Any process that sees the run folder can run any stage: the hand-offs are all files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llm_pipeline.config import PipelineConfig
from llm_pipeline.errors import PipelineError
from llm_pipeline.logging import bound
from llm_pipeline.stages.contract import Stage, StageContext, read_manifest
from llm_pipeline.stages.result import StageResult, timed


def resolve_inputs(stage: Stage, manifest: dict[str, Any], run_dir: Path) -> dict[str, Path]:
    """Each declared input as a path in the run folder, from the manifest entry of the stage that wrote it."""
    inputs = {}
    for name in stage.inputs:
        producer, output = stage.producer(name)
        entry = manifest["stages"].get(producer)
        if not entry or output not in entry.get("outputs", {}):
            raise PipelineError(
                f"stage {stage.name} needs {output!r} from {producer}, which the manifest in {run_dir} does not list"
            )
        inputs[name] = run_dir / entry["outputs"][output]
    return inputs


def run_stage(stage: Stage, config: PipelineConfig, run_dir: Path, run_id: str, group: str = "local") -> StageResult:
    """Run one stage over the files in `run_dir`; the result lists its files, counts, timing and resources."""
    with bound(stage=stage.name):
        inputs = resolve_inputs(stage, read_manifest(run_dir), run_dir) if stage.inputs else {}
        context = StageContext(stage, config, run_dir, run_id, group, inputs)
        with timed(stage.name) as result:
            run_dir.mkdir(parents=True, exist_ok=True)
            counts = stage.run(context)
            missing = [name for name in stage.outputs if not context.output(name).exists()]
            if missing:
                raise PipelineError(f"stage {stage.name} returned without writing its declared outputs {missing}")
            result.outputs = {name: str(context.output(name)) for name in stage.outputs} | context.extra_outputs
            result.counts = counts
        return result


def cache_key(stage: Stage, config: PipelineConfig, manifest: dict[str, Any], code: str) -> dict[str, Any]:
    """What decides a cached stage's outputs: its config sections, the fingerprints of the stages its inputs come
    from (in declaration order), the library's code version, and whatever its declaration adds."""
    dumped = config.model_dump(mode="json")
    producers = list(dict.fromkeys(stage.producer(name)[0] for name in stage.inputs if name not in stage.keyless))
    return {
        "stage": stage.name,
        **{section: dumped[section] for section in stage.reads},
        "input": [manifest["stages"][producer]["fingerprint"] for producer in producers],
        "code": code,
        **(stage.key(config) if stage.key else {}),
    }
