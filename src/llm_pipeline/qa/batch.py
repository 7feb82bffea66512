"""`qa.mode: batch`: the stage's requests go through OpenAI's Batch API (half the price on OpenAI, results within
the 24 h window) instead of one HTTP request each.

1. The requests not yet in the journal are written as one JSONL file (`custom_id` = the request's journal key),
   uploaded (`/v1/files`, purpose `batch`) and submitted (`/v1/batches`). The batch id and its keys go into
   `<checkpoint folder>/qa-batches.jsonl` (fsynced) the moment the batch exists.
2. The batch is polled (`qa.batch_poll_s`, growing 1.5x a poll to `qa.batch_poll_max_s`) until it ends:
   completed, expired, failed or cancelled.
3. Its output file's answers are settled as online answers are (journaled, or sent back with the problem, or
   quarantined) and written to the run's ledger as batch lines (priced at `qa.batch_price_factor`); its error
   file's lines are rejected (4xx: quarantined) or left to send again (429, 5xx; a refusal for the model's context
   that states a limit leaving room for a reply: online, asking for what fits, qa/context.py).
4. **Whatever the batch did not answer** (an expired batch's unfinished half, a failed or cancelled batch, a
   line that failed transiently) **and every reply to send back with a problem go out in the online mode**, in
   the same stage, through the same policy table and rate controller. A batch is never resubmitted.

A killed run re-attaches: the next attempt finds the batch id in `qa-batches.jsonl` (no end recorded) for keys
it still needs and polls that batch instead of submitting another. Calls to the Files and Batches endpoints go
through the policy table (`qa_batch`); one still failing fails the stage (TransientError) for Prefect's retry,
which re-attaches in turn.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_pipeline.errors import BudgetReachedError, RequestRejectedError, ServiceUnavailableError
from llm_pipeline.logging import get_logger
from llm_pipeline.qa.backends import Completion, Job, estimate_tokens
from llm_pipeline.qa.budget import worst_case
from llm_pipeline.qa.checkpoint import Usage
from llm_pipeline.qa.policy import RequestPolicy

if TYPE_CHECKING:
    from llm_pipeline.qa.openai_backend import OpenAIBackend
    from llm_pipeline.qa.requests import Outcomes

log = get_logger("qa.batch")

BATCHES_FILE = "qa-batches.jsonl"
ENDED = ("completed", "expired", "failed", "cancelled")


class BatchLog:
    """Which batches were submitted for which requests, and which ended: append-only, one fsynced line each."""

    def __init__(self, folder: Path):
        self.path = folder / BATCHES_FILE

    def _lines(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        lines = []
        for raw in self.path.read_bytes().split(b"\n"):
            try:
                lines.append(json.loads(raw))
            except ValueError:
                continue  # empty, or torn by a crash
        return lines

    def _append(self, line: dict[str, Any]) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(line) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def open_for(self, keys: set[str]) -> list[dict[str, Any]]:
        """Batches submitted and not ended that hold some of `keys`: a killed run's, to re-attach to."""
        submitted: dict[str, dict[str, Any]] = {}
        ended: set[str] = set()
        for line in self._lines():
            if line.get("event") == "submitted":
                submitted[line["batch_id"]] = line
            elif line.get("event") == "ended":
                ended.add(line["batch_id"])
        return [b for i, b in submitted.items() if i not in ended and keys & set(b["keys"])]

    def submitted(self, batch_id: str, keys: list[str]) -> dict[str, Any]:
        line = {"event": "submitted", "batch_id": batch_id, "keys": keys, "at": time.time()}
        self._append(line)
        return line

    def ended(self, batch_id: str, status: str, counts: dict[str, Any]) -> None:
        self._append({"event": "ended", "batch_id": batch_id, "status": status, "counts": counts, "at": time.time()})


async def send_batch(
    backend: OpenAIBackend, todo: list[Job], outcomes: Outcomes, batches: BatchLog
) -> tuple[list[Job], list[Job]]:
    """Answer `todo` through the Batch API as far as it goes; returns what is left for the online mode: the jobs
    no batch answered, and those answered with a reply to send back with its problem."""
    by_key = {job.key: job for job in todo}
    records = batches.open_for(set(by_key))
    covered = {key for record in records for key in record["keys"]}
    settled: set[str] = set()
    held: dict[str, Usage] = {}
    fresh = []
    for job in todo:
        if job.key in covered:
            continue
        if job.budget is not None and job.budget.capped:  # the cap: each request's worst case, at the online price
            try:
                held[job.key] = job.budget.reserve(worst_case(job.messages, backend.config.max_tokens))
            except BudgetReachedError as refused:
                outcomes.settle(job, refused, 0)
                settled.add(job.key)
                continue
        fresh.append(job)
    for record in records:
        log.info("qa_batch_reattached", batch_id=record["batch_id"], requests=len(record["keys"]))
    if fresh:
        records.append(await _submit(backend, fresh, batches))
    again: list[Job] = []
    for record in records:
        batch = await _wait(backend, record["batch_id"])
        await _collect(backend, batch, by_key, outcomes, settled, again)
        batches.ended(batch.id, batch.status, batch.request_counts.model_dump() if batch.request_counts else {})
    for key, usage in held.items():  # billed what the batch answered; the rest is reserved again if sent online
        by_key[key].budget.settle(usage, by_key[key].usage if by_key[key].batch else None)
    left = [job for job in todo if job.key not in settled]
    if left:
        log.warning("qa_batch_remainder_online", requests=len(left), reason="not answered by the batch")
    return left, again


