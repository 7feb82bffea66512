"""What every model-backed QA backend offers the generator: many conversations in, completions out as they finish.

`complete_many` yields `(job, Completion)` or `(job, error)` in completion order; the error is what remained
after the backend applied the request-level policy (llm_pipeline.qa.policy). The caller settles (journals) each
outcome before it asks for the next, so a backend that limits requests in flight can count an answered request
as in flight until then (the openai backend does: a kill re-pays at most `concurrency`). Backends register
themselves in `QA_BACKENDS` by name, one module each (openai_backend, local_backend), or from a user's package (see
llm_pipeline.plugins); a registered backend is a class or factory called as `backend(config, api_key)`. The
extractive backend needs no model and no requests: it is built in (`extractive.py`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from llm_pipeline.plugins import Registry
from llm_pipeline.qa.checkpoint import Usage
from llm_pipeline.qa.chunking import Chunk
from llm_pipeline.records import Document

if TYPE_CHECKING:
    from llm_pipeline.config import QAConfig

EXTRACTIVE = "extractive"  # the offline backend: spans of the document, no model, no requests
AUTO = "auto"


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
    ledger: Any = None  # llm_pipeline.qa.checkpoint.Ledger: where each HTTP request is written as it returns
    budget: Any = None  # llm_pipeline.qa.budget.Budget: the run's spending cap, reserved before each request

    batch: bool = False  # answered through the Batch API

    def sent(self, outcome: str, usage: Usage | None = None, batch: bool = False) -> None:
        """One HTTP request (or one line of a batch) of this job went out: its outcome and the tokens it was
        billed, into the ledger."""
        if self.ledger is not None:
            self.ledger.record(self.key, outcome, usage, batch)

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


QA_BACKENDS: Registry[Any] = Registry(
    "QA backend",
    "llm_pipeline.qa_backends",
    builtins=("llm_pipeline.qa.openai_backend", "llm_pipeline.qa.local_backend"),
)


def resolve_backend(config: QAConfig, api_key: str | None) -> str:
    """The backend a run uses: the configured one, or for `auto` openai with a key or base_url, local with a
    model_name, else extractive."""
    if config.backend != AUTO:
        return config.backend
    if api_key or config.base_url:
        return "openai"
    if config.model_name:
        return "local"
    return EXTRACTIVE


def open_backend(name: str, config: QAConfig, api_key: str | None) -> ChatBackend:
    return QA_BACKENDS.get(name)(config, api_key)
