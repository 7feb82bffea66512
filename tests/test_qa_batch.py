"""`qa.mode: batch` against the suite's OpenAI-compatible server, which speaks the Files and Batches endpoints
(tests/fakes/batch_api.py): a batch answers the stage at the batch price; a run killed while its batch works
re-attaches to it instead of paying twice; an expired batch's unfinished half, a failed batch and a failed line
go out online; nothing is lost or answered twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from llm_pipeline.config import DataConfig, QAConfig, RetryDelays
from llm_pipeline.ingest import load_documents
from llm_pipeline.qa import generate_qa
from llm_pipeline.qa.batch import BATCHES_FILE
from llm_pipeline.records import Document
from tests.conftest import wait_until
from tests.fakes.openai_server import FakeOpenAI

ROOT = Path(__file__).resolve().parents[1]
FAST = RetryDelays(rate_limit_initial_s=0.01, rate_limit_max_s=0.2, timeout_step_s=0.01, oom_delay_s=0.01)
PRICE = {"input_per_million": 0.15, "output_per_million": 0.60}


@pytest.fixture(scope="module")
def documents() -> list[Document]:
    docs = load_documents(DataConfig(path=ROOT / "data" / "ev_charging" / "documents.jsonl", limit=40)).documents
    return [d for d in docs if sum(d.text[:60] in other.text for other in docs) == 1][:16]  # markers that are unique


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


def settings(server: FakeOpenAI) -> dict[str, object]:
    return {
        "backend": "openai",
        "base_url": server.base_url,
        "model_name": "fake-model",
        "questions_per_doc": 2,
        "mode": "batch",
        "batch_poll_s": 0.05,
        "batch_poll_max_s": 0.2,
        "requests_per_minute": None,
        "retry": FAST.model_dump(),
        "prices": {"fake-model": PRICE},
    }


def dollars(billed: dict[str, int]) -> float:
    return (billed["prompt_tokens"] * PRICE["input_per_million"] + billed["completion_tokens"] * 0.60) / 1e6


def test_a_batch_answers_the_stage_at_half_the_price(fake: FakeOpenAI, documents: list[Document], tmp_path) -> None:
    result = generate_qa(documents, QAConfig.model_validate(settings(fake)), checkpoint_dir=tmp_path, run_id="b")
    assert len(fake.batch.batches) == 1 and fake.stats()["posts"] == 0  # no online request at all
    assert sum(fake.batch.lines.values()) == len(documents) and len(result.pairs) >= len(documents)
    assert {p.document_id for p in result.pairs} == {d.id for d in documents}
    assert result.cost_sent_usd == pytest.approx(dollars(fake.batch.billed) * 0.5, abs=1e-6)
    assert result.cost_usd == result.cost_sent_usd and result.outcomes == {"ok": len(documents)}
    [submitted, ended] = [json.loads(line) for line in (tmp_path / BATCHES_FILE).read_text().splitlines()]
    assert submitted["event"] == "submitted" and ended["status"] == "completed"


def test_an_expired_batch_sends_its_unfinished_half_online(
    fake: FakeOpenAI, documents: list[Document], tmp_path
) -> None:
    fake.batch.expire_after = len(documents) // 2
    fake.batch.line_faults = {documents[0].text[:60]: 500}  # one line fails on the server: online too
    result = generate_qa(documents, QAConfig.model_validate(settings(fake)), checkpoint_dir=tmp_path, run_id="e")
    assert {p.document_id for p in result.pairs} == {d.id for d in documents}  # nothing lost
    assert fake.stats()["posts"] == len(documents) - len(documents) // 2 + 1  # the rest, once each
    assert result.outcomes["ok"] == len(documents) and result.outcomes["server_error"] == 1


def test_a_failed_batch_falls_back_to_online(fake: FakeOpenAI, documents: list[Document], tmp_path) -> None:
    fake.batch.fail_validation = True
    result = generate_qa(documents, QAConfig.model_validate(settings(fake)), checkpoint_dir=tmp_path, run_id="f")
    assert {p.document_id for p in result.pairs} == {d.id for d in documents}
    assert fake.stats()["posts"] == len(documents) and sum(fake.batch.lines.values()) == 0


def test_lines_refused_for_the_models_context_go_online_asking_for_what_fits(
    documents: list[Document], tmp_path: Path
) -> None:
    """A batch for a model with a small context: each line's prompt plus max_tokens is refused (a batch cannot step
    down). The refusal's numbers teach the online client, which sends those lines asking for what fits, each once;
    a line whose prompt alone fills the context is quarantined naming qa.chunk_words. Before, all were rejected."""
    long = Document(id="long", text=" ".join(f"Depot {i} charges bus {i} at {i + 20} kW overnight." for i in range(34)))
    docs = [*documents[:6], long]  # the long one: one chunk, its prompt alone over the context
    with FakeOpenAI(context_tokens=800, context_style="openai", chars_per_token=3.0) as server:
        result = generate_qa(docs, QAConfig.model_validate(settings(server)), checkpoint_dir=tmp_path, run_id="c")
        online = [e for e in server.log if e["action"] != "context_refused"]
        refused_online = server.actions["context_refused"]
    assert {p.document_id for p in result.pairs} == {d.id for d in documents[:6]}
    # every batch line refused: the short ones left for online, the long one rejected for good
    assert result.outcomes["context_refused"] == 6 and result.outcomes["rejected"] == 1
    assert len(online) == 6 and refused_online == 0  # the short ones once each, sized to fit from the first
    assert all(e["max_tokens"] < 1024 for e in online)
    [reject] = result.rejects
    assert reject["document_id"] == "long" and "qa.chunk_words" in reject["reason"], reject


KILLED = """
import json, sys
from pathlib import Path
from llm_pipeline.config import QAConfig
from llm_pipeline.qa import generate_qa
from llm_pipeline.records import Document
settings, folder = QAConfig.model_validate(json.loads(sys.argv[1])), Path(sys.argv[2])
docs = [Document.model_validate(d) for d in json.loads(sys.argv[3])]
generate_qa(docs, settings, checkpoint_dir=folder, run_id="killed")
"""


def test_a_run_killed_while_its_batch_works_reattaches(fake: FakeOpenAI, documents: list[Document], tmp_path) -> None:
    fake.batch.delay_s = 2.0  # still validating when the run dies
    config = settings(fake)
    docs = json.dumps([d.model_dump(mode="json") for d in documents])
    run = subprocess.Popen([sys.executable, "-c", KILLED, json.dumps(config), str(tmp_path), docs], cwd=ROOT)
    try:
        wait_until(lambda: fake.batch.batches, 60, "the batch to be submitted")
        wait_until(lambda: (tmp_path / BATCHES_FILE).exists(), 10, "the batch id journaled")
        os.kill(run.pid, signal.SIGKILL)
    finally:
        run.wait(timeout=30)
    result = generate_qa(documents, QAConfig.model_validate(config), checkpoint_dir=tmp_path, run_id="again")
    assert len(fake.batch.batches) == 1, "a second batch was submitted: the killed run's was paid twice"
    assert fake.stats()["posts"] == 0 and {p.document_id for p in result.pairs} == {d.id for d in documents}
    assert sum(fake.batch.lines.values()) == len(documents)


def test_batch_mode_needs_the_openai_backend() -> None:
    with pytest.raises(ValueError, match="mode: batch needs the openai backend"):
        QAConfig(backend="extractive", mode="batch")
