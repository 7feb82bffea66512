"""QA generation throughput against an OpenAI-compatible server with a set latency and rate limit.

Starts the test suite's fake server (tests/fakes/openai_server.py) as its own process, with --latency and
--rpm, and runs the real openai backend three ways in one run: sequential (concurrency 1), concurrent at the
limit, and concurrent with 10 % injected failures (429, 500, 503, timeouts, malformed bodies, bad and truncated
replies, slow streams). For each: requests/s, the share of the rate limit sustained (server-side, between the
10th and 90th percentile of answers, so the first second's burst does not flatter it), lost documents,
duplicated pairs and requests paid twice. Then the client set over the server's limit (with and without the
x-ratelimit-* headers), and a storm: every request refused for a while (`--outage N:S`), then how soon the
client is back at its pace (`--only outage` runs that alone).

    make bench-qa          # or: .venv/bin/python benchmarks/qa_benchmark.py --docs 2000 --latency 0.3 --rpm 6000
"""

from __future__ import annotations

import argparse
import bisect
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llm_pipeline.config import QAConfig, RetryDelays  # noqa: E402
from llm_pipeline.errors import TransientError  # noqa: E402
from llm_pipeline.logging import configure_logging  # noqa: E402
from llm_pipeline.qa import QAResult, generate_qa  # noqa: E402
from llm_pipeline.records import Document  # noqa: E402

CITIES = ["Denver", "Oslo", "Lyon", "Austin", "Porto", "Graz", "Leeds", "Tucson", "Malmo", "Ghent", "Bern", "Reno"]


def corpus(count: int) -> list[Document]:
    """Documents whose sentences, and so the fake model's questions, are all distinct."""
    docs = []
    for i in range(count):
        city = CITIES[i % len(CITIES)]
        text = (
            f"Station {i} in {city} delivers {50 + i % 300} kW from {2 + i % 9} dispensers on weekdays. "
            f"Charging at station {i} costs ${0.20 + (i % 50) / 100:.2f} per kWh before the {i % 24}:00 peak. "
            f"The operator of station {i} reports {i % 97} sessions a day and {i % 13} faults a month."
        )
        docs.append(Document(id=f"doc-{i}", text=text, metadata={"category": "pricing"}))
    return docs


class Server:
    def __init__(
        self,
        latency: float,
        rpm: float | None,
        failure_rate: float,
        limit_headers: bool = True,
        outage: str = "",
        passes: int = 0,
    ):
        command = [sys.executable, "-m", "tests.fakes.openai_server", "--latency", str(latency)]
        command += ["--rpm", str(rpm)] if rpm else []
        command += ["--failure-rate", str(failure_rate), "--hang", "10"]
        command += [] if limit_headers else ["--no-limit-headers"]
        command += ["--outage", outage, "--outage-passes", str(passes)] if outage else []
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        self.base_url = self.process.stdout.readline().strip()

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.base_url + "/stats", timeout=30) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def sustained_rate(times: list[float]) -> float:
    times = sorted(times)
    if len(times) < 10:
        return len(times) / max(1e-9, times[-1] - times[0]) if len(times) > 1 else 0.0
    low, high = int(len(times) * 0.1), int(len(times) * 0.9)
    return (high - low) / max(1e-9, times[high] - times[low])


def generate(docs: list[Document], config: QAConfig, folder: Path) -> tuple[QAResult, int]:
    """The stage's QA, run up to 3 times as Prefect's task retries would (a request still failing after its tries
    is sent on the rerun), and how many runs it took."""
    runs = 0
    while True:
        runs += 1
        try:
            return generate_qa(docs, config, checkpoint_dir=folder), runs
        except TransientError:
            if runs == 3:
                raise


def outcome(result: QAResult, docs: list[Document]) -> dict[str, int]:
    ids = [p.id for p in result.pairs]
    contents = [(p.document_id, p.question, p.answer) for p in result.pairs]
    accounted = {p.document_id for p in result.pairs} | {r["document_id"] for r in result.rejects}
    return {
        "lost_documents": len({d.id for d in docs} - accounted),
        "duplicated_pairs": (len(ids) - len(set(ids))) + (len(contents) - len(set(contents))),
        "quarantined": result.requests.get("quarantined", 0),
    }


