"""Any reply a server, a proxy or a gateway can send: the openai backend against the suite's OpenAI-compatible
server answering in every shape a strict client chokes on. The stage finishes, nothing is lost, each shape is
classified as the policy table says (the ledger records its cause), and what the run sent reconciles with the
server's own counts: requests exactly, billed tokens exactly, across a retry of the stage."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from llm_pipeline.config import QAConfig
from llm_pipeline.errors import TransientError
from llm_pipeline.qa import QAResult, generate_qa
from llm_pipeline.records import Document
from tests.fakes.openai_server import FakeOpenAI, document_key
from tests.qa_support import FAST_RETRIES, qa_config, sample


@pytest.fixture(scope="module")
def documents() -> list[Document]:
    return sample(40)


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(hang_s=3.0) as server:
        yield server


def config(server: FakeOpenAI, **overrides: object) -> QAConfig:
    return qa_config(server, **{"concurrency": 4, **overrides})


def ledger(folder: Path, run: str) -> list[dict]:
    return [json.loads(line) for line in (folder / "ledger" / f"{run}.jsonl").read_text().splitlines()]


def accounted(result: QAResult, docs: list[Document]) -> None:
    ids = [p.id for p in result.pairs]
    assert len(ids) == len(set(ids))
    assert {p.document_id for p in result.pairs} | {r["document_id"] for r in result.rejects} == {d.id for d in docs}


@pytest.mark.parametrize(
    ("shape", "requests", "cause"),
    [
        ("html", 2, "malformed_reply"),  # a proxy's error page with status 200: retried, not a crash
        ("text", 2, "malformed_reply"),
        ("bytes", 2, "malformed_reply"),
        ("empty", 2, "malformed_reply"),
        ("sse", 2, "malformed_reply"),  # an event stream that stops without [DONE]
        ("huge", 2, "malformed_reply"),  # 9 MiB: not read past 8
        ("choices_null", 2, "malformed_reply"),
        ("cut", 2, "connection_dropped"),  # closed half-way through the body
        ("drop", 2, "connection_dropped"),  # closed before any reply
        ("timeout", 2, "read_timeout"),
        ("500", 2, "server_error"),
        ("429:0.01", 2, "rate_limited"),
        ("wrongtype", 1, None),  # the right JSON as text/plain: used
        ("content_list", 1, None),  # content as a list of text parts: used
        ("no_usage", 1, None),  # used, its tokens estimated
        ("negative_usage", 1, None),  # nonsense usage: estimated instead
        ("message_null", 2, None),  # an empty answer: sent back with the whole conversation, then used
    ],
)
def test_every_reply_shape_is_classified_and_the_stage_finishes(
    fake: FakeOpenAI, documents: list[Document], tmp_path: Path, shape: str, requests: int, cause: str | None
) -> None:
    target, others = documents[0], documents[1:5]
    fake.faults = {target.text[:60]: [shape]}
    settings = config(fake, requests_per_minute=600)  # limited as by default: see test_policy_rows_with_tries_counted
    result = generate_qa([target, *others], settings, checkpoint_dir=tmp_path, run_id="r1")
    accounted(result, [target, *others])
    assert any(p.document_id == target.id for p in result.pairs), "the shape's document lost its pairs"
    assert fake.requests[document_key(target.text)] == requests
    outcomes = [line["outcome"] for line in ledger(tmp_path, "r1")]
    assert outcomes.count("ok") == len(others) + requests - (1 if cause else 0)
    if cause:
        assert outcomes.count(cause) == 1, outcomes
        assert result.outcomes[cause] == 1
    if shape in ("no_usage", "negative_usage"):
        assert result.usage.estimated
    if shape == "message_null":  # the repair carries the document: a stateless server needs all of it
        repair = fake.log[-1]["messages"]
        assert len(repair) == 4 and target.text[:60] in repair[1]["content"]


def test_a_random_storm_of_bad_replies_loses_nothing(
    fake: FakeOpenAI, documents: list[Document], tmp_path: Path
) -> None:
    fake.failure_rate = 0.2  # every shape but the 9 MiB one, drawn at random
    try:
        result = generate_qa(documents, config(fake), checkpoint_dir=tmp_path, run_id="storm")
    except TransientError:  # a request unlucky three times: the stage's retry (same run) sends only those
        result = generate_qa(documents, config(fake), checkpoint_dir=tmp_path, run_id="storm")
    accounted(result, documents)
    assert fake.stats()["posts"] == result.requests["http_requests"]


def test_what_the_run_sent_reconciles_with_the_server_across_a_stage_retry(
    fake: FakeOpenAI, documents: list[Document], tmp_path: Path
) -> None:
    """The first attempt of the stage fails (one document's request keeps failing), Prefect retries it in the same
    run; the second attempt's report counts both: every HTTP request the server received, every token it billed."""
    docs = documents[:20]
    marked = [d for d in docs if sum(d.text[:60] in other.text for other in docs) == 1]  # a templated corpus
    fake.faults = {
        marked[0].text[:60]: ["503", "503", "503"],  # fails the first attempt, then answers
        marked[1].text[:60]: ["429:0.01", "choices_null"],  # billed, yet unusable: its tokens count
        marked[2].text[:60]: ["html", "badjson"],  # sent back once with the problem
        marked[3].text[:60]: ["drop"],
    }
    with pytest.raises(TransientError):
        generate_qa(docs, config(fake), checkpoint_dir=tmp_path, run_id="run-1")
    result = generate_qa(docs, config(fake), checkpoint_dir=tmp_path, run_id="run-1")
    accounted(result, docs)
    server = fake.stats()
    assert result.requests["http_requests"] == server["posts"]  # exactly
    sent = result.accounting()["tokens_sent_this_run"]
    assert (sent["prompt_tokens"], sent["completion_tokens"]) == (
        server["billed"]["prompt_tokens"],
        server["billed"]["completion_tokens"],
    )
    assert result.requests["sent"] == len(docs) and result.requests["reused"] == 0  # all paid by this run
    assert result.cost_sent_usd == round(
        (server["billed"]["prompt_tokens"] * 0.15 + server["billed"]["completion_tokens"] * 0.60) / 1e6, 6
    )
    assert result.outcomes == {"ok": 21, "server_error": 3, "rate_limited": 1, "malformed_reply": 2,
                               "connection_dropped": 1}  # fmt: skip
    # a new run reuses everything and sends nothing: its own ledger is empty
    again = generate_qa(docs, config(fake), checkpoint_dir=tmp_path, run_id="run-2")
    assert again.requests["sent"] == 0 and again.requests["reused"] == len(docs)
    assert fake.stats()["posts"] == server["posts"]


@pytest.mark.parametrize("advertised", [True, False])
def test_a_client_set_over_the_servers_limit_slows_as_a_whole(
    documents: list[Document], tmp_path: Path, advertised: bool
) -> None:
    """qa.requests_per_minute at 5x what the server allows: the one controller for all requests in flight finds
    the limit, from the x-ratelimit-* headers when the server sends them, from its 429s when it does not."""
    docs = documents[:36]
    with FakeOpenAI(latency_s=0.05, rate_limit_rpm=600, advertise_limits=advertised) as server:
        result = generate_qa(docs, config(server, requests_per_minute=3000, concurrency=8), checkpoint_dir=tmp_path)
        accounted(result, docs)
        limited = server.stats()["actions"].get("429", 0)
    if advertised:
        assert limited <= 0.05 * len(docs)  # the first reply's headers said the limit before any burst
    else:
        assert 0 < limited <= 0.35 * len(docs)  # each burst of 429s cut the rate once, not once per request
    assert result.outcomes.get("rate_limited", 0) == limited


PRICE = {"input_per_million": 0.15, "output_per_million": 0.60}


def test_a_spending_cap_is_never_crossed_and_a_higher_cap_continues(documents: list[Document], tmp_path: Path) -> None:
    docs = documents[:30]
    with FakeOpenAI(latency_s=0.02) as server:
        capped = config(server, max_cost_usd=0.002, max_tokens=400)
        result = generate_qa(docs, capped, checkpoint_dir=tmp_path, run_id="cap-1")
        billed = server.stats()["billed"]
        spent = (
            billed["prompt_tokens"] * PRICE["input_per_million"]
            + billed["completion_tokens"] * PRICE["output_per_million"]
        ) / 1e6
        assert 0 < spent <= 0.002  # the server's own bill stays under the cap
        assert result.status.startswith("partial: budget reached") and "qa.max_cost_usd" in result.status
        assert 0 < result.requests["refused_budget"] < len(docs)
        assert result.budget["requests_not_sent"] == result.requests["refused_budget"]
        assert (
            server.stats()["posts"] == result.requests["http_requests"] == len(docs) - result.requests["refused_budget"]
        )
        # a new run with a higher cap sends only what the first did not
        more = generate_qa(
            docs, config(server, max_cost_usd=1.0, max_tokens=400), checkpoint_dir=tmp_path, run_id="cap-2"
        )
        assert more.status == "complete" and more.requests["sent"] == result.requests["refused_budget"]
        accounted(more, docs)
        assert server.stats()["posts"] == len(docs)  # nothing paid twice


def test_a_cap_below_the_first_request_sends_nothing_and_says_so(documents: list[Document], tmp_path: Path) -> None:
    with FakeOpenAI() as server:
        result = generate_qa(documents[:5], config(server, max_total_tokens=50), checkpoint_dir=tmp_path, run_id="r")
        assert server.stats()["posts"] == 0
    assert result.requests["refused_budget"] == 5 and "qa.max_total_tokens 50 reached" in result.status
    assert not result.pairs


def test_a_cap_needs_a_price() -> None:
    with pytest.raises(ValueError, match="max_cost_usd needs the price of model gpt-4o-mini"):
        QAConfig(backend="openai", base_url="http://x", max_cost_usd=1.0)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_server_nobody_here_scripted_never_crashes_the_stage(
    documents: list[Document], tmp_path: Path, seed: int
) -> None:
    """tests/fakes/hostile_server.py draws every reply at random (statuses, content types, JSON trees in place of
    any field, cut bodies, bytes, nonsense Retry-After). The stage only ever finishes or fails transiently for
    Prefect's retry (the same run id); within a few such retries every document is accounted for."""
    from tests.fakes.hostile_server import HostileServer

    docs = documents[:20]
    with HostileServer(seed) as server:
        settings = config(server, retry=FAST_RETRIES.model_copy(update={"rate_limit_max_s": 0.1}))  # type: ignore[arg-type]
        for _ in range(6):
            try:
                result = generate_qa(docs, settings, checkpoint_dir=tmp_path, run_id="hostile")
                break
            except TransientError:
                continue  # what Prefect's stage retry does
        else:
            pytest.fail("still failing transiently after 6 stage attempts")
    accounted(result, docs)
    assert (
        result.requests["http_requests"] >= len(docs)
        and sum(result.outcomes.values()) == result.requests["http_requests"]
    )


def test_the_rate_controller_pauses_on_an_empty_bucket_only_when_it_is_faster_than_the_limit() -> None:
    """Paced at the advertised limit, each spacing refills the token the next request takes: "0 remaining" on
    every reply is the bucket working as meant, and pausing on it too cost 30 % of a 120/min limit (measured).
    A server that says nothing of its limit but reports an empty bucket is obeyed."""
    from llm_pipeline.qa.rate import RateController

    paced = RateController(requests_per_minute=500)
    paced.observe({"x-ratelimit-limit-requests": "120", "x-ratelimit-remaining-requests": "0",
                   "x-ratelimit-reset-requests": "1s"})  # fmt: skip
    assert paced.rate == pytest.approx(2.0) and paced._paused_until == 0.0

    unknown = RateController(requests_per_minute=500)
    unknown.observe({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1s"})
    assert unknown._paused_until > 0.0
