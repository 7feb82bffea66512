"""Evaluation: candidates answer, every metric and breakdown is computed, a broken candidate is reported alone."""

from __future__ import annotations

from pathlib import Path

from llm_pipeline.config import CandidateConfig, EvaluationConfig
from llm_pipeline.evaluation import evaluate_candidates, robustness
from llm_pipeline.evaluation.baselines import LexicalCandidate, answer_span
from llm_pipeline.records import BenchmarkItem
from llm_pipeline.text import REFUSAL
from tests.translated_text import translated_messages

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


def test_the_lexical_baseline_answers_from_the_right_sentence_in_chinese_and_japanese() -> None:
    """The lexical baseline matched a question's words to a sentence's: in Chinese or Japanese (no spaces) a question
    was one "word" and the context one "sentence", so it refused or gave the whole context. Real translations
    (tests/translated_text.py) without spaces: the context three messages, each question the opening of one of them;
    the answer is from that message."""
    candidate = LexicalCandidate(CandidateConfig(name="lexical", kind="lexical"))
    for language in ("zh_CN", "ja"):
        context_messages: list[str] = []
        for m in translated_messages(language, 30):  # three that do not say nearly the same (by their characters)
            distinct = all(len(set(m) & set(o)) < 0.5 * len(set(m)) for o in context_messages)
            if " " not in m and m.endswith("。") and distinct:
                context_messages.append(m)
        context_messages = context_messages[:3]
        context = "".join(context_messages)
        questions = [m[:12] + "？" for m in context_messages]
        answers = candidate.answer(questions, [context] * 3)
        for answer, message in zip(answers, context_messages, strict=True):
            assert answer != REFUSAL and answer in message and len(answer) < len(context), (language, answer)


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
