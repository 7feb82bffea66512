"""What every model-backed QA backend offers the generator: many conversations in, completions out as they finish.

`complete_many` yields `(job, Completion)` or `(job, error)` in completion order; the error is what remained
after the backend applied the request-level policy (llm_pipeline.qa.policy). Backends register by name in
`CHAT_BACKENDS`, one module each (openai_backend, local_backend); the extractive backend needs no model.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from llm_pipeline.qa.checkpoint import Usage
from llm_pipeline.qa.chunking import Chunk
from llm_pipeline.records import Document


@dataclass
class Completion:
    text: str
    finish_reason: str | None
    usage: Usage
    latency_s: float
    attempts: int = 1


@dataclass
class Job:
    """One chunk of one document on its way through a backend, with what it has cost so far."""

    key: str
    document: Document
    chunk: Chunk
    messages: list[dict[str, str]]
    n: int
    usage: Usage = field(default_factory=Usage)
    latency_s: float = 0.0
    attempts: int = 0
    raw: str | None = None

    @property
    def label(self) -> dict[str, Any]:
        return {"document_id": self.document.id, "chunk": self.chunk.index}


class ChatBackend(Protocol):
    name: str
    model: str

    def complete_many(self, jobs: list[Job]) -> AsyncIterator[tuple[Job, Completion | BaseException]]: ...

    async def aclose(self) -> None: ...


def estimate_tokens(text: str) -> int:
    """About four characters a token for English: used only where a server reports no usage, and for limits."""
    return max(1, len(text) // 4)
