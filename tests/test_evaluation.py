"""Evaluation: candidates answer, every metric and breakdown is computed, a broken candidate is reported alone."""

from __future__ import annotations

from pathlib import Path

from llm_pipeline.config import CandidateConfig, EvaluationConfig
from llm_pipeline.evaluation import evaluate_candidates, robustness
from llm_pipeline.evaluation.baselines import answer_span
from llm_pipeline.records import BenchmarkItem
from llm_pipeline.text import REFUSAL

CONTEXT = (
    "DC fast charging on VoltWay costs $0.45 per kWh in Denver. Level 2 chargers deliver between 7 and 11 kW "
    "on a 240-volt circuit. Battery recycling recovers over 95 percent of the lithium."
)


def items() -> list[BenchmarkItem]:
    base = dict(context=CONTEXT, source_document_id="d")
    return [
        BenchmarkItem(
            id="a",
            question="How much does DC fast charging on VoltWay cost?",
            answer="$0.45 per kWh in Denver",
            category="pricing",
            difficulty="medium",
            **base,
        ),
        BenchmarkItem(
            id="b",
            question="What do level 2 chargers deliver?",
            answer="between 7 and 11 kW on a 240-volt circuit",
            category="technical",
            difficulty="hard",
            **base,
        ),
        BenchmarkItem(
            id="b-typo",
            question="What do levle 2 chragers deliver?",
            adversarial="typo",
            original_id="b",
            answer="between 7 and 11 kW on a 240-volt circuit",
            category="technical",
            difficulty="hard",
            **base,
        ),
        BenchmarkItem(
            id="c",
            question="Which tyres suit winter driving in Oslo?",
            answer=REFUSAL,
            answerable=False,
            category="other",
            difficulty="easy",
            adversarial="unanswerable",
            original_id="a",
            **base,
        ),
    ]


def test_answer_span_drops_what_the_question_says() -> None:
    assert (
        answer_span(
            "How much does DC fast charging on VoltWay cost?",
            "DC fast charging on VoltWay costs $0.45 per kWh in Denver.",
        )
        == "$0.45 per kWh in Denver"
    )


def test_two_candidates_every_metric_and_breakdown() -> None:
    config = EvaluationConfig(
        metrics=["rouge", "bleu", "exact_match", "bertscore"],
        domain_metrics=["numeric_accuracy", "refusal_accuracy", "robustness"],
    )
    result = evaluate_candidates(items(), config)
    assert set(result.summary) == {"retrieval-minilm", "lexical-overlap"}
    for summary in result.summary.values():
        overall = summary["overall"]
        assert {
            "exact_match",
            "rouge1",
            "rouge2",
            "rougeL",
            "bleu",
            "bertscore_f1",
            "numeric_accuracy",
            "refusal_accuracy",
        } <= set(overall)
        assert overall["exact_match"]["ci_low"] <= overall["exact_match"]["mean"] <= overall["exact_match"]["ci_high"]
        assert set(summary["by"]["category"]) == {"pricing", "technical", "other"}
        assert set(summary["by"]["adversarial"]) == {"original", "typo", "unanswerable"}
        assert "typo" in summary["robustness"]
    lexical = {p.item_id: p for p in result.predictions if p.candidate == "lexical-overlap"}
    assert lexical["a"].prediction == "$0.45 per kWh in Denver" and lexical["a"].scores["exact_match"] == 1.0
    assert lexical["c"].prediction == REFUSAL and lexical["c"].scores["refusal_accuracy"] == 1.0
    assert len(result.predictions) == 2 * len(items())


def test_unloadable_candidate_is_reported_without_sinking_the_others(tmp_path: Path) -> None:
    config = EvaluationConfig(
        metrics=["exact_match"],
        candidates=[
            CandidateConfig(name="broken", kind="retrieval", model=str(tmp_path / "no-such-model")),
            CandidateConfig(name="lexical", kind="lexical"),
        ],
    )
    result = evaluate_candidates(items(), config)
    assert "ModelLoadError" in result.summary["broken"]["error"]
    assert result.summary["lexical"]["overall"]["exact_match"]["n"] == len(items())
    assert result.counts()["candidates_failed"] == 1
    assert {p.candidate for p in result.predictions} == {"lexical"}


def test_robustness_ratio() -> None:
    all_items = items()
    scores = [{"rougeL": 1.0}, {"rougeL": 0.8}, {"rougeL": 0.4}, {"rougeL": 1.0}]
    assert robustness(all_items, scores) == {"typo": 0.5}  # 0.4 on the variant / 0.8 on its original
