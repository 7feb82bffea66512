"""The generate-qa-pairs stage: questions_per_doc pairs per document through a backend chosen in config.

Backends: `openai` (the async SDK, any OpenAI-compatible base_url), `local` (transformers), `extractive`
(offline, no model). `auto` picks openai when an API key or base_url is configured, local when a model_name
is, else extractive.

For the model-backed backends each document is split into chunks; each chunk is one request, keyed by what
determines its answer. A request already in the journal (llm_pipeline.qa.checkpoint) is never sent again; the
rest go to the backend, which applies limits and the retry policy. A reply that is not the schema is sent back
with the problem (max_format_retries times), then quarantined with the raw reply. Pairs then pass the quality
filters (llm_pipeline.qa.filters). Nothing is lost: every document ends with pairs, or with its reasons in
`rejects`, or, when the service stayed down past its tries, the stage fails with TransientError after journaling
everything else, so the retry sends only the remainder.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from llm_pipeline.config import QAConfig
from llm_pipeline.errors import DataValidationError, TransientError
from llm_pipeline.io import text_hash
from llm_pipeline.logging import get_logger
from llm_pipeline.progress import ProgressCounter
from llm_pipeline.qa import extractive
from llm_pipeline.qa.backends import ChatBackend, Completion, Job
from llm_pipeline.qa.checkpoint import Entry, Journal, Usage, request_key
from llm_pipeline.qa.chunking import chunk_text
from llm_pipeline.qa.filters import filter_pairs
from llm_pipeline.qa.prompts import PromptSet, load_prompts
from llm_pipeline.qa.schema import OutputFormatError, parse_pairs
from llm_pipeline.records import Document, QAPair, utc_now

log = get_logger("qa")
T = TypeVar("T")

JOURNAL_FILE = "qa-journal.jsonl"
EXTRACTIVE_CANDIDATES = 4  # candidates proposed per question wanted
CUT_OFF = "the reply was cut off at the token limit; give shorter answers"


def resolve_backend(config: QAConfig, api_key: str | None) -> str:
    if config.backend != "auto":
        return config.backend
    if api_key or config.base_url:
        return "openai"
    if config.model_name:
        return "local"
    return "extractive"


def _open_chat_backend(name: str, config: QAConfig, api_key: str | None) -> ChatBackend:
    if name == "openai":
        from llm_pipeline.qa.openai_backend import OpenAIBackend

        return OpenAIBackend(config, api_key)
    from llm_pipeline.qa.local_backend import LocalBackend

    return LocalBackend(config)


@dataclass
class QAResult:
    pairs: list[QAPair] = field(default_factory=list)
    rejects: list[dict[str, Any]] = field(default_factory=list)  # quarantined requests and filtered pairs
    documents_without_pairs: list[str] = field(default_factory=list)
    backend: str = ""
    model: str | None = None
    prompt_version: str = ""
    requests: dict[str, int] = field(default_factory=dict)  # total, sent, reused, quarantined
    filtered: dict[str, int] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)  # every request behind this dataset
    usage_sent: Usage = field(default_factory=Usage)  # only what this run sent
    cost_usd: float | None = None
    cost_sent_usd: float | None = None
    seconds: float = 0.0

    def counts(self, documents: int) -> dict[str, Any]:
        return {
            "documents": documents,
            "pairs": len(self.pairs),
            "documents_without_pairs": len(self.documents_without_pairs),
            "pairs_per_document": round(len(self.pairs) / documents, 3) if documents else 0.0,
            **{f"requests.{k}": v for k, v in self.requests.items()},
            **{f"filtered.{k}": v for k, v in sorted(self.filtered.items())},
        }

    def accounting(self) -> dict[str, Any]:
        """Tokens and cost, for the manifest and the report."""
        return {
            "backend": self.backend,
            "model": self.model,
            "prompt_version": self.prompt_version,
            "requests": self.requests,
            "tokens": self.usage.model_dump(),
            "tokens_sent_this_run": self.usage_sent.model_dump(),
            "cost_usd": self.cost_usd,
            "cost_sent_this_run_usd": self.cost_sent_usd,
            "seconds": round(self.seconds, 3),
        }


def cost(usage: Usage, model: str | None, config: QAConfig) -> float | None:
    price = config.prices.get(model or "")
    if price is None:
        return None
    dollars = usage.prompt_tokens * price.input_per_million + usage.completion_tokens * price.output_per_million
    return round(dollars / 1_000_000, 6)


def generate_qa(
    documents: list[Document],
    config: QAConfig,
    *,
    checkpoint_dir: Path | None = None,
    api_key: str | None = None,
    domain: str = "general",
) -> QAResult:
    backend = resolve_backend(config, api_key)
    log.info("qa_backend_selected", backend=backend, model=config.model_name, base_url=config.base_url)
    started = time.perf_counter()
    if backend == "extractive":
        result = _extractive(documents, config)
    else:
        folder = config.checkpoint_dir or checkpoint_dir or Path(".qa-cache")
        result = run_sync(
            _generate_with_model(documents, config, backend, api_key, Journal(folder / JOURNAL_FILE), domain)
        )
    result.seconds = time.perf_counter() - started
    log.info("qa_generated", backend=backend, cost_usd=result.cost_sent_usd, **result.counts(len(documents)))
    return result


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, also from a thread whose loop is already running (a Prefect task may be one)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coroutine)
        except BaseException as exc:  # handed back to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="qa-generation")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


# Extractive ---------------------------------------------------------------------------------------------------
def _extractive(documents: list[Document], config: QAConfig) -> QAResult:
    result = QAResult(backend="extractive", prompt_version=extractive.PROMPT_VERSION)
    candidates: list[QAPair] = []
    sources: dict[str, str] = {}
    with ProgressCounter(len(documents), "generating QA pairs") as bar:
        for document in documents:
            started = time.perf_counter()
            # Spare candidates: a question the filters drop (the same question in many documents of a templated
            # corpus) is replaced by the document's next one, up to questions_per_doc kept.
            found = extractive.extractive_pairs(
                document, config.questions_per_doc * EXTRACTIVE_CANDIDATES, config.min_answer_words
            )
            latency = round(time.perf_counter() - started, 6)
            for k, (question, answer, sentence) in enumerate(found):
                metadata: dict[str, Any] = {}
                if config.include_metadata:
                    metadata = {
                        "document_id": document.id,
                        "chunk": sentence,
                        "category": document.category,
                        "backend": "extractive",
                        "model": None,
                        "prompt_version": extractive.PROMPT_VERSION,
                        "prompt_tokens": 0,
                        "completion_tokens": 0,
                        "answer_start": document.text.find(answer),
                        "latency_s": latency,
                        "timestamp": utc_now(),
                    }
                pair = QAPair(
                    id=f"{document.id}-q{k}",
                    question=question,
                    answer=answer,
                    document_id=document.id,
                    metadata=metadata,
                )
                candidates.append(pair)
                sources[pair.id] = document.text
            bar.advance()
    result.requests = {"total": 0, "sent": 0, "reused": 0, "quarantined": 0}
    _finish(result, documents, candidates, sources, config)
    result.cost_usd = result.cost_sent_usd = 0.0
    return result


def _finish(
    result: QAResult, documents: list[Document], candidates: list[QAPair], sources: dict[str, str], config: QAConfig
) -> None:
    filtered = filter_pairs(candidates, sources, config)
    kept: dict[str, int] = {}
    for pair in filtered.kept:  # at most questions_per_doc per document, the first that passed
        kept[pair.document_id] = kept.get(pair.document_id, 0) + 1
        if kept[pair.document_id] <= config.questions_per_doc:
            result.pairs.append(pair)
    result.rejects.extend(filtered.dropped)
    result.filtered = filtered.reasons
    with_pairs = {p.document_id for p in result.pairs}
    result.documents_without_pairs = [d.id for d in documents if d.id not in with_pairs]


# Model-backed -------------------------------------------------------------------------------------------------
def build_jobs(
    documents: list[Document], config: QAConfig, prompts: PromptSet, backend: str, model: str, domain: str
) -> list[Job]:
    jobs = []
    for document in documents:
        chunks = chunk_text(document.text, config.chunk_words, config.chunk_overlap_words)
        # questions_per_doc spread over the chunks, earlier chunks first; a chunk left with none is not sent.
        base, extra = divmod(config.questions_per_doc, len(chunks))
        for chunk in chunks:
            n = base + (1 if chunk.index < extra else 0)
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
class _Requests:
    """Where each request's outcome goes: the journal (pairs, or quarantined with its reason), another round
    (a reply to re-ask), or the failed list (still failing after the policy's tries: sent again next run)."""

    journal: Journal
    backend: str
    model: str
    prompts: PromptSet
    max_format_retries: int
    failed: list[tuple[Job, BaseException]] = field(default_factory=list)

    def settle(self, job: Job, outcome: Completion | BaseException, round_: int) -> bool:
        """Record one outcome; True when the job goes to the next round with the problem sent back."""
        if isinstance(outcome, TransientError):
            self.failed.append((job, outcome))  # not journaled: the next run sends it again
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
        )