def _context_refused(backend: OpenAIBackend, job: Job, body: Any) -> str | None:
    """A line refused for the model's context teaches the online client's window (qa/context.py) what fits: None
    when a reply fits (the line is left for the online mode, which asks for that); otherwise why it never can, or
    "" for a refusal of another kind."""
    from llm_pipeline.qa.context import ContextTooSmall, read_refusal

    refusal = read_refusal(str(body), body)
    if refusal is None:
        return ""
    prompt = estimate_tokens("".join(m["content"] for m in job.messages))
    try:
        backend.window.learn(refusal, prompt, backend.config.max_tokens)
    except ContextTooSmall as why:
        return f"context too small: {why}"
    return None


async def _call(backend: OpenAIBackend, what: str, operation: Any, *args: Any, **kwargs: Any) -> Any:
    """One call to the Files or Batches endpoints, retried by the policy table like a chat request."""
    from llm_pipeline.qa.openai_backend import classify

    async def once() -> Any:
        try:
            return await operation(*args, **kwargs)
        except Exception as exc:
            error = classify(exc)
            if error is exc:
                raise
            raise error from exc

    return await RequestPolicy(backend.config.retry, f"qa_batch_{what}").call_async(once)


async def _submit(backend: OpenAIBackend, jobs: list[Job], batches: BatchLog) -> dict[str, Any]:
    from llm_pipeline.qa.openai_backend import _FORMATS

    kind = _FORMATS[backend.format_index]
    lines = []
    for job in jobs:
        body = {
            "model": backend.model,
            "messages": job.messages,
            "temperature": backend.config.temperature,
            "max_tokens": backend.config.max_tokens,
            **backend._extra(kind),
        }
        lines.append(json.dumps({"custom_id": job.key, "method": "POST", "url": "/v1/chat/completions", "body": body}))
    data = ("\n".join(lines) + "\n").encode()
    upload = backend.client.files.create
    uploaded = await _call(backend, "upload", upload, file=("qa-requests.jsonl", data), purpose="batch")
    batch = await _call(
        backend,
        "create",
        backend.client.batches.create,
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    log.info("qa_batch_submitted", batch_id=batch.id, requests=len(jobs), bytes=len(data))
    return batches.submitted(batch.id, [job.key for job in jobs])


async def _wait(backend: OpenAIBackend, batch_id: str) -> Any:
    delay = backend.config.batch_poll_s
    while True:
        batch = await _call(backend, "poll", backend.client.batches.retrieve, batch_id)
        if batch.status in ENDED:
            log.info("qa_batch_ended", batch_id=batch_id, status=batch.status)
            return batch
        counts = batch.request_counts.model_dump() if batch.request_counts else {}
        log.info("qa_batch_waiting", batch_id=batch_id, status=batch.status, next_poll_s=round(delay, 1), **counts)
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, backend.config.batch_poll_max_s)


async def _collect(
    backend: OpenAIBackend,
    batch: Any,
    by_key: dict[str, Job],
    outcomes: Outcomes,
    settled: set[str],
    again: list[Job],
) -> None:
    from llm_pipeline.qa.openai_backend import read_reply

    for file_id in (batch.output_file_id, batch.error_file_id):
        if not file_id:
            continue
        content = (await _call(backend, "download", backend.client.files.content, file_id)).content
        for raw in content.splitlines():
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            job = by_key.get(line.get("custom_id"))
            if job is None or job.key in settled:
                continue  # an answer to a request this run no longer needs, or one already settled
            response = line.get("response") or {}
            status = response.get("status_code")
            if status == 200:
                try:
                    text, finish, usage = read_reply(json.dumps(response.get("body")).encode(), "application/json")
                except ServiceUnavailableError as error:
                    job.sent("malformed_reply", error.usage, batch=True)
                    continue  # unreadable: left for the online mode
                if usage is None:
                    usage = Usage(estimated=True)
                job.sent("ok", usage, batch=True)
                job.batch = True  # journaled as answered by the batch: priced at qa.batch_price_factor
                settled.add(job.key)
                if outcomes.settle(job, Completion(text=text, finish_reason=finish, usage=usage, latency_s=0.0), 0):
                    again.append(job)  # sent back with the problem, online
            elif isinstance(status, int) and 400 <= status < 500 and status not in (408, 409, 429):
                body = response.get("body")
                why = _context_refused(backend, job, body)
                if why is None:  # refused for the model's context, with room for a reply: online asks what fits
                    job.sent("context_refused", batch=True)
                    continue
                job.sent("rejected", batch=True)
                settled.add(job.key)
                outcomes.settle(job, RequestRejectedError(f"{status} in batch {batch.id}: {why or body}"), 0)
            else:
                job.sent("server_error" if status else "malformed_reply", batch=True)  # left for the online mode
