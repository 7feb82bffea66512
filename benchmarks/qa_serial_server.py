"""QA against a server that answers one request at a time (llama.cpp's and llama-cpp-python's servers, Ollama by
default): how many requests the `openai` backend gets answered, and how many HTTP requests it spends, with the
default 16 in flight and a deadline shorter than the server's queue.

The server is the test suite's fake (tests/fakes/openai_server.py) with `serial=True`: it works on one reply at a
time for `--latency` seconds, the abandoned ones included (a client that gave up does not stop the work), as
llama-cpp-python's server was seen to. One stage attempt (no stage retry), tries per request by the policy table.

    .venv/bin/python benchmarks/qa_serial_server.py --docs 16 40 --latency 0.3 0.2 --deadline 1.5
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llm_pipeline.config import QAConfig  # noqa: E402
from llm_pipeline.logging import configure_logging  # noqa: E402
from llm_pipeline.qa import generate_qa  # noqa: E402
from llm_pipeline.records import Document  # noqa: E402
from tests.fakes.openai_server import FakeOpenAI  # noqa: E402


def run(docs: int, latency: float, deadline: float, concurrency: int) -> dict[str, object]:
    documents = [
        Document(id=f"d{i}", text=f"Station {i} charges {i + 10} kW for fleet vehicles at the depot in town {i}.")
        for i in range(docs)
    ]
    with FakeOpenAI(serial=True, latency_s=latency) as server:
        config = QAConfig.model_validate(
            {
                "backend": "openai",
                "base_url": server.base_url,
                "model_name": "m",
                "concurrency": concurrency,
                "request_timeout_s": deadline,
                "requests_per_minute": None,
                "retry": {"timeout_step_s": 0.5},
                "questions_per_doc": 1,
            }
        )
        started = time.monotonic()
        try:
            result = generate_qa(documents, config, checkpoint_dir=Path(tempfile.mkdtemp()))
            failed, lowest = 0, result.requests.get("in_flight_lowest", concurrency)
        except Exception as exc:  # noqa: BLE001 - the count of requests still failing is in the message
            failed, lowest = int(str(exc).split(" of ")[0]), "-"
        seconds = time.monotonic() - started
        return {"failed": failed, "posts": server.posts, "seconds": round(seconds, 1), "lowest": lowest}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, nargs="+", default=[16, 40])
    parser.add_argument("--latency", type=float, nargs="+", default=[0.3, 0.2])
    parser.add_argument("--deadline", type=float, default=1.5)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    os.environ.setdefault("LLM_PIPELINE_PROGRESS", "0")
    configure_logging("ERROR", structured=False)
    columns = ("documents", "seconds a reply", "deadline", "failed after their tries", "HTTP requests", "seconds")
    print("| " + " | ".join(columns) + " | lowest in flight |")
    print("|---|---|---|---|---|---|---|")
    for docs in args.docs:
        for latency in args.latency:
            row = run(docs, latency, args.deadline, args.concurrency)
            print(
                f"| {docs} | {latency} | {args.deadline} | {row['failed']} | {row['posts']} | {row['seconds']} | "
                f"{row['lowest']} |"
            )


if __name__ == "__main__":
    main()
