"""Metric scoring on Ray: the evaluate-models stage's answers, every candidate's, scored in shards of
`execution.score_shard_items` items by tasks on the cluster (`scoring.score_predictions` on each shard: ROUGE,
BLEU, exact match, the domain metrics, BERTScore), reassembled in order. A sample's scores depend on its answer and
reference only, so the shards give the local scores; the aggregates (bootstrap intervals) are computed from them
in the stage's process, as locally. The candidates' models stay where they ran (the GPU pool)."""

from __future__ import annotations

from typing import Any

import ray

from llm_pipeline.config import EvaluationConfig, ExecutionConfig
from llm_pipeline.engine.ray_session import fetch, ray_session
from llm_pipeline.logging import get_logger
from llm_pipeline.records import BenchmarkItem

log = get_logger("evaluation")


@ray.remote
def _score_shard(items: list[BenchmarkItem], answers: list[str], config: EvaluationConfig) -> list[dict[str, float]]:
    from llm_pipeline.evaluation.scoring import score_predictions

    return score_predictions(items, answers, config)


def _score_all(
    batches: list[tuple[list[BenchmarkItem], list[str]]], config: EvaluationConfig, execution: ExecutionConfig
) -> list[list[dict[str, float]]]:
    size = execution.score_shard_items
    with ray_session(execution) as address:
        score = _score_shard.options(max_retries=execution.task_retries)
        refs = [
            [score.remote(items[i : i + size], answers[i : i + size], config) for i in range(0, len(items), size)]
            for items, answers in batches
        ]
        scored = [[sample for shard in fetch(shards, address) for sample in shard] for shards in refs]
    log.info("scored_on_ray", candidates=len(batches), shards=sum(len(r) for r in refs), shard_items=size)
    return scored


def ray_scorer(execution: ExecutionConfig, log_level: str, structured: bool) -> Any:
    """A scorer for `evaluate_candidates`: every candidate's answers scored on Ray, from a driver process of its
    own (engine/driver.py)."""
    from llm_pipeline.engine.driver import in_driver

    def scorer(batches: list[tuple[list[BenchmarkItem], list[str]]], config: EvaluationConfig) -> Any:
        target = "llm_pipeline.engine.ray_scoring:_score_all"
        return in_driver(execution, target, batches, config, execution, log_level=log_level, structured=structured)

    return scorer