async def _generate_with_model(
    documents: list[Document], config: QAConfig, backend_name: str, api_key: str | None, journal: Journal, domain: str
) -> QAResult:
    prompts = load_prompts(config.prompt_dir)
    model = config.model_name or ("gpt-4o-mini" if backend_name == "openai" else "")
    jobs = build_jobs(documents, config, prompts, backend_name, model, domain)
    todo = [job for job in jobs if job.key not in journal]
    requests = _Requests(journal, backend_name, model, prompts, config.max_format_retries)
    log.info("qa_requests_planned", total=len(jobs), reused=len(jobs) - len(todo), to_send=len(todo))
    if todo:
        backend = _open_chat_backend(backend_name, config, api_key)
        try:
            with ProgressCounter(len(todo), "generating QA pairs") as bar:
                pending = todo
                for round_ in range(config.max_format_retries + 1):
                    again = []
                    async for job, outcome in backend.complete_many(pending):
                        if requests.settle(job, outcome, round_):
                            again.append(job)
                        else:
                            bar.advance()
                    pending = again
                    if not pending:
                        break
        finally:
            await backend.aclose()
    result = QAResult(backend=backend_name, model=model, prompt_version=prompts.version)
    result.usage_sent = sum((job.usage for job in todo), Usage())
    _assemble(result, documents, jobs, journal, config)
    failed = requests.failed
    result.requests = {
        "total": len(jobs),
        "sent": len(todo),
        "reused": len(jobs) - len(todo),
        "quarantined": sum(1 for j in jobs if (e := journal.get(j.key)) and e.status == "quarantined"),
        "failed": len(failed),
    }
    result.cost_usd, result.cost_sent_usd = cost(result.usage, model, config), cost(result.usage_sent, model, config)
    if failed:
        job, error = failed[0]
        raise TransientError(
            f"{len(failed)} of {len(jobs)} QA requests still failing after their retries (first: document "
            f"{job.document.id} chunk {job.chunk.index}: {type(error).__name__}: {error}); the other "
            f"{len(jobs) - len(failed)} are journaled in {journal.path} and will not be sent again"
        )
    return result


def _assemble(result: QAResult, documents: list[Document], jobs: list[Job], journal: Journal, config: QAConfig) -> None:
    """Pairs from the journal, in document and chunk order, with their metadata; then the quality filters."""
    candidates: list[QAPair] = []
    sources: dict[str, str] = {}
    counters: dict[str, int] = {}
    total = Usage()
    for job in jobs:
        entry = journal.get(job.key)
        if entry is None:
            continue  # failed this run: reported by the caller
        total += entry.usage
        if entry.status == "quarantined":
            result.rejects.append(
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
    result.usage = total
    _finish(result, documents, candidates, sources, config)
