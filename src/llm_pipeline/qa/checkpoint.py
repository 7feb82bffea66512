"""The journal of completed QA requests: append-only JSONL, one line per request, written as each completes.

Keyed by what determines the answer (document text hash, chunk, prompt version and template digest, backend,
model, questions asked, generation settings), not by run: a rerun in a new run folder, or after `kill -9`,
finds every finished request here and sends only the rest. A line is written with one `write` on a file opened
for appending and flushed to disk before the request counts as done; a line torn by a crash (no newline, or
not JSON) is skipped on reading and overwritten by the next append's fresh line.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from llm_pipeline.logging import get_logger

log = get_logger("qa.checkpoint")


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated: bool = False  # the server sent no usage: counted from characters

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            estimated=self.estimated or other.estimated,
        )


class Entry(BaseModel):
    """One finished request: its pairs, or why it was quarantined (with the model's raw reply)."""

    key: str
    document_id: str
    chunk: int
    chunks: int
    status: Literal["ok", "quarantined"]
    pairs: list[dict[str, str]] = Field(default_factory=list)
    reason: str | None = None
    raw: str | None = None
    usage: Usage = Field(default_factory=Usage)
    latency_s: float = 0.0
    attempts: int = 1
    backend: str
    model: str | None
    prompt_version: str
    timestamp: str
    batch: bool = False  # answered through the Batch API: priced at qa.batch_price_factor


def request_key(**parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


class Journal:
    """Finished requests by key. `entry` is the line's model: QA's `Entry` here, the judge's verdicts elsewhere."""

    def __init__(self, path: Path, entry: type[Any] = Entry):
        self.path = path
        self.entry = entry
        path.parent.mkdir(parents=True, exist_ok=True)
        self.entries: dict[str, Any] = {}
        self.torn = 0
        if path.exists():
            self._read()

    def _read(self) -> None:
        data = self.path.read_bytes()
        for raw in data.split(b"\n"):
            if not raw.strip():
                continue
            try:
                entry = self.entry.model_validate_json(raw)
            except ValueError:
                self.torn += 1  # a line cut short by a crash: that request is simply sent again
                continue
            self.entries[entry.key] = entry
        if data and not data.endswith(b"\n"):
            # Terminate the torn tail so the next append starts on a line of its own.
            with self.path.open("ab") as handle:
                handle.write(b"\n")
        if self.torn:
            log.warning("qa_checkpoint_torn_lines", path=str(self.path), lines=self.torn)

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def get(self, key: str) -> Any:
        return self.entries.get(key)

    def append(self, entry: Any) -> None:
        line = entry.model_dump_json().encode() + b"\n"
        # O_APPEND with one write: concurrent writers (two runs sharing a cache) never interleave within a line.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.entries[entry.key] = entry


class Sent(BaseModel):
    """What one run sent: every HTTP request of every stage attempt, by outcome, and the tokens billed for them."""

    http_requests: int = 0
    requests: int = 0  # distinct QA requests (a request retried three times counts once here, three times above)
    outcomes: dict[str, int] = Field(default_factory=dict)  # ok, rate_limited, connection_dropped, ...
    usage: Usage = Field(default_factory=Usage)
    usage_batch: Usage = Field(default_factory=Usage)  # the part of `usage` sent through the Batch API
    keys: set[str] = Field(default_factory=set, exclude=True)


class Ledger:
    """Every request a run sends, one line per HTTP request as it returns (or fails), in `<folder>/ledger/<run>.jsonl`.

    The journal says what is done; the ledger says what was paid. It is per run, so "sent by this run" counts
    every attempt of every Prefect retry of the stage (the same run id), and a crash loses nothing already
    written (a plain `write` on an O_APPEND file survives the process; no fsync: a host crash may lose the last
    lines, never the journal's)."""

    def __init__(self, folder: Path, run: str):
        self.path = folder / "ledger" / f"{run}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def record(self, key: str, outcome: str, usage: Usage | None, batch: bool = False) -> None:
        line: dict[str, Any] = {"key": key, "outcome": outcome} | ({"batch": True} if batch else {})
        if usage is not None:
            line |= usage.model_dump()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(line) + "\n").encode())
        finally:
            os.close(fd)

    def sent(self) -> Sent:
        total = Sent()
        if not self.path.exists():
            return total
        keys: set[str] = set()
        usage = Usage()
        for raw in self.path.read_bytes().split(b"\n"):
            try:
                line = json.loads(raw)
            except ValueError:
                continue  # empty, or torn by a crash
            total.http_requests += 1
            keys.add(line["key"])
            total.outcomes[line["outcome"]] = total.outcomes.get(line["outcome"], 0) + 1
            if "prompt_tokens" in line:
                usage += Usage.model_validate(line)
                if line.get("batch"):
                    total.usage_batch += Usage.model_validate(line)
        total.requests, total.usage, total.keys = len(keys), usage, keys
        return total
