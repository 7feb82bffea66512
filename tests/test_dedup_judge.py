"""`dedup.semantic_action: judge`: semantic pairs confirmed by an LLM judge before anything is removed, against the
suite's OpenAI-compatible test server (a real HTTP server; the test scripts the judge's replies). A reworded copy
goes, a sibling that differs in the fact it states stays with the judge's reason, a judge that fails or is not
asked removes nothing, and a rerun pays for nothing twice."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llm_pipeline.config import DedupConfig, DedupJudgeConfig, ModelPrice, RetryDelays
from llm_pipeline.dedup import deduplicate
from llm_pipeline.dedup.judge import SemanticJudge
from llm_pipeline.records import Document
from tests.fakes.openai_server import FakeOpenAI

ROOT = Path(__file__).resolve().parents[1]

TEXTS = {
    "a": "The charging station on Main Street is broken and cannot be used today.",
    "b": "The charger at the Main Street station is broken and cannot be used today.",  # a reworded copy of a
    "c": "Return the n smallest elements of the dataset, sorted from the lowest value up.",
    "d": "Return the n largest elements of the dataset, sorted from the highest value down.",  # c's sibling
    "e": "Solar panels on the roof can power a home for most of the year.",
    "f": "Fast chargers deliver 150 kW to cars that support the CCS connector standard.",
}
OPPOSITES = (("smallest", "largest"), ("lowest", "highest"), ("up", "down"))
FAST = RetryDelays(rate_limit_initial_s=0.01, rate_limit_max_s=0.05, timeout_step_s=0.01)


def documents() -> list[Document]:
    return [Document(id=k, text=v) for k, v in TEXTS.items()]


def pair(messages: list[dict[str, Any]]) -> tuple[str, str]:
    user = next(m["content"] for m in messages if m["role"] == "user")
    return tuple(re.search(rf"<document_{i}>\n(.*?)\n</document_{i}>", user, re.DOTALL).group(1) for i in (1, 2))


def careful_judge(messages: list[dict[str, Any]]) -> str:
    """Distinct where one text says the opposite of the other (a word and its opposite), else duplicate."""
    first, second = (set(re.findall(r"\w+", t.lower())) for t in pair(messages))
    flipped = [(a, b) for a, b in OPPOSITES if (a in first and b in second) or (b in first and a in second)]
    if flipped:
        return json.dumps({"duplicate": False, "reason": f"one says {flipped[0][0]}, the other {flipped[0][1]}"})
    return json.dumps({"duplicate": True, "reason": "the same report, reworded"})


def config(server: FakeOpenAI, **judge: Any) -> DedupConfig:
    settings = DedupJudgeConfig(model="judge-model", base_url=server.base_url, retry=FAST, **judge)
    return DedupConfig(method="hybrid", semantic_threshold=0.8, semantic_action="judge", judge=settings)


def test_the_judge_removes_the_reworded_copy_and_keeps_the_sibling_with_its_reason(tmp_path: Path) -> None:
    from llm_pipeline.report import render_report
    from llm_pipeline.stages.load_and_deduplicate import cluster_examples

    with FakeOpenAI(judge=careful_judge) as server:
        settings = config(server)
        result = deduplicate(documents(), settings, SemanticJudge(settings.judge, tmp_path, "run-1"))
        asked = [pair(e["messages"]) for e in server.log]
    assert sorted(asked) == sorted([(TEXTS["a"], TEXTS["b"]), (TEXTS["c"], TEXTS["d"])])  # kept first, each once
    assert [d.id for d in result.kept] == ["a", "c", "d", "e", "f"]
    assert [(c.kept, list(c.to_kept)) for c in result.clusters] == [("a", ["b"])]
    assert [(c.kept, list(c.to_kept)) for c in result.review] == [("c", ["d"])]
    assert result.judgements["d"] == {
        "kept": "c",
        "verdict": "distinct",
        "reason": "one says smallest, the other largest",
    }
    counts = result.counts(len(TEXTS))
    assert counts["removed.semantic"] == 1 and counts["review.semantic"] == 1
    assert counts["judge.duplicate"] == 1 and counts["judge.distinct"] == 1 and counts["judge.sent_this_run"] == 2

    examples = cluster_examples(documents(), result.clusters + result.review, settings, result.judgements)
    rows = {r["removed"]: r for r in examples["semantic_removals"]}
    assert rows["b"]["removed_from_output"] is True and rows["b"]["judge"]["verdict"] == "duplicate"
    assert rows["d"]["removed_from_output"] is False and rows["d"]["judge"]["verdict"] == "distinct"
    assert [c["kept"] for c in examples["clusters"]] == ["a"]  # only what was removed is shown as a duplicate
    manifest = {"pipeline": "p", "run_id": "r", "config_hash": "h", "code_version": "v", "started_at": "t"}
    report = render_report(manifest, {}, examples, {})
    assert "pairs judged by the LLM judge (1 removed as duplicates, 1 kept)" in report
    assert "| `d` | `c` |" in report and "distinct: one says smallest, the other largest |" in report


def test_a_judge_that_cannot_answer_removes_nothing(tmp_path: Path) -> None:
    """Prose instead of the verdict (asked again, then failed), and a proxy's HTML page on every try (the
    request fails): both pairs stay, listed with why."""

    def rambling_judge(messages: list[dict[str, Any]]) -> str:
        return "These two look rather alike to me, I would say so."

    faults = {"smallest": ["html"] * 20}  # every request about the c/d pair gets a proxy's error page
    with FakeOpenAI(judge=rambling_judge, faults=faults) as server:
        settings = config(server, max_format_retries=1)
        result = deduplicate(documents(), settings, SemanticJudge(settings.judge, tmp_path, "run-1"))
        about_ab = sum(1 for e in server.log if pair(e["messages"])[0] == TEXTS["a"])
    assert [d.id for d in result.kept] == list(TEXTS) and result.clusters == []
    assert result.judgements["b"] == {
        "kept": "a",
        "verdict": "failed",
        "reason": "invalid verdict: no JSON object in the reply",
    }
    assert about_ab == 2  # asked, then asked again with the problem
    assert result.judgements["d"]["verdict"] == "not judged"
    assert {(c.kept, tuple(c.to_kept)) for c in result.review} == {("a", ("b",)), ("c", ("d",))}


def test_a_verdict_of_the_wrong_type_and_a_stream_cut_short_remove_nothing(tmp_path: Path) -> None:
    """`"duplicate": "yes"` (a string, not true/false) is asked again, then failed; a connection closed half-way
    through every reply about the other pair leaves it not judged. Both pairs stay."""

    def stringly_judge(messages: list[dict[str, Any]]) -> str:
        return json.dumps({"duplicate": "yes", "reason": "they match"})

    with FakeOpenAI(judge=stringly_judge, faults={"smallest": ["cut"] * 20}) as server:
        settings = config(server, max_format_retries=1)
        result = deduplicate(documents(), settings, SemanticJudge(settings.judge, tmp_path, "run-1"))
    assert [d.id for d in result.kept] == list(TEXTS) and result.clusters == []
    assert result.judgements["b"]["verdict"] == "failed"
    assert "duplicate must be true or false, got 'yes'" in result.judgements["b"]["reason"]
    assert result.judgements["d"]["verdict"] == "not judged"


def test_a_rerun_pays_for_nothing_twice_and_the_first_run_is_costed(tmp_path: Path) -> None:
    prices = {"judge-model": ModelPrice(input_per_million=1.0, output_per_million=2.0)}
    with FakeOpenAI(judge=careful_judge) as server:
        settings = config(server, prices=prices)
        first = deduplicate(documents(), settings, SemanticJudge(settings.judge, tmp_path, "run-1"))
        sent = server.stats()["total"]
        second = deduplicate(documents(), settings, SemanticJudge(settings.judge, tmp_path, "run-2"))
        assert server.stats()["total"] == sent == 2
    assert first.judge_summary["cost_usd_this_run"] > 0 and second.judge_summary["cost_usd_this_run"] == 0
    assert second.judge_summary["sent_this_run"] == 0
    assert [d.id for d in second.kept] == [d.id for d in first.kept] and second.judgements == first.judgements


def test_max_pairs_asks_the_closest_pairs_first_and_keeps_the_rest(tmp_path: Path) -> None:
    with FakeOpenAI(judge=careful_judge) as server:
        settings = config(server, max_pairs=1)
        result = deduplicate(documents(), settings, SemanticJudge(settings.judge, tmp_path, "run-1"))
        asked = [pair(e["messages"]) for e in server.log]
    assert asked == [(TEXTS["a"], TEXTS["b"])]  # cosine 0.91 before 0.83
    assert [d.id for d in result.kept] == ["a", "c", "d", "e", "f"]
    assert result.judgements["d"] == {"kept": "c", "verdict": "not judged", "reason": "past dedup.judge.max_pairs"}
    assert result.judge_summary["rounds"] == 1  # with nothing left to ask, no round after the budget


def test_a_judge_config_that_cannot_work_fails_before_any_work_naming_the_field() -> None:
    from llm_pipeline.config import load_config
    from llm_pipeline.errors import ConfigError

    with pytest.raises(ValueError, match=r"semantic_action: judge needs judge\.model"):
        DedupConfig(semantic_action="judge")
    capped = {"semantic_action": "judge", "judge": {"model": "m", "base_url": "http://x/v1", "max_cost_usd": 1.0}}
    with pytest.raises(ConfigError, match=r"dedup\.judge\.max_cost_usd: no price for 'm'"):
        load_config(ROOT / "configs" / "test.yaml", {"dedup": capped})  # a cap that could never count


def test_the_stage_counts_the_judge_and_a_retry_keeps_its_cost(tmp_path: Path) -> None:
    """The load stage as a flow runs it, twice under one run id (a Prefect retry of the stage): the second attempt
    asks nothing again and still reports what the run paid; cluster_examples.json carries the verdicts."""
    from llm_pipeline.config import load_config
    from llm_pipeline.stages import run_stage, stage_named

    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in TEXTS.items()))
    with FakeOpenAI(judge=careful_judge) as server:
        overrides = {
            "output_path": str(tmp_path / "outputs"),
            "data": {"path": str(data)},
            "dedup": {
                "semantic_threshold": 0.8,
                "semantic_action": "judge",
                "judge": {"model": "judge-model", "base_url": server.base_url},
            },
            "qa": {"prices": {"judge-model": {"input_per_million": 1.0, "output_per_million": 2.0}}},
        }
        config = load_config(ROOT / "configs" / "test.yaml", overrides)
        run_dir = tmp_path / "outputs" / "run-1"
        run_dir.mkdir(parents=True)
        first = run_stage(stage_named("load-and-deduplicate-data"), config, run_dir, "run-1").counts
        second = run_stage(stage_named("load-and-deduplicate-data"), config, run_dir, "run-1").counts
        assert server.stats()["total"] == 2
    assert first["dedup.judge.duplicate"] == 1 and first["dedup.judge.distinct"] == 1
    assert first["dedup.removed.semantic"] == 1 and first["dedup.review.semantic"] == 1
    assert second["dedup.judge.cost_usd_this_run"] == first["dedup.judge.cost_usd_this_run"] > 0
    assert (tmp_path / "outputs" / ".dedup-judge-cache" / "journal.jsonl").exists()
    examples = json.loads((run_dir / "cluster_examples.json").read_text())
    verdicts = {r["removed"]: r["judge"]["verdict"] for r in examples["semantic_removals"]}
    assert verdicts == {"b": "duplicate", "d": "distinct"}
    assert [json.loads(line)["id"] for line in (run_dir / "documents.jsonl").open()] == ["a", "c", "d", "e", "f"]


def scripted(verdicts: dict[tuple[str, str], bool]) -> Callable[[list[dict[str, Any]]], str]:
    """A judge whose verdict for each (first, second) pair of texts is given."""

    def judge(messages: list[dict[str, Any]]) -> str:
        return json.dumps({"duplicate": verdicts[pair(messages)], "reason": "scripted"})

    return judge


def test_a_document_the_judge_keeps_is_asked_about_its_next_closest_and_offered_as_kept(tmp_path: Path) -> None:
    """The judge inside the keep rule, not after it. (1) x is closest to k1 (a sibling: distinct) and a copy of k2:
    it goes as k2's copy. (2) b is a's sibling (distinct) and c a copy of b: cosine alone removes b as a's copy and
    keeps c (its only neighbour was removed); with the judge, b stays and c goes as b's copy."""
    docs = [Document(id=i, text=f"text of {i}") for i in ("k1", "k2", "x", "a", "b", "c")]
    text = {d.id: d.text for d in docs}
    verdicts = {
        (text["k1"], text["x"]): False,
        (text["k2"], text["x"]): True,
        (text["a"], text["b"]): False,
        (text["b"], text["c"]): True,
    }
    pairs = [(0, 2, 0.95), (1, 2, 0.9), (3, 4, 0.95), (4, 5, 0.93)]
    with FakeOpenAI(judge=scripted(verdicts)) as server:
        settings = config(server)
        judge = SemanticJudge(settings.judge, tmp_path, "run-1")
        clusters = judge.clusters(docs, pairs, "first")
        asked = [pair(e["messages"]) for e in server.log]
    assert sorted((c.kept, m) for c in clusters for m in c.to_kept) == [("b", "c"), ("k2", "x")]
    assert sorted(asked) == sorted(verdicts)  # each pair once, no other
    assert judge.last.summary["rounds"] == 2 and judge.last.summary["asked"] == 4
    assert judge.last.verdicts["x"] == {"kept": "k2", "verdict": "duplicate", "reason": "scripted"}
    assert judge.last.verdicts["b"] == {"kept": "a", "verdict": "distinct", "reason": "scripted"}
    assert [(c.kept, list(c.to_kept)) for c in judge.last.kept] == [("a", ["b"])]  # x went, so only b is listed


