"""Stage 7, evaluate-models: every candidate answers the benchmark, every answer is scored (evaluation/). With
fine-tuning on, the base model and base + adapter are added as the candidates `base` and `tuned`."""

from __future__ import annotations

import json
from typing import Any

from llm_pipeline.config import CandidateConfig, EvaluationConfig, FinetuneConfig
from llm_pipeline.evaluation import evaluate_candidates
from llm_pipeline.io import read_jsonl, write_json, write_jsonl
from llm_pipeline.records import BenchmarkItem
from llm_pipeline.stages.contract import StageContext


def tuned_candidates(config: FinetuneConfig, adapter: Any) -> list[CandidateConfig]:
    """The base and the base with the run's adapter, with the same generation settings."""
    same = {
        "kind": "hf",
        "model": config.base_model,
        "device": config.device,
        "max_new_tokens": config.eval_max_new_tokens,
        "batch_size": config.eval_batch_size,
    }
    return [CandidateConfig(name="base", **same), CandidateConfig(name="tuned", adapter=adapter, **same)]


def evaluate_models(ctx: StageContext) -> dict[str, Any]:
    """Reads: `benchmark`, `finetune` and `adapter` (with fine-tuning on: base and tuned are candidates too).
    Writes: `predictions` (every candidate's answer to every item, with its scores), `evaluation` (aggregates per
    candidate, overall and by category, difficulty, variant). Config: `evaluation`, `finetune`."""
    config: EvaluationConfig = ctx.config.evaluation
    if json.loads(ctx.input("finetune").read_text()).get("enabled"):
        extra = tuned_candidates(ctx.config.finetune, ctx.input("adapter"))
        config = config.model_copy(update={"candidates": [*config.candidates, *extra]})
    evaluated = evaluate_candidates(read_jsonl(ctx.input("benchmark"), BenchmarkItem), config)
    write_jsonl(ctx.output("predictions"), evaluated.predictions)
    write_json(ctx.output("evaluation"), evaluated.summary)
    return evaluated.counts()
