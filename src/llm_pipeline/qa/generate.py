"""The generate-qa-pairs stage's algorithm: questions_per_doc pairs per document through the backend chosen in
config, then the quality filters.

Backends: `openai` (the async SDK, any OpenAI-compatible base_url), `local` (transformers), `extractive`
(offline, no model), or one registered by a plug-in (qa/backends.py). `auto` picks openai when an API key or
base_url is configured, local when a model_name is, else extractive.

For the model-backed backends each document is split into chunks; each chunk is one request (qa/requests.py),
journaled so it is never paid twice. Pairs then pass the quality filters (qa/filters.py). Nothing is lost: every
document ends with pairs, or with its reasons in `rejects`, or, when the service stayed down past its tries, the
stage fails with TransientError after journaling everything else, so the retry sends only the remainder.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_pipeline.aio import run_sync
from llm_pipeline.config import QAConfig
from llm_pipeline.errors import DataValidationError, TransientError
from llm_pipeline.logging import get_logger
from llm_pipeline.progress import ProgressCounter
from llm_pipeline.qa import extractive
from llm_pipeline.qa.backends import EXTRACTIVE, open_backend, resolve_backend
from llm_pipeline.qa.batch import BatchLog, send_batch
from llm_pipeline.qa.budget import Budget
from llm_pipeline.qa.checkpoint import Journal, Ledger, Usage
from llm_pipeline.qa.filters import filter_pairs
from llm_pipeline.qa.prompts import load_prompts
from llm_pipeline.qa.requests import Job, Outcomes, build_jobs, journaled_pairs, send_all
from llm_pipeline.records import Document, QAPair, utc_now

log = get_logger("qa")

JOURNAL_FILE = "qa-journal.jsonl"
EXTRACTIVE_CANDIDATES = 4  # candidates proposed per question wanted


@dataclass
class QAResult:
    pairs: list[QAPair] = field(default_factory=list)
    rejects: list[dict[str, Any]] = field(default_factory=list)  # quarantined requests and filtered pairs
    documents_without_pairs: list[str] = field(default_factory=list)
    backend: str = ""
    model: str | None = None
    prompt_version: str = ""
    requests: dict[str, int] = field(default_factory=dict)  # total, sent, http_requests, reused, quarantined, failed
    outcomes: dict[str, int] = field(default_factory=dict)  # this run's HTTP requests by outcome: ok, rate_limited...
    status: str = "complete"  # or "partial: budget reached (...)": the run's cap stopped it (qa.max_cost_usd...)
    budget: dict[str, Any] = field(default_factory=dict)
    filtered: dict[str, int] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)  # every request behind this dataset
    usage_sent: Usage = field(default_factory=Usage)  # only what this run sent
    cost_usd: float | None = None
    cost_sent_usd: float | None = None
    seconds: float = 0.0

    def counts(self, documents: int) -> dict[str, Any]:
        return {
            "documents": documents,
            "status": self.status,
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
            "outcomes_this_run": self.outcomes,
            "status": self.status,
            "budget": self.budget,
            "tokens": self.usage.model_dump(),
            "tokens_sent_this_run": self.usage_sent.model_dump(),
            "cost_usd": self.cost_usd,
            "cost_sent_this_run_usd": self.cost_sent_usd,
            "seconds": round(self.seconds, 3),
        }


def cost(usage: Usage, model: str | None, config: QAConfig, batch: Usage | None = None) -> float | None:
    """Dollars for `usage`, of which `batch` went through the Batch API (priced at qa.batch_price_factor)."""
    price = config.prices.get(model or "")
    if price is None:
        return None

    def dollars(u: Usage) -> float:
        return u.prompt_tokens * price.input_per_million + u.completion_tokens * price.output_per_million

    discounted = dollars(batch) * (1 - config.batch_price_factor) if batch is not None else 0.0
    return round((dollars(usage) - discounted) / 1_000_000, 6)


def generate_qa(
    documents: list[Document],
    config: QAConfig,
    *,
    checkpoint_dir: Path | None = None,
    api_key: str | None = None,
    domain: str = "general",
    run_id: str | None = None,
) -> QAResult:
    """`run_id` names the ledger of what this run sends (every stage attempt with the same id adds to it); None: a
    fresh id, so "sent by this run" is this call's."""
    backend = resolve_backend(config, api_key)
    log.info("qa_backend_selected", backend=backend, model=config.model_name, base_url=config.base_url)
    started = time.perf_counter()
    if backend == EXTRACTIVE:
        result = finish_extractive(documents, extractive_candidates(documents, config), config)
    else:
        folder = config.checkpoint_dir or checkpoint_dir or Path(".qa-cache")
        result = run_sync(
            _generate_with_model(
                documents,
                config,
                backend,
                api_key,
                Journal(folder / JOURNAL_FILE),
                Ledger(folder, run_id or uuid.uuid4().hex),
                domain,
            )
        )
    result.seconds = time.perf_counter() - started
    log.info("qa_generated", backend=backend, cost_usd=result.cost_sent_usd, **result.counts(len(documents)))
    return result