def measure(name: str, docs: list[Document], config: QAConfig, server: Server, rpm: float) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="qa-bench-"))
    started = time.perf_counter()
    result, runs = generate(docs, config, folder)
    seconds = time.perf_counter() - started
    stats = server.stats()
    paid_twice = sum(1 for count in stats["completed"].values() if count > 1)
    row = {
        "run": name,
        "documents": len(docs),
        "concurrency": config.concurrency,
        "seconds": round(seconds, 2),
        "requests_per_s": round(len(docs) / seconds, 2),
        "sustained_per_s": round(sustained_rate(stats["times"]), 2),
        "rate_limit_per_s": round(rpm / 60, 2),
        "sent_to_server": stats["total"],
        "non_ok_responses": sum(v for k, v in stats["actions"].items() if k != "ok"),  # injected, and 429s
        "rate_limited": stats["actions"].get("429", 0),
        "rate_limited_share": round(stats["actions"].get("429", 0) / max(1, stats["total"]), 3),
        "stage_runs": runs,
        **outcome(result, docs),
        "requests_paid_twice": paid_twice,
    }
    row["share_of_limit"] = round(row["sustained_per_s"] / row["rate_limit_per_s"], 3)
    print(json.dumps(row), flush=True)
    return row


def _generate_in_child(docs: list[Document], config: QAConfig, folder: Path, queue: Any) -> None:
    try:
        result, runs = generate(docs, config, folder)
    except TransientError:
        queue.put(None)
        return
    queue.put({"stage_runs": runs, **outcome(result, docs)})


def recovery(times: list[float], window: tuple[float, float], before_s: float = 5.0, span_s: float = 2.0) -> dict:
    """From the server's answer times: the rate in the `before_s` before the outage, and how long after its end
    the answers in a `span_s` window first reach 90 % of that rate again (None: not while the run lasted)."""
    times = sorted(times)
    start, end = window
    before = bisect.bisect_left(times, start) - bisect.bisect_left(times, start - before_s)
    rate = before / before_s
    back = None
    moment = end
    while times and moment + span_s <= times[-1]:
        if bisect.bisect_left(times, moment + span_s) - bisect.bisect_left(times, moment) >= 0.9 * rate * span_s:
            back = moment - end
            break
        moment += 0.25
    after = [t for t in times if end <= t < end + 30]
    return {
        "rate_before_per_s": round(rate, 2),
        "seconds_to_90_percent_after": None if back is None else round(back, 2),
        "answers_in_30_s_after": len(after),
    }


