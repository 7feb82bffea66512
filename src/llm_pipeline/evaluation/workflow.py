"""The evaluate-models stage's algorithm: every configured candidate answers every benchmark item; each answer is
scored (scoring.py). A candidate that fails is reported as failed; the others go on."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llm_pipeline.config import CandidateConfig, EvaluationConfig
from llm_pipeline.evaluation.candidates import build_candidate
from llm_pipeline.evaluation.scoring import aggregate, score_predictions, scored_candidates
from llm_pipeline.logging import get_logger
from llm_pipeline.progress import ProgressCounter
from llm_pipeline.records import BenchmarkItem, Prediction

log = get_logger("evaluation")


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


def generation_record(candidate: Any) -> dict[str, Any]:
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


def refused_record(candidate: Any, items: int) -> dict[str, Any]:
    """The items a candidate's server refused (endpoint.py), answered empty: how many, and why, most common first."""
    refused: dict[int, str] = getattr(candidate, "refused", None) or {}
    if not refused:
        return {}
    reasons = Counter(" ".join(why.split())[:300] for why in refused.values()).most_common(3)
    log.warning("candidate_items_refused", candidate=candidate.name, refused=len(refused), items=items)
    return {"refused": {"items": len(refused), "of": items, "reasons": [{"reason": r, "items": n} for r, n in reasons]}}


Answerer = Callable[[CandidateConfig, list[str], list[str]], "tuple[list[str], dict[str, Any]] | None"]
Scorer = Callable[[list[tuple[list[BenchmarkItem], list[str]]], EvaluationConfig], list[list[dict[str, float]]]]


def evaluate_candidates(
    items: list[BenchmarkItem], config: EvaluationConfig, scorer: Scorer | None = None, answerer: Answerer | None = None
) -> EvaluationResult:
    """Every candidate answers (one after the other: one model in memory at a time), then every answer is scored:
    here, candidate by candidate, or by `scorer` all at once (the Ray engine's shards). `answerer` (the Ray
    engine's actors) answers for a candidate it takes, and returns None for one to be answered here."""
    result = EvaluationResult()
    questions, contexts = [i.question for i in items], [i.context for i in items]
    answered: list[tuple[CandidateConfig, list[str], float, dict[str, Any]]] = []
    with ProgressCounter(len(config.candidates), "evaluating candidates") as bar:
        for candidate_config in config.candidates:
            found = _answer_one(candidate_config, questions, contexts, result, answerer)
            if found is not None:
                answered.append((candidate_config, *found))
            bar.advance()
    if scorer is not None and answered:
        scored: list[list[dict[str, float]] | BaseException] = list(
            scorer([(items, answers) for _, answers, _, _ in answered], config)
        )
    else:
        scored = [_score_one(items, answers, config) for _, answers, _, _ in answered]
    for (candidate_config, answers, elapsed, generation), scores in zip(answered, scored, strict=True):
        name = candidate_config.name
        if isinstance(scores, BaseException):
            log.error("candidate_failed", candidate=name, error=f"{type(scores).__name__}: {scores}")
            result.summary[name] = {"error": f"{type(scores).__name__}: {scores}"}
            continue
        _record(candidate_config, items, answers, scores, elapsed, generation, config, result)
    return result


def _answer_one(
    candidate_config: CandidateConfig,
    questions: list[str],
    contexts: list[str],
    result: EvaluationResult,
    answerer: Answerer | None = None,
) -> tuple[list[str], float, dict[str, Any]] | None:
    """(answers, seconds, generation record), or None with the failure in the summary."""
    from llm_pipeline.engine.ray_session import RayUnavailableError

    name = candidate_config.name
    started = time.perf_counter()
    try:
        found = answerer(candidate_config, questions, contexts) if answerer is not None else None
        if found is not None:
            answers, record = found
        else:
            candidate = build_candidate(candidate_config)
            try:
                answers = candidate.answer(questions, contexts)
            finally:
                if hasattr(candidate, "close"):
                    candidate.close()  # free GPU memory before the next model loads
            record = generation_record(candidate) | refused_record(candidate, len(questions))
    except RayUnavailableError:
        raise  # the cluster failed, not the candidate: the stage's retry policy applies
    except Exception as exc:  # one broken candidate must not sink the comparison
        log.error("candidate_failed", candidate=name, error=f"{type(exc).__name__}: {exc}")
        result.summary[name] = {"error": f"{type(exc).__name__}: {exc}"}
        return None
    return answers, time.perf_counter() - started, record


def _score_one(
    items: list[BenchmarkItem], answers: list[str], config: EvaluationConfig
) -> list[dict[str, float]] | BaseException:
    try:
        return score_predictions(items, answers, config)
    except Exception as exc:  # a candidate whose answers cannot be scored is reported; the others go on
        return exc


def _record(
    candidate_config: CandidateConfig,
    items: list[BenchmarkItem],
    answers: list[str],
    scores: list[dict[str, float]],
    elapsed: float,
    generation: dict[str, Any],
    config: EvaluationConfig,
    result: EvaluationResult,
) -> None:
    name = candidate_config.name
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
        **({"adapter": str(candidate_config.adapter)} if candidate_config.adapter else {}),
        "seconds": round(elapsed, 3),
        **generation,
        **aggregate(items, scores, config),
    }
    log.info(
        "candidate_evaluated",
        candidate=name,
        seconds=round(elapsed, 2),
        **{k: v["mean"] for k, v in result.summary[name]["overall"].items()},
    )