# Extractive ---------------------------------------------------------------------------------------------------
def extractive_candidates(documents: list[Document], config: QAConfig, progress: bool = True) -> list[QAPair]:
    """Every document's candidate pairs, before the filters: one shard's work (engine/ray_qa.py runs it by shard;
    a document's candidates depend on that document alone)."""
    candidates: list[QAPair] = []
    with ProgressCounter(len(documents) if progress else 0, "generating QA pairs") as bar:
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
                candidates.append(
                    QAPair(
                        id=f"{document.id}-q{k}",
                        question=question,
                        answer=answer,
                        document_id=document.id,
                        metadata=metadata,
                    )
                )
            bar.advance()
    return candidates


def finish_extractive(documents: list[Document], candidates: list[QAPair], config: QAConfig) -> QAResult:
    """The filters over every document's candidates (in document order), as one result."""
    result = QAResult(backend="extractive", prompt_version=extractive.PROMPT_VERSION)
    texts = {document.id: document.text for document in documents}
    sources = {pair.id: texts[pair.document_id] for pair in candidates}
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
def model_of(config: QAConfig, backend_name: str) -> str:
    return config.model_name or ("gpt-4o-mini" if backend_name == "openai" else "")


def plan(
    documents: list[Document], config: QAConfig, backend_name: str, journal: Journal, domain: str
) -> tuple[list[Job], list[Job]]:
    """(every request the documents need, those the journal has not answered yet)."""
    prompts = load_prompts(config.prompt_dir)
    jobs = build_jobs(documents, config, prompts, backend_name, model_of(config, backend_name), domain)
    return jobs, [job for job in jobs if job.key not in journal]


@dataclass
class Sending:
    """What sending a set of requests left undone: failed (transient, still failing after their tries: sent again
    by the next attempt) and refused (the run's cap), each as (document id, chunk, error in words)."""

    failed: list[tuple[str, int, str]] = field(default_factory=list)
    refused: list[tuple[str, int, str]] = field(default_factory=list)
    in_flight_cuts: int = 0  # times timed-out requests cut the requests in flight to one (qa/inflight.py)
    in_flight_lowest: int | None = None  # the fewest in flight it came to, where it was cut
    context_tokens: int | None = None  # the model's context, where a server stated it refusing a request (context.py)
    completion_cap: int | None = None  # the completion tokens a server said it allows at most

    def __iadd__(self, other: Sending) -> Sending:
        self.failed += other.failed
        self.refused += other.refused
        self.in_flight_cuts += other.in_flight_cuts
        self.in_flight_lowest = _least(self.in_flight_lowest, other.in_flight_lowest)
        self.context_tokens = _least(self.context_tokens, other.context_tokens)
        self.completion_cap = _least(self.completion_cap, other.completion_cap)
        return self


