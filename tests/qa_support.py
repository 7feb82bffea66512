"""What the QA tests against the suite's OpenAI-compatible server share: the sample and the backend's settings."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from llm_pipeline.config import DataConfig, QAConfig, RetryDelays
from llm_pipeline.ingest import load_documents
from llm_pipeline.records import Document
from tests.fakes.openai_server import FakeOpenAI

ROOT = Path(__file__).resolve().parents[1]
FAST_RETRIES = RetryDelays(rate_limit_initial_s=0.01, rate_limit_max_s=0.5, timeout_step_s=0.01, oom_delay_s=0.01)
PRICE = {"fake-model": {"input_per_million": 0.15, "output_per_million": 0.60}}


def sample(limit: int) -> list[Document]:
    return load_documents(DataConfig(path=ROOT / "data" / "ev_charging" / "documents.jsonl", limit=limit)).documents


def qa_config(server: FakeOpenAI, **overrides: object) -> QAConfig:
    settings: dict[str, object] = {
        "backend": "openai",
        "base_url": server.base_url,
        "model_name": "fake-model",
        "questions_per_doc": 2,
        "request_timeout_s": 2.0,  # generous: the SDK's first request in a process takes a while on 2 cores
        "requests_per_minute": None,
        "concurrency": 8,
        "retry": FAST_RETRIES,
        "prices": PRICE,
    }
    settings.update(overrides)
    return QAConfig.model_validate(settings)


def run_against_a_silent_endpoint(
    api_url: str, settings: dict[str, str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`llm-pipeline run` on the test config, its QA sent to an endpoint that takes the connection and never answers
    (a hung proxy: a listening socket's backlog accepts, nothing reads), a request deadline of an hour, `settings`
    (`--set` pairs) on top. The 600 s limit stands for the hour the request would wait."""
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(64)
        every = {
            "dedup.method": "exact",
            "qa.backend": "openai",
            "qa.base_url": f"http://127.0.0.1:{hole.getsockname()[1]}/v1",
            "qa.model_name": "stalled",
            "qa.request_timeout_s": "3600",
            **settings,
        }
        command = [sys.executable, "-m", "flows.cli", "run", "--config", str(ROOT / "configs" / "test.yaml")]
        for key, value in every.items():
            command += ["--set", f"{key}={value}"]
        environment = {**os.environ, "PREFECT_API_URL": api_url, **(env or {})}
        for name in ("OPENAI_API_KEY", "RAY_ADDRESS"):
            environment.pop(name, None)
        return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=environment, timeout=600)
