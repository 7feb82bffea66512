"""The generate-qa-pairs stage: N question-answer pairs per document through a backend chosen in config.

Backends register themselves by name (`BACKENDS`); each turns one document into pairs. `auto` picks the
offline extractive backend when no API key or local model is configured.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from llm_pipeline.config import QAConfig
from llm_pipeline.logging import get_logger
from llm_pipeline.qa import extractive
from llm_pipeline.records import Document, QAPair, utc_now

log = get_logger("qa")


class QABackend(Protocol):
    name: str
    model: str | None
    prompt_version: str

    def pairs_for(self, document: Document, n: int) -> list[QAPair]: ...


class ExtractiveBackend:
    """Questions whose answers are spans of the document; no model, no network."""

    name = "extractive"
    model = None
    prompt_version = extractive.PROMPT_VERSION

    def __init__(self, config: QAConfig):
        self.config = config

    def pairs_for(self, document: Document, n: int) -> list[QAPair]:
        started = time.perf_counter()
        found = extractive.extractive_pairs(document, n, self.config.min_answer_words)
        latency = time.perf_counter() - started
        pairs = []
        for k, (question, answer, sentence) in enumerate(found):
            metadata = {}
            if self.config.include_metadata:
                metadata = {
                    "document_id": document.id,
                    "chunk": sentence,
                    "category": document.category,
                    "backend": self.name,
                    "model": self.model,
                    "prompt_version": self.prompt_version,
                    "answer_start": document.text.find(answer),
                    "latency_s": round(latency, 6),
                    "timestamp": utc_now(),
                }
            pairs.append(
                QAPair(
                    id=f"{document.id}-q{k}",
                    question=question,
                    answer=answer,
                    document_id=document.id,
                    metadata=metadata,
                )
            )
        return pairs


BACKENDS: dict[str, type[ExtractiveBackend]] = {"extractive": ExtractiveBackend}


def select_backend(config: QAConfig) -> QABackend:
    name = config.backend
    if name == "auto":
        name = "extractive"
        log.info("qa_backend_selected", backend=name, reason="no API-backed or local backend configured")
    return BACKENDS[name](config)


@dataclass
class QAResult:
    pairs: list[QAPair] = field(default_factory=list)
    documents_without_pairs: list[str] = field(default_factory=list)
    backend: str = ""

    def counts(self, documents: int) -> dict[str, float]:
        return {
            "documents": documents,
            "pairs": len(self.pairs),
            "documents_without_pairs": len(self.documents_without_pairs),
            "pairs_per_document": round(len(self.pairs) / documents, 3) if documents else 0.0,
        }


def iter_qa_pairs(documents: list[Document], config: QAConfig, backend: QABackend) -> Iterator[list[QAPair]]:
    for document in documents:
        yield backend.pairs_for(document, config.questions_per_doc)


def generate_qa(documents: list[Document], config: QAConfig) -> QAResult:
    from llm_pipeline.progress import progress

    backend = select_backend(config)
    result = QAResult(backend=backend.name)
    for document, pairs in zip(
        documents,
        progress(iter_qa_pairs(documents, config, backend), total=len(documents), description="generating QA pairs"),
        strict=True,
    ):
        if not pairs:
            result.documents_without_pairs.append(document.id)
        result.pairs.extend(pairs)
    log.info("qa_generated", backend=backend.name, **result.counts(len(documents)))
    return result