def _least(*values: int | None) -> int | None:
    known = [n for n in values if n is not None]
    return min(known) if known else None


async def send_documents(
    documents: list[Document],
    config: QAConfig,
    backend_name: str,
    api_key: str | None,
    journal: Journal,
    ledger: Ledger,
    domain: str,
    budget: Any,
    todo: list[Job] | None = None,
    opened: Any = None,
) -> Sending:
    """Send the requests of `documents` the journal has not answered (`todo`, when the caller planned them already),
    each outcome journaled as it comes; `budget` (qa/budget.py's, or one shared by shards) is reserved from before
    each request when it is capped. `opened`: a backend the caller opened and will close (a model loaded once for
    many calls), instead of one opened here."""
    prompts = load_prompts(config.prompt_dir)
    model = model_of(config, backend_name)
    if todo is None:
        _, todo = plan(documents, config, backend_name, journal, domain)
    for job in todo:
        job.ledger, job.budget = ledger, budget if budget.capped else None  # no cap: nothing to hold per request
    outcomes = Outcomes(journal, backend_name, model, prompts, config.max_format_retries)
    sending = Sending()
    if todo:
        backend = opened or open_backend(backend_name, config, api_key)
        outcomes.backend_records = getattr(backend, "records_sends", False)
        try:
            if config.mode == "batch" and backend_name == "openai":
                left, again = await send_batch(backend, todo, outcomes, BatchLog(journal.path.parent))  # type: ignore[arg-type]
                await send_all(backend, left, outcomes, config.max_format_retries)
                await send_all(backend, again, outcomes, config.max_format_retries, first_round=1)
            else:
                await send_all(backend, todo, outcomes, config.max_format_retries)
        finally:
            if opened is None:
                await backend.aclose()
            if (limit := getattr(backend, "in_flight", None)) is not None and limit.cuts:
                sending.in_flight_cuts, sending.in_flight_lowest = limit.cuts, limit.lowest
            if (window := getattr(backend, "window", None)) is not None:
                sending.context_tokens, sending.completion_cap = window.limit, window.completion_cap

    sending.failed = [(job.document.id, job.chunk.index, f"{type(e).__name__}: {e}") for job, e in outcomes.failed]
    sending.refused = [(job.document.id, job.chunk.index, str(e)) for job, e in outcomes.refused]
    return sending


def assemble(
    documents: list[Document],
    config: QAConfig,
    backend_name: str,
    journal: Journal,
    ledger: Ledger,
    domain: str,
    sending: Sending,
    budget: Budget,
    jobs: list[Job],
) -> QAResult:
    """The result from the journal (every request's pairs, whoever sent it) and the ledger (what this run paid);
    `jobs`: every request the documents need (`plan`)."""
    prompts = load_prompts(config.prompt_dir)
    model = model_of(config, backend_name)
    result = QAResult(backend=backend_name, model=model, prompt_version=prompts.version)
    sent = ledger.sent()  # every attempt of every stage retry of this run, and every billed reply
    result.usage_sent = sent.usage
    result.outcomes = sent.outcomes
    found = journaled_pairs(jobs, journal, config)
    result.usage = found.usage
    result.rejects.extend(found.rejects)
    _finish(result, documents, found.candidates, found.sources, config)
    failed = sending.failed
    result.requests = {
        "total": len(jobs),
        "sent": sent.requests,
        "http_requests": sent.http_requests,
        "reused": sum(1 for j in jobs if j.key in journal and j.key not in sent.keys),  # paid by an earlier run
        "quarantined": sum(1 for j in jobs if (e := journal.get(j.key)) and e.status == "quarantined"),
        "failed": len(failed),
        "refused_budget": len(sending.refused),
    }
    if sending.in_flight_cuts:  # the server did not keep up with qa.concurrency requests at once
        result.requests |= {"in_flight_cuts": sending.in_flight_cuts, "in_flight_lowest": sending.in_flight_lowest}
    if sending.context_tokens or sending.completion_cap:  # replies were asked for less than qa.max_tokens
        stated = {"context_tokens": sending.context_tokens, "completion_cap": sending.completion_cap}
        result.requests |= {name: n for name, n in stated.items() if n is not None} | {"max_tokens": config.max_tokens}
    if sending.refused:
        result.status = f"partial: budget reached ({sending.refused[0][2]})"
        result.budget = {
            "max_cost_usd": config.max_cost_usd,
            "max_total_tokens": config.max_total_tokens,
            "spent_usd": round(budget.cost(budget.spent), 6),
            "spent_tokens": budget.spent.prompt_tokens + budget.spent.completion_tokens,
            "requests_not_sent": len(sending.refused),
        }
        log.warning("qa_budget_reached", not_sent=len(sending.refused), **result.budget)
    result.cost_usd = cost(result.usage, model, config, batch=found.usage_batch)
    result.cost_sent_usd = cost(result.usage_sent, model, config, batch=sent.usage_batch)
    if failed:
        document_id, chunk, error = failed[0]
        raise TransientError(
            f"{len(failed)} of {len(jobs)} QA requests still failing after their retries (first: document "
            f"{document_id} chunk {chunk}: {error}); the other {len(jobs) - len(failed)} are journaled in "
            f"{journal.path} and will not be sent again"
        )
    return result


