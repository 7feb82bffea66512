"""The offline extractive QA backend: answers are spans of their document, with the metadata promised."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_pipeline.config import DataConfig, QAConfig
from llm_pipeline.ingest import load_documents
from llm_pipeline.qa import generate_qa, resolve_backend
from llm_pipeline.qa.extractive import question_for, split_sentences
from llm_pipeline.records import Document

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("sentence", "question", "answer"),
    [
        (
            "DC fast charging on VoltWay costs $0.45 per kWh in Denver.",
            "How much does DC fast charging on VoltWay cost?",
            "$0.45 per kWh in Denver",
        ),
        (
            "Level 2 chargers deliver between 7 and 11 kW on a 240-volt circuit.",
            "What do level 2 chargers deliver?",
            "between 7 and 11 kW on a 240-volt circuit",
        ),
        (
            "Cold weather can reduce the charging rate by up to 30 percent.",
            "What can cold weather reduce?",
            "the charging rate by up to 30 percent",
        ),
    ],
)
def test_question_patterns(sentence: str, question: str, answer: str) -> None:
    assert question_for(sentence) == (question, answer)


@pytest.mark.parametrize(
    "sentence",
    [
        "A session fee of $1.09 is added to every charge.",  # passive: no sensible question
        "Over its lifetime an electric car emits less.",  # adverbial opener
        "Hello.",
    ],
)
def test_no_question_when_no_pattern_fits(sentence: str) -> None:
    assert question_for(sentence) is None


def test_sentence_split_keeps_prices() -> None:
    assert split_sentences("It costs $0.45 per kWh. Then $1.20 more. Done") == [
        "It costs $0.45 per kWh.",
        "Then $1.20 more.",
        "Done",
    ]


def test_pairs_per_document_answers_are_spans_and_metadata_is_complete() -> None:
    documents = load_documents(DataConfig(path=ROOT / "data" / "ev_charging" / "documents.jsonl", limit=60)).documents
    result = generate_qa(documents, QAConfig(questions_per_doc=3))
    by_doc = {d.id: d for d in documents}
    per_doc: dict[str, int] = {}
    for pair in result.pairs:
        per_doc[pair.document_id] = per_doc.get(pair.document_id, 0) + 1
        assert pair.answer in by_doc[pair.document_id].text  # grounded: a span of the source
        meta = pair.metadata
        assert {
            "document_id",
            "chunk",
            "category",
            "backend",
            "model",
            "prompt_version",
            "latency_s",
            "timestamp",
        } <= set(meta)
        assert meta["answer_start"] == by_doc[pair.document_id].text.find(pair.answer) >= 0
    assert max(per_doc.values()) == 3
    assert len(per_doc) + len(result.documents_without_pairs) == len(documents)
    assert len({p.id for p in result.pairs}) == len(result.pairs)


def test_include_metadata_off_leaves_metadata_empty() -> None:
    pairs = generate_qa(
        [Document(id="d", text="Level 2 chargers deliver 7 kW at home.")], QAConfig(include_metadata=False)
    ).pairs
    assert pairs and all(p.metadata == {} for p in pairs)


def test_auto_backend_is_extractive_without_key_or_model() -> None:
    assert resolve_backend(QAConfig(), api_key=None) == "extractive"