def test_a_semantic_method_that_finds_nothing_asks_nothing(tmp_path: Path) -> None:
    with FakeOpenAI(judge=careful_judge) as server:
        settings = config(server)
        result = deduplicate(documents()[:1], settings, SemanticJudge(settings.judge, tmp_path, "run-1"))
        assert server.stats()["total"] == 0
    assert [d.id for d in result.kept] == ["a"] and result.judgements == {}
    assert result.counts(1)["judge.pairs"] == 0 and result.counts(1)["judge.asked"] == 0


def test_a_local_judge_model_is_loaded_once_for_all_the_rounds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """judge.backend: local, a tiny Llama built here and loaded by the local QA backend's code. Untrained, it never
    replies the JSON asked for, so x is kept after its closest pair and asked about against its next closest: two
    rounds, one model load (counted on the real class), freed after them; a rerun finds every verdict journaled
    and loads nothing."""
    import llm_pipeline.qa.local_backend as local_backend
    from tests.tiny_models import save, tiny_llama, train_tokenizer

    docs = [Document(id=i, text=f"text of {i}") for i in ("k1", "k2", "x")]
    tokenizer = train_tokenizer([d.text for d in docs] + ['{"duplicate": true, "reason": "the same"}'])
    save(tiny_llama(tokenizer), tokenizer, tmp_path / "judge")
    events: list[str] = []

    class Counted(local_backend.LocalBackend):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            events.append("load")
            super().__init__(*args, **kwargs)

        async def aclose(self) -> None:
            events.append("free")
            await super().aclose()

    monkeypatch.setattr(local_backend, "LocalBackend", Counted)
    settings = DedupJudgeConfig(backend="local", model=str(tmp_path / "judge"), device="cpu", max_tokens=16, retry=FAST)
    pairs = [(0, 2, 0.95), (1, 2, 0.9)]
    judge = SemanticJudge(settings, tmp_path / "cache", "run-1")
    assert judge.clusters(docs, pairs, "first") == []  # nothing confirmed: nothing removed
    assert judge.last.summary["rounds"] == 2 and judge.last.summary["asked"] == 2
    assert judge.last.verdicts["x"]["verdict"] == "failed"
    assert events == ["load", "free"]
    again = SemanticJudge(settings, tmp_path / "cache", "run-2")
    assert again.clusters(docs, pairs, "first") == []
    assert events == ["load", "free"]