def require_pairs(result: QAResult, documents: int, config: QAConfig, rejects: Path) -> None:
    """Fail, naming the field and why, when fewer than `qa.min_pairs` pairs came out: a model that answers only
    with text the checks refuse (a small local model, a server ignoring the JSON format) must not end a run
    "completed" with an empty benchmark and an evaluation of nothing."""
    if len(result.pairs) >= config.min_pairs:
        return
    requests = result.requests
    detail = f"{documents} documents, {requests.get('total', 0)} requests, {requests.get('quarantined', 0)} quarantined"
    if requests.get("failed"):
        detail += f", {requests['failed']} failed"
    reasons = Counter(" ".join(str(r.get("reason", "?")).split())[:90] for r in result.rejects).most_common(3)
    if reasons:
        detail += " (" + "; ".join(f"{reason}: {n}" for reason, n in reasons) + ")"
    if result.status != "complete":
        detail += f"; {result.status}"
    if result.backend == "extractive":
        detail += (
            "; the offline extractive backend asks only of English sentences shaped `<subject> <verb> <rest>` (README,"
            " QA generation): for documents in another language, or with few such sentences, set qa.backend to"
            " openai or local"
        )
    raise DataValidationError(
        f"qa.min_pairs: {len(result.pairs)} QA pairs from backend {result.backend}"
        + (f" (model {result.model})" if result.model else "")
        + f", at least {config.min_pairs} needed: {detail}; each reject, with the model's reply, in {rejects}"
    )


def run_budget(config: QAConfig, backend_name: str, ledger: Ledger) -> Budget:
    """The run's cap, with what earlier attempts of the run already spent (from its ledger)."""
    return Budget(
        config.max_cost_usd,
        config.max_total_tokens,
        config.prices.get(model_of(config, backend_name)),
        ledger.sent().usage,
    )


async def _generate_with_model(
    documents: list[Document],
    config: QAConfig,
    backend_name: str,
    api_key: str | None,
    journal: Journal,
    ledger: Ledger,
    domain: str,
) -> QAResult:
    jobs, todo = plan(documents, config, backend_name, journal, domain)
    log.info("qa_requests_planned", total=len(jobs), reused=len(jobs) - len(todo), to_send=len(todo))
    budget = run_budget(config, backend_name, ledger)
    sending = await send_documents(documents, config, backend_name, api_key, journal, ledger, domain, budget, todo)
    return assemble(documents, config, backend_name, journal, ledger, domain, sending, budget, jobs)
