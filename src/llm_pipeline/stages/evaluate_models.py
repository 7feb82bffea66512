"""Stage 7, evaluate-models: every candidate answers the benchmark, every answer is scored (evaluation/). With
fine-tuning on, the base model and base + adapter are added as the candidates `base` and `tuned`."""

from __future__ import annotations

import json
from typing import Any

from llm_pipeline.config import TUNED_CANDIDATES, CandidateConfig, EvaluationConfig, FinetuneConfig
from llm_pipeline.evaluation import evaluate_candidates
from llm_pipeline.evaluation.judge import JudgeResult, judge
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
    candidate, overall and by category, difficulty, variant), `judge` and `judgements` (the LLM judge's summary
    and verdicts; `{"enabled": false}` and none when it is off). Config: `evaluation`, `finetune`."""
    config: EvaluationConfig = ctx.config.evaluation
    finetuned = bool(json.loads(ctx.input("finetune").read_text()).get("enabled"))
    if finetuned:
        extra = tuned_candidates(ctx.config.finetune, ctx.input("adapter"))
        config = config.model_copy(update={"candidates": [*config.candidates, *extra]})
    items = read_jsonl(ctx.input("benchmark"), BenchmarkItem)
    evaluated = evaluate_candidates(items, config, _scorer(ctx), _answerer(ctx))
    write_jsonl(ctx.output("predictions"), evaluated.predictions)
    write_json(ctx.output("evaluation"), evaluated.summary)
    judged = _judge(ctx, items, evaluated.predictions, finetuned)
    write_json(ctx.output("judge"), judged.summary)
    write_jsonl(ctx.output("judgements"), judged.rows)
    counts = evaluated.counts()
    if judged.summary.get("enabled"):
        counts.update(judge_requests=judged.summary["requests"], judge_sent=judged.summary["sent_this_run"])
    return counts


def _scorer(ctx: StageContext) -> Any:
    """With `execution.engine: ray`, the metrics are computed on the cluster in shards (engine/ray_scoring.py)."""
    if ctx.config.execution.engine != "ray":
        return None
    from llm_pipeline.engine.ray_scoring import ray_scorer

    monitoring = ctx.config.monitoring
    return ray_scorer(ctx.config.execution, monitoring.log_level, monitoring.structured_logging)


def _answerer(ctx: StageContext) -> Any:
    """With `execution.engine: ray`, `hf` candidates answer on actors, one per GPU of the cluster
    (engine/ray_candidates.py)."""
    if ctx.config.execution.engine != "ray":
        return None
    from llm_pipeline.engine.ray_candidates import ray_answerer

    monitoring = ctx.config.monitoring
    return ray_answerer(ctx.config.execution, monitoring.log_level, monitoring.structured_logging)


def _judge(ctx: StageContext, items: list[BenchmarkItem], predictions: list[Any], finetuned: bool) -> JudgeResult:
    """The LLM judge over the answers (evaluation/judge.py), with fine-tuning on: tuned against base too."""
    settings = ctx.config.evaluation.judge
    pairs = [tuple(p) for p in settings.pairs]
    if finetuned and not any(set(p) == set(TUNED_CANDIDATES) for p in pairs):
        pairs.append(TUNED_CANDIDATES)
    scored = {p.candidate for p in predictions}
    pairs = [p for p in pairs if set(p) <= scored]  # a candidate that failed has no answers to compare
    cache = settings.checkpoint_dir or ctx.config.output_path / ".judge-cache"
    prices = {**ctx.config.qa.prices, **settings.prices}
    return judge(items, predictions, settings, pairs, cache, ctx.run_id, prices)
