"""Model evaluation: workflow.py (every candidate answers every item), candidates.py (the registry of candidate
kinds) with baselines.py, hf.py and endpoint.py, scoring.py (per answer, then aggregated), metrics.py."""

from llm_pipeline.evaluation.candidates import CANDIDATE_KINDS
from llm_pipeline.evaluation.scoring import (
    BREAKDOWNS,
    HEADLINE_METRICS,
    aggregate,
    robustness,
    score_predictions,
    scored_candidates,
)
from llm_pipeline.evaluation.workflow import EvaluationResult, evaluate_candidates

__all__ = [
    "BREAKDOWNS",
    "CANDIDATE_KINDS",
    "HEADLINE_METRICS",
    "EvaluationResult",
    "aggregate",
    "evaluate_candidates",
    "robustness",
    "score_predictions",
    "scored_candidates",
]
