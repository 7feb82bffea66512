"""The models a config names by hub id, and their download into the Hugging Face cache ahead of a run
(`llm-pipeline models`, `make models`): the 03:00 run then loads from the cache with the hub off."""

from __future__ import annotations

from pathlib import Path

from llm_pipeline.config import PipelineConfig
from llm_pipeline.qa.backends import resolve_backend


def configured_models(config: PipelineConfig) -> list[tuple[str, str]]:
    """(setting, hub id) for every generative model the config loads that is not a local folder (a local judge's
    too; an endpoint judge is served elsewhere)."""
    named: list[tuple[str, str]] = []
    if config.finetune.enabled and config.finetune.base_model:
        named.append(("finetune.base_model", config.finetune.base_model))
    for index, candidate in enumerate(config.evaluation.candidates):
        if candidate.kind == "hf" and candidate.model:
            named.append((f"evaluation.candidates[{index}].model", candidate.model))
    judge = config.evaluation.judge
    if judge.enabled and judge.backend == "local" and judge.model:
        named.append(("evaluation.judge.model", judge.model))
    if config.qa.model_name and resolve_backend(config.qa, None) == "local":
        named.append(("qa.model_name", config.qa.model_name))
    return [(setting, name) for setting, name in named if not Path(name).exists()]


def prefetch(config: PipelineConfig) -> list[tuple[str, str, str]]:
    """Download each configured hub model (every file of its snapshot; HF_TOKEN for gated ones) into the cache
    (HF_HOME); (setting, hub id, local path) for each. Raises the hub's error naming the model that failed."""
    from huggingface_hub import snapshot_download

    fetched = []
    for setting, name in configured_models(config):
        try:
            path = snapshot_download(name)
        except Exception as exc:  # the hub's errors vary (gated, missing, offline): one message naming both
            raise RuntimeError(f"{setting}: cannot download {name!r}: {type(exc).__name__}: {exc}") from exc
        fetched.append((setting, name, path))
    return fetched