def measure_outage(name: str, docs: list[Document], config: QAConfig, server: Server, budget_s: float) -> dict:
    """A run through a server that answers every request with a 429 for a while (from its N-th request): in a
    child process, stopped after `budget_s` (a client that crawls after the storm would take hours)."""
    folder = Path(tempfile.mkdtemp(prefix="qa-bench-"))
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_generate_in_child, args=(docs, config, folder, queue))
    started = time.perf_counter()
    child.start()
    child.join(budget_s)
    seconds = time.perf_counter() - started
    finished = not child.is_alive()
    if not finished:
        child.terminate()
        child.join()
    outcome = queue.get(timeout=5) if finished else None
    stats = server.stats()
    answered = len(stats["completed"])
    row = {
        "run": name,
        "documents": len(docs),
        "concurrency": config.concurrency,
        "client_limit_per_min": config.requests_per_minute,
        "finished": finished and outcome is not None,
        "seconds": round(seconds, 2),
        "documents_answered": answered,
        "outage_429s": stats["actions"].get("outage", 0),
        "outage_s": round(stats["outage_window"][1] - stats["outage_window"][0], 2) if stats["outage_window"] else 0,
        **(recovery(stats["times"], stats["outage_window"]) if stats["outage_window"] else {}),
        **(outcome or {}),
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=2000, help="documents for the concurrent runs")
    parser.add_argument("--sequential-docs", type=int, default=40)
    parser.add_argument("--latency", type=float, default=0.3)
    parser.add_argument("--rpm", type=float, default=6000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--over-docs", type=int, default=160, help="documents for the over-the-limit runs")
    parser.add_argument("--over-client-rpm", type=float, default=500, help="the client's setting, over the limit")
    parser.add_argument("--over-server-rpm", type=float, default=120, help="what the server allows")
    parser.add_argument("--outage-docs", type=int, default=450, help="documents for the outage run")
    parser.add_argument("--outage", default="150:10", help="N:S: from the server's N-th request, S seconds of 429s")
    parser.add_argument("--outage-budget", type=float, default=240, help="seconds before the outage run is stopped")
    parser.add_argument("--only", choices=["outage"], default=None, help="run only this part")
    parser.add_argument("--output", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    os.environ.setdefault("LLM_PIPELINE_PROGRESS", "0")
    configure_logging("WARNING", structured=False)
    retry = RetryDelays(rate_limit_initial_s=0.2, rate_limit_max_s=5, timeout_step_s=0.5)

    def config(concurrency: int, rpm: float | None, server: Server) -> QAConfig:
        return QAConfig(
            backend="openai",
            base_url=server.base_url,
            model_name="fake-model",
            questions_per_doc=2,
            concurrency=concurrency,
            requests_per_minute=rpm,
            request_timeout_s=3.0,
            max_format_retries=3,
            retry=retry,
        )

    # A storm: every request a 429 for a while (Retry-After 1 s, no limit headers), from a server otherwise
    # unlimited; the client at its defaults (500/min, 16 in flight). How fast does it get back to its pace? Then
    # the same with the server degraded rather than down: one request in 4 answered during it.
    storms = []
    for name, passes in (("outage", 0), ("outage, 1 in 4 answered", 4)):
        server = Server(args.latency, None, 0.0, limit_headers=False, outage=args.outage, passes=passes)
        try:
            storm = config(16, 500, server)
            storms.append(measure_outage(name, corpus(args.outage_docs), storm, server, args.outage_budget))
        finally:
            server.stop()
    if args.only == "outage":
        if args.output:
            args.output.write_text(json.dumps({"rows": storms}, indent=2) + "\n")
        return
    rows = []
    server = Server(args.latency, args.rpm, 0.0)
    try:
        rows.append(measure("sequential", corpus(args.sequential_docs), config(1, None, server), server, args.rpm))
    finally:
        server.stop()
    for name, failure_rate in (("concurrent", 0.0), ("concurrent, 10 % failures", 0.1)):
        server = Server(args.latency, args.rpm, failure_rate)
        try:
            rows.append(measure(name, corpus(args.docs), config(args.concurrency, args.rpm, server), server, args.rpm))
        finally:
            server.stop()
    # The client set above what the server allows: the adaptive controller (qa/rate.py) must find the real limit,
    # from the x-ratelimit-* headers when the server sends them, from its 429s alone when it does not.
    for name, headers in (("over the limit, headers", True), ("over the limit, 429s only", False)):
        server = Server(args.latency, args.over_server_rpm, 0.0, limit_headers=headers)
        try:
            over = config(16, args.over_client_rpm, server)
            rows.append(measure(name, corpus(args.over_docs), over, server, args.over_server_rpm))
        finally:
            server.stop()
    rows += storms
    # Conservative: the lower of the end-to-end ratio and the sustained (server-side) ratio.
    speedup = min(
        rows[1]["requests_per_s"] / rows[0]["requests_per_s"], rows[1]["sustained_per_s"] / rows[0]["sustained_per_s"]
    )
    summary = {
        "speedup_concurrent_vs_sequential": round(speedup, 1),
        "targets": {
            "share_of_limit >= 0.9": rows[1]["share_of_limit"] >= 0.9,
            "speedup >= 20": speedup >= 20,
            "lost == 0 and duplicated == 0": all(
                r.get("lost_documents") == 0 and r.get("duplicated_pairs") == 0 for r in rows
            ),  # (an outage run stopped at its budget has neither: it fails this too)
            "over the limit, headers: 429s <= 5 %": rows[3]["rate_limited_share"] <= 0.05,
            "over the limit, headers: share_of_limit >= 0.95": rows[3]["share_of_limit"] >= 0.95,
            **{
                f"{storm['run']}: finished, back to 90 % of the pace within 30 s": storm["finished"]
                and (storm.get("seconds_to_90_percent_after") or 1e9) <= 30
                for storm in storms
            },
        },
    }
    print(json.dumps(summary), flush=True)
    if args.output:
        args.output.write_text(json.dumps({"rows": rows, **summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
