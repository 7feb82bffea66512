"""The pipeline's stages: registry.py declares them in order (contract.py says what a declaration holds), one
module per stage holds its function, runner.py runs one over the files in a run folder, result.py is what a
stage run leaves behind. Prefect is not imported here: flows/pipeline.py turns each declaration into a task."""

from llm_pipeline.stages.contract import MANIFEST_FILE, Stage, StageContext, read_manifest
from llm_pipeline.stages.registry import PIPELINE, STAGES, stage_named
from llm_pipeline.stages.result import StageResult, code_version, materialize, outputs_exist
from llm_pipeline.stages.runner import cache_key, resolve_inputs, run_stage

__all__ = [
    "MANIFEST_FILE",
    "PIPELINE",
    "STAGES",
    "Stage",
    "StageContext",
    "StageResult",
    "cache_key",
    "code_version",
    "materialize",
    "outputs_exist",
    "read_manifest",
    "resolve_inputs",
    "run_stage",
    "stage_named",
]
