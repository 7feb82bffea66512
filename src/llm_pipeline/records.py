"""The typed records that stages read and write: documents, rejects, QA pairs, benchmark items, predictions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Difficulty = Literal["easy", "medium", "hard"]


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Document(Record):
    """One input document, after loading and normalization."""

    id: str
    text: str
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def category(self) -> str:
        return str(self.metadata.get("category") or "other")


class Reject(Record):
    """A record that could not be used, kept with where it came from and why."""

    source: str  # file path
    location: str  # "line 17", "row 4", "file", "part 3" (of a long document file)
    reason: str
    record_id: str | None = None
    raw: str | None = None  # the offending text, truncated


class DuplicateCluster(Record):
    """Documents judged to be copies of each other; exactly one member is kept."""

    cluster_id: str
    method: str  # exact | minhash | semantic
    kept: str
    members: list[str]
    similarity: float  # lowest similarity of a removed member to the kept one (1.0 for exact)
    to_kept: dict[str, float] = Field(default_factory=dict)  # each removed member's similarity to the kept one


class QAPair(Record):
    id: str
    question: str
    answer: str
    document_id: str
    metadata: dict[str, Any] = Field(default_factory=dict)


BENCHMARK_VERSION = "1.1"  # of the benchmark's schema and construction; a column of every item


class BenchmarkItem(Record):
    id: str
    question: str
    answer: str  # reference answer; for unanswerable items the refusal text
    context: str
    category: str
    difficulty: Difficulty
    adversarial: str | None = None  # None for originals, else the variant type
    original_id: str | None = None  # the item an adversarial variant derives from
    answerable: bool = True
    source_document_id: str
    version: str = BENCHMARK_VERSION


class Prediction(Record):
    item_id: str
    candidate: str
    prediction: str
    reference: str
    scores: dict[str, float] = Field(default_factory=dict)
    latency_s: float = 0.0


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
