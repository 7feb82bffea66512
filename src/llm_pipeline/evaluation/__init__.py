"""The evaluate-models stage: every configured candidate answers every benchmark item; each answer is scored
with the configured metrics; scores are aggregated overall and by category, difficulty and adversarial type,
with bootstrap confidence intervals. A candidate that fails is reported as failed; the others go on.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llm_pipeline.config import CandidateConfig, EvaluationConfig
from llm_pipeline.embeddings import resolve_model_path
from llm_pipeline.evaluation import metrics as m
from llm_pipeline.evaluation.candidates import build_candidate
from llm_pipeline.logging import get_logger
from llm_pipeline.progress import ProgressCounter
from llm_pipeline.records import BenchmarkItem, Prediction

log = get_logger("evaluation")

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


@dataclass
class EvaluationResult:
    predictions: list[Prediction] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)  # candidate -> aggregates, or error

    def counts(self) -> dict[str, float]:
        ok = list(scored_candidates(self.summary))
        counts: dict[str, float] = {
            "candidates": len(self.summary),
            "candidates_failed": len(self.summary) - len(ok),
            "predictions": len(self.predictions),
        }
        for candidate in ok:
            for metric, value in self.summary[candidate]["overall"].items():
                counts[f"{candidate}.{metric}"] = value["mean"]
        return counts


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


def _generation_record(candidate: Any) -> dict[str, Any]:
    """Generation settings and speed, for candidates that generate (recorded so a score can be reproduced)."""
    settings = getattr(candidate, "settings", None)
    if settings is None:
        return {}
    record: dict[str, Any] = {"generation": settings.recorded()}
    stats = getattr(candidate, "stats", None)
    if stats is not None:
        record["generation"].update(
            batch_size_used=stats.batch_size,
            oom_backoffs=stats.oom_backoffs,
            new_tokens=stats.new_tokens,
            tokens_per_s=round(stats.tokens_per_s, 1),
        )
    return record


def evaluate_candidates(items: list[BenchmarkItem], config: EvaluationConfig) -> EvaluationResult:
    result = EvaluationResult()
    questions, contexts = [i.question for i in items], [i.context for i in items]
    with ProgressCounter(len(config.candidates), "evaluating candidates") as bar:
        for candidate_config in config.candidates:
            _evaluate_one(candidate_config, items, questions, contexts, config, result)
            bar.advance()
    return result


def _evaluate_one(
    candidate_config: CandidateConfig,
    items: list[BenchmarkItem],
    questions: list[str],
    contexts: list[str],
    config: EvaluationConfig,
    result: EvaluationResult,
) -> None:
    name = candidate_config.name
    started = time.perf_counter()
    try:
        candidate = build_candidate(candidate_config)
        try:
            answers = candidate.answer(questions, contexts)
        finally:
            if hasattr(candidate, "close"):
                candidate.close()  # free GPU memory before the next model loads
        scores = score_predictions(items, answers, config)
    except Exception as exc:  # one broken candidate must not sink the comparison
        log.error("candidate_failed", candidate=name, error=f"{type(exc).__name__}: {exc}")
        result.summary[name] = {"error": f"{type(exc).__name__}: {exc}"}
        return
    elapsed = time.perf_counter() - started
    for item, answer, sample in zip(items, answers, scores, strict=True):
        result.predictions.append(
            Prediction(
                item_id=item.id,
                candidate=name,
                prediction=answer,
                reference=item.answer,
                scores=sample,
                latency_s=round(elapsed / max(1, len(items)), 6),
            )
        )
    result.summary[name] = {
        "kind": candidate_config.kind,
        "model": candidate_config.model,
        "seconds": round(elapsed, 3),
        **_generation_record(candidate),
        **aggregate(items, scores, config),
    }
    log.info(
        "candidate_evaluated",
        candidate=name,
        seconds=round(elapsed, 2),
        **{k: v["mean"] for k, v in result.summary[name]["overall"].items()},
    )
