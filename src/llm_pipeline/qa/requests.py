"""QA requests: one per chunk of each document, keyed by what determines its answer; their outcomes settled into
the journal (pairs, or quarantined with the reason); the pairs read back from the journal.

A request already in the journal (llm_pipeline.qa.checkpoint) is never sent again. A reply that is not the
schema is sent back with the problem (max_format_retries times), then quarantined with the raw reply. A request
still failing after the policy's tries is not journaled: the next run sends it again.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any, Protocol

from llm_pipeline.config import QAConfig
from llm_pipeline.errors import BudgetReachedError, DataValidationError, OutputFormatError, TransientError
from llm_pipeline.io import text_hash
from llm_pipeline.logging import get_logger
from llm_pipeline.progress import ProgressCounter
from llm_pipeline.qa.backends import ChatBackend, Completion, Job
from llm_pipeline.qa.checkpoint import Entry, Journal, Usage, request_key
from llm_pipeline.qa.chunking import Chunk, chunk_text
from llm_pipeline.qa.prompts import PromptSet
from llm_pipeline.qa.schema import parse_pairs
from llm_pipeline.records import Document, QAPair, utc_now

log = get_logger("qa")

CUT_OFF = "the reply was cut off at the token limit; give shorter answers"


def build_jobs(
    documents: list[Document], config: QAConfig, prompts: PromptSet, backend: str, model: str, domain: str
) -> list[Job]:
    jobs = []
    for document in documents:
        chunks = chunk_text(document.text, config.chunk_words, config.chunk_overlap_words)
        # questions_per_doc spread over the chunks, the remainder evenly (chunks 0, count / extra, ...): given to the
        # first chunks, a long document's later pages were never asked about. A chunk left with none is not sent.
        base, extra = divmod(config.questions_per_doc, len(chunks))
        favoured = {i * len(chunks) // extra for i in range(extra)}
        for chunk in chunks:
            n = base + (1 if chunk.index in favoured else 0)
            if n == 0:
                continue
            key = request_key(
                text=text_hash(chunk.text),
                chunk=[chunk.index, chunk.count],
                prompt=[prompts.version, prompts.digest],
                backend=backend,
                model=model,
                n=n,
                domain=domain,
                category=document.category,
                settings=[config.temperature, config.max_tokens, config.seed],
            )
            messages = prompts.messages(
                text=chunk.text,
                n=n,
                domain=domain,
                category=document.metadata.get("category"),
                chunk_index=chunk.index,
                chunk_count=chunk.count,
            )
            jobs.append(Job(key=key, document=document, chunk=chunk, messages=messages, n=n))
    return jobs


@dataclass
class Outcomes:
    """Where each request's outcome goes: the journal (pairs, or quarantined with its reason), another round
    (a reply to re-ask), or the failed list (still failing after the policy's tries: sent again next run)."""

    journal: Journal
    backend: str
    model: str
    prompts: PromptSet
    max_format_retries: int
    backend_records: bool = False  # the backend writes each request to the ledger itself (openai's HTTP requests)
    failed: list[tuple[Job, BaseException]] = field(default_factory=list)
    refused: list[tuple[Job, BaseException]] = field(default_factory=list)  # not sent: the run's cap

    def settle(self, job: Job, outcome: Completion | BaseException, round_: int) -> bool:
        """Record one outcome; True when the job goes to the next round with the problem sent back."""
        if not self.backend_records:
            completion = not isinstance(outcome, BaseException)
            job.sent("ok" if completion else type(outcome).__name__, outcome.usage if completion else None)
        if isinstance(outcome, TransientError):
            self.failed.append((job, outcome))  # not journaled: the next run sends it again
            return False
        if isinstance(outcome, BudgetReachedError):
            self.refused.append((job, outcome))  # not sent, not journaled: a run with a higher cap sends it
            return False
        if isinstance(outcome, DataValidationError):
            self._quarantine(job, f"rejected: {outcome}")
            return False
        if isinstance(outcome, BaseException):
            raise outcome  # config, model load, out of memory, or a bug: the stage fails
        job.usage += outcome.usage
        job.latency_s += outcome.latency_s
        job.attempts += outcome.attempts
        job.raw = outcome.text
        try:
            if outcome.finish_reason == "length":
                raise OutputFormatError(CUT_OFF)
            pairs = parse_pairs(outcome.text, job.n)
        except OutputFormatError as problem:
            if round_ < self.max_format_retries:
                log.warning("qa_reply_invalid", problem=str(problem), retry=round_ + 1, **job.label)
                job.messages = [
                    *job.messages,
                    {"role": "assistant", "content": outcome.text},
                    {"role": "user", "content": self.prompts.repair_message(str(problem), job.n)},
                ]
                return True
            self._quarantine(job, f"invalid output: {problem}")
            return False
        self.journal.append(self._entry(job, "ok", pairs=pairs))
        return False

    def _quarantine(self, job: Job, reason: str) -> None:
        log.warning("qa_request_quarantined", reason=reason[:300], **job.label)
        self.journal.append(self._entry(job, "quarantined", reason=reason))

    def _entry(self, job: Job, status: str, *, pairs: Any = (), reason: str | None = None) -> Entry:
        return Entry(
            key=job.key,
            document_id=job.document.id,
            chunk=job.chunk.index,
            chunks=job.chunk.count,
            status=status,  # type: ignore[arg-type]
            pairs=[{"question": p.question.strip(), "answer": p.answer.strip()} for p in pairs],
            reason=reason,
            raw=job.raw if status == "quarantined" else None,
            usage=job.usage,
            latency_s=round(job.latency_s, 4),
            attempts=job.attempts,
            backend=self.backend,
            model=self.model,
            prompt_version=self.prompts.version,
            timestamp=utc_now(),
            batch=job.batch,
        )


class Settles(Protocol):
    def settle(self, job: Job, outcome: Completion | BaseException, round_: int) -> bool: ...


async def send_all(
    backend: ChatBackend,
    todo: list[Job],
    outcomes: Settles,
    max_format_retries: int,
    first_round: int = 0,
    what: str = "generating QA pairs",
) -> None:
    """Send every job; a reply that fails validation goes round again with the problem, up to
    max_format_retries times. Each outcome is settled (journaled, quarantined or failed) as it arrives: by QA's
    `Outcomes`, or by the judge's verdicts (evaluation/judge.py)."""
    with ProgressCounter(len(todo), what) as bar:
        pending = todo
        for round_ in range(first_round, max_format_retries + 1):
            again = []
            async for job, outcome in backend.complete_many(pending):
                if outcomes.settle(job, outcome, round_):
                    again.append(job)
                else:
                    bar.advance()
            pending = again
            if not pending:
                break


@dataclass
class Journaled:
    """What the journal holds for a run's jobs: candidate pairs (not yet filtered) with their source chunks,
    the quarantined requests, and the usage of every request behind them."""

    candidates: list[QAPair] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)  # pair id -> the chunk it was generated from
    rejects: list[dict[str, Any]] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    usage_batch: Usage = field(default_factory=Usage)  # the part answered through the Batch API


