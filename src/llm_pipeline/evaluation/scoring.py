"""Scoring answers: each answer against its reference with the configured metrics (metrics.py), then aggregated
overall and by category, difficulty and adversarial type with bootstrap confidence intervals."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from llm_pipeline.config import EvaluationConfig
from llm_pipeline.evaluation import metrics as m
from llm_pipeline.models.embeddings import resolve_model_path
from llm_pipeline.records import BenchmarkItem

BREAKDOWNS = ("category", "difficulty", "adversarial")
# The metrics the report and its charts lead with, in this order (those a run computed).
HEADLINE_METRICS = (
    "exact_match",
    "rougeL",
    "bleu",
    "bertscore_f1",
    "numeric_accuracy",
    "price_accuracy",
    "refusal_accuracy",
)


def scored_candidates(evaluation: dict[str, Any]) -> dict[str, Any]:
    """The candidates of an evaluation summary that were scored (a failed one holds only its error)."""
    return {name: summary for name, summary in evaluation.items() if "error" not in summary}


def score_predictions(
    items: list[BenchmarkItem], answers: list[str], config: EvaluationConfig
) -> list[dict[str, float]]:
    scores: list[dict[str, float]] = [{} for _ in items]
    for i, (item, answer) in enumerate(zip(items, answers, strict=True)):
        if "exact_match" in config.metrics:
            scores[i]["exact_match"] = m.exact_match(answer, item.answer)
        if "rouge" in config.metrics:
            scores[i].update(m.rouge(answer, item.answer))
        if "bleu" in config.metrics:
            scores[i]["bleu"] = m.bleu(answer, item.answer)
        if "numeric_accuracy" in config.domain_metrics and item.answerable:
            numeric = m.numeric_match(answer, item.answer, config.numeric_tolerance)
            if numeric is not None:
                scores[i]["numeric_accuracy"] = numeric
        if "price_accuracy" in config.domain_metrics and item.answerable:
            price = m.price_match(answer, item.answer, config.numeric_tolerance)
            if price is not None:
                scores[i]["price_accuracy"] = price
        if "refusal_accuracy" in config.domain_metrics:
            scores[i]["refusal_accuracy"] = m.refusal_correct(answer, item)
    if "bertscore" in config.metrics:
        f1 = m.bertscore_f1(
            answers, [i.answer for i in items], resolve_model_path(config.bertscore_model), config.bertscore_layer
        )
        for i, value in enumerate(f1):
            scores[i]["bertscore_f1"] = value
    return scores


def _aggregate(values: list[float]) -> dict[str, float]:
    low, high = m.bootstrap_ci(values)
    return {"mean": round(float(np.mean(values)), 6), "ci_low": low, "ci_high": high, "n": len(values)}


def aggregate(items: list[BenchmarkItem], scores: list[dict[str, float]], config: EvaluationConfig) -> dict[str, Any]:
    per_metric: dict[str, list[float]] = defaultdict(list)
    grouped: dict[str, dict[str, dict[str, list[float]]]] = {
        b: defaultdict(lambda: defaultdict(list)) for b in BREAKDOWNS
    }
    for item, sample in zip(items, scores, strict=True):
        for metric, value in sample.items():
            per_metric[metric].append(value)
            for breakdown in BREAKDOWNS:
                key = getattr(item, breakdown) or "original"
                grouped[breakdown][key][metric].append(value)
    result: dict[str, Any] = {
        "overall": {k: _aggregate(v) for k, v in sorted(per_metric.items())},
        "by": {
            b: {key: {k: _aggregate(v) for k, v in sorted(ms.items())} for key, ms in sorted(groups.items())}
            for b, groups in grouped.items()
        },
    }
    if "robustness" in config.domain_metrics:
        result["robustness"] = robustness(items, scores)
    return result


def robustness(
    items: list[BenchmarkItem], scores: list[dict[str, float]], metric: str = "rougeL"
) -> dict[str, float | None]:
    """Per adversarial type: mean score on the variants / mean score on their originals (1.0 = unaffected)."""
    by_id = {item.id: s for item, s in zip(items, scores, strict=True)}
    ratios: dict[str, float | None] = {}
    pairs: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for item, sample in zip(items, scores, strict=True):
        if item.adversarial and item.original_id in by_id and item.answerable:
            original = by_id[item.original_id].get(metric)
            if original is not None and metric in sample:
                pairs[item.adversarial].append((sample[metric], original))
    for kind, values in sorted(pairs.items()):
        base = sum(o for _, o in values)
        ratios[kind] = round(sum(v for v, _ in values) / base, 6) if base else None
    return ratios
