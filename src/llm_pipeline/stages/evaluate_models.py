"""Stage 6, evaluate-models: every candidate answers the benchmark, every answer is scored (evaluation/)."""

from __future__ import annotations

from typing import Any

from llm_pipeline.evaluation import evaluate_candidates
from llm_pipeline.io import read_jsonl, write_json, write_jsonl
from llm_pipeline.records import BenchmarkItem
from llm_pipeline.stages.contract import StageContext


def evaluate_models(ctx: StageContext) -> dict[str, Any]:
    """Reads: `benchmark`. Writes: `predictions` (every candidate's answer to every item, with its scores),
    `evaluation` (aggregates per candidate, overall and by category, difficulty, variant). Config: `evaluation`."""
    evaluated = evaluate_candidates(read_jsonl(ctx.input("benchmark"), BenchmarkItem), ctx.config.evaluation)
    write_jsonl(ctx.output("predictions"), evaluated.predictions)
    write_json(ctx.output("evaluation"), evaluated.summary)
    return evaluated.counts()