def chunk_pages(document: Document, chunk: Chunk) -> dict[str, int]:
    """The pages (a PDF's), slides (a deck's) or chapters (an e-book's) a chunk of `document` spans, `first_page`
    and `last_page` (`first_slide`...), from the document's `page_starts` (and `first_page`, where it is a part of a
    longer file); {} for other documents."""
    for unit in ("page", "slide", "chapter"):
        starts = document.metadata.get(f"{unit}_starts")
        if isinstance(starts, list) and starts and all(isinstance(s, int) for s in starts):
            first = document.metadata.get(f"first_{unit}", 1)
            end = len(document.text) if chunk.end is None else chunk.end
            where = [first + bisect.bisect_right(starts, at) - 1 for at in (chunk.start, max(chunk.start, end - 1))]
            return {f"first_{unit}": where[0], f"last_{unit}": where[1]}
    return {}


def journaled_pairs(jobs: list[Job], journal: Journal, config: QAConfig) -> Journaled:
    """Pairs from the journal, in document and chunk order, with their metadata."""
    found = Journaled()
    candidates = found.candidates
    sources = found.sources
    counters: dict[str, int] = {}
    total = Usage()
    for job in jobs:
        entry = journal.get(job.key)
        if entry is None:
            continue  # failed this run: reported by the caller
        total += entry.usage
        if entry.batch:
            found.usage_batch += entry.usage
        if entry.status == "quarantined":
            found.rejects.append(
                {"document_id": job.document.id, "chunk": job.chunk.index, "reason": entry.reason, "raw": entry.raw}
            )
            continue
        for pair in entry.pairs:
            k = counters.get(job.document.id, 0)
            counters[job.document.id] = k + 1
            metadata: dict[str, Any] = {}
            if config.include_metadata:
                metadata = {
                    "document_id": job.document.id,
                    "chunk": job.chunk.index,
                    "chunks": job.chunk.count,
                    "category": job.document.category,
                    "backend": entry.backend,
                    "model": entry.model,
                    "prompt_version": entry.prompt_version,
                    "prompt_tokens": entry.usage.prompt_tokens,
                    "completion_tokens": entry.usage.completion_tokens,
                    "tokens_estimated": entry.usage.estimated,
                    "latency_s": entry.latency_s,
                    "attempts": entry.attempts,
                    "timestamp": entry.timestamp,
                    **chunk_pages(job.document, job.chunk),
                }
            qa = QAPair(
                id=f"{job.document.id}-q{k}",
                question=pair["question"],
                answer=pair["answer"],
                document_id=job.document.id,
                metadata=metadata,
            )
            candidates.append(qa)
            sources[qa.id] = job.chunk.text
    found.usage = total
    return found
