"""The LLM judge against the suite's OpenAI-compatible test server, whose judge replies each test scripts: a judge
biased to the first answer, one with real preferences, malformed replies; and a rerun that pays nothing twice."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from llm_pipeline.config import EvaluationConfig, JudgeConfig, ModelPrice
from llm_pipeline.evaluation.judge import judge
from llm_pipeline.evaluation.scoring import score_predictions
from llm_pipeline.records import Prediction
from tests.fakes.openai_server import FakeOpenAI
from tests.test_finetune import ITEMS as FINETUNE_ITEMS

ITEMS = FINETUNE_ITEMS  # six facts, each with its context and reference answer
GOOD = [i.answer for i in ITEMS]  # the reference, word for word
BAD = ["I do not know"] * len(ITEMS)  # a model that has not learned the facts
PAIR = [("bad", "good")]  # judged as "good vs bad"


def predictions() -> list[Prediction]:
    config = EvaluationConfig(metrics=["exact_match", "rouge"])
    out = []
    for name, answers in (("good", GOOD), ("bad", BAD)):
        for item, answer, scores in zip(ITEMS, answers, score_predictions(ITEMS, answers, config), strict=True):
            out.append(
                Prediction(item_id=item.id, candidate=name, prediction=answer, reference=item.answer, scores=scores)
            )
    return out


def block(messages: list[dict[str, Any]], tag: str) -> str:
    user = next(m["content"] for m in messages if m["role"] == "user")
    found = re.search(rf"<{tag}>\n(.*?)\n</{tag}>", user, re.DOTALL)
    return found.group(1).strip() if found else ""


def reference(messages: list[dict[str, Any]]) -> str:
    user = next(m["content"] for m in messages if m["role"] == "user")
    return re.search(r"Reference answer: (.*)", user).group(1).strip()


def fair_judge(messages: list[dict[str, Any]]) -> str:
    """Prefers the answer that says what the reference says, whatever its position."""
    ref = reference(messages)
    if block(messages, "answer_1") or block(messages, "answer_2"):
        first, second = block(messages, "answer_1") == ref, block(messages, "answer_2") == ref
        winner = "tie" if first == second else ("1" if first else "2")
        return json.dumps({"winner": winner, "reason": "the one matching the reference"})
    right = block(messages, "answer") == ref
    score = 5 if right else 1
    return json.dumps({"correct": score, "grounded": score, "complete": score, "reason": "compared"})


def first_biased_judge(messages: list[dict[str, Any]]) -> str:
    """Whatever is shown first wins: pure position bias."""
    if block(messages, "answer_1"):
        return json.dumps({"winner": "1", "reason": "the first one reads better"})
    return json.dumps({"correct": 3, "grounded": 3, "complete": 3, "reason": "fine"})


def settings(server: FakeOpenAI, **extra: Any) -> JudgeConfig:
    return JudgeConfig(enabled=True, model="judge-model", base_url=server.base_url, **extra)


def test_a_judge_biased_to_the_first_answer_gives_ties_and_shows_its_bias_not_a_false_win(tmp_path: Path) -> None:
    with FakeOpenAI(judge=first_biased_judge) as server:
        result = judge(ITEMS, predictions(), settings(server, pointwise=False), PAIR, tmp_path, "run-1")
    head = result.summary["pairwise"]["good vs bad"]
    assert head["items"] == len(ITEMS)
    assert head["win"]["rate"] == 0 and head["loss"]["rate"] == 0 and head["tie"]["rate"] == 1
    assert head["order_disagreement"]["rate"] == 1  # every item: the two orders named different answers


def test_a_judge_with_real_preferences_gives_the_win_and_agrees_with_exact_match(tmp_path: Path) -> None:
    with FakeOpenAI(judge=fair_judge) as server:
        result = judge(ITEMS, predictions(), settings(server), PAIR, tmp_path, "run-1")
        sent = server.stats()["total"]
    head = result.summary["pairwise"]["good vs bad"]
    assert head["win"]["rate"] == 1 and head["order_disagreement"]["rate"] == 0
    assert head["win"]["low"] == 1  # every resample: no doubt about it
    pointwise = result.summary["pointwise"]
    assert pointwise["good"]["score"]["mean"] == 5 and pointwise["bad"]["score"]["mean"] == 1
    assert result.summary["agreement"]["spearman_exact_match"] > 0.9
    assert sent == len(ITEMS) * 2 + len(ITEMS) * 2  # pointwise x 2 candidates, pairwise x 2 orders
    rows = [r for r in result.rows if r["kind"] == "pairwise"]
    assert len(rows) == 2 * len(ITEMS) and all(r["status"] == "ok" for r in rows)


def test_unparsable_verdicts_are_asked_again_then_counted_as_failed_never_scored(tmp_path: Path) -> None:
    asked: dict[str, int] = {}

    def sloppy_judge(messages: list[dict[str, Any]]) -> str:
        context = block(messages, "document")
        asked[context] = asked.get(context, 0) + 1
        if "Volt" in context:
            return "I think the answer is fine, 4 out of 5."  # never JSON
        if "Arc" in context and len(messages) == 2:
            return '{"correct": 9, "grounded": 5, "complete": 5}'  # out of range: fixed when asked again
        return fair_judge(messages)

    config = settings(server := FakeOpenAI(judge=sloppy_judge), candidates=["good"], max_format_retries=2)
    with server:
        result = judge(ITEMS, predictions(), config, [], tmp_path, "run-1")
    volt = next(k for k in asked if "Volt" in k)
    arc = next(k for k in asked if "Arc" in k)
    assert asked[volt] == 3 and asked[arc] == 2  # 1 + max_format_retries, and one re-ask
    assert result.summary["failed"] == {"pointwise": 1}
    assert result.summary["pointwise"]["good"]["judged"] == len(ITEMS) - 1  # the failed one is not a score
    [failed] = [r for r in result.rows if r["status"] == "failed"]
    assert failed["item_id"] == "b0" and "no JSON object" in failed["reason"]
    assert failed["raw"] == "I think the answer is fine, 4 out of 5."  # what to read before trusting the judge
    re_asked = next(e for e in server.log if "Arc" in json.dumps(e["messages"]) and len(e["messages"]) > 2)
    assert "correct must be an integer from 1 to 5" in re_asked["messages"][-1]["content"]


def test_a_judge_that_scores_nothing_is_said_plainly_in_the_report(tmp_path: Path) -> None:
    """Found with llama-cpp-python's server and a 135M model as the judge: every verdict failed, and the report
    showed an empty table and "Spearman over 0 judged answers: exact match None"."""
    from llm_pipeline.report import judge_lines

    config = settings(server := FakeOpenAI(judge=lambda _: "The answer is fine."), candidates=["good"])
    with server:
        result = judge(ITEMS, predictions(), config, [], tmp_path, "run-1")
    summary = result.summary | {"model": "judge-model", "prompt_version": "judge-v1"}
    text = "\n".join(judge_lines(summary))
    count = len(ITEMS)
    assert f"**The judge scored no answer**: {count} requests, failed (never scored): pointwise {count}." in text
    assert "| candidate |" not in text and "None" not in text
    assert all(r["raw"] == "The answer is fine." for r in result.rows)


def test_a_rerun_pays_nothing_twice_and_the_first_run_is_costed(tmp_path: Path) -> None:
    price = {"judge-model": ModelPrice(input_per_million=1.0, output_per_million=2.0)}
    with FakeOpenAI(judge=fair_judge) as server:
        first = judge(ITEMS, predictions(), settings(server, prices=price), PAIR, tmp_path, "run-1")
        sent = server.stats()["total"]
        second = judge(ITEMS, predictions(), settings(server, prices=price), PAIR, tmp_path, "run-2")
        assert server.stats()["total"] == sent  # the journal had every verdict
    assert first.summary["sent_this_run"] == sent and second.summary["sent_this_run"] == 0
    assert first.summary["cost_usd_this_run"] > 0 and second.summary["cost_usd_this_run"] == 0
    assert second.summary["pointwise"] == first.summary["pointwise"]
    assert second.summary["pairwise"] == first.summary["pairwise"]


def test_a_local_model_judges_through_the_same_path(tmp_path: Path) -> None:
    """backend: local: a tiny Llama built here, trained to give one verdict for one answer and prose for the other,
    loaded by the local QA backend's code; the prose is asked again, then counted failed."""
    from llm_pipeline.evaluation.judge import build_asks
    from llm_pipeline.models.loading import render_prompt
    from tests.tiny_models import memorize, save, tiny_llama, train_tokenizer

    items = ITEMS[:1]
    config = JudgeConfig(enabled=True, backend="local", model=str(tmp_path / "judge"), device="cpu", max_tokens=40)
    good = [p for p in predictions() if p.item_id == items[0].id]
    asks = build_asks(items, good, config, [])
    verdict = json.dumps({"correct": 5, "grounded": 4, "complete": 5, "reason": "same"})
    texts = [m["content"] for a in asks for m in a.job.messages] + [verdict, "fine I guess"]
    tokenizer = train_tokenizer(texts)
    model = tiny_llama(tokenizer)
    targets = {"good": verdict, "bad": "fine I guess"}
    examples = [(render_prompt(tokenizer, a.job.messages), targets[a.candidates[0]]) for a in asks]
    memorize(model, tokenizer, examples)
    save(model, tokenizer, tmp_path / "judge")

    result = judge(items, good, config, [], tmp_path / "cache", "run-1")
    assert result.summary["pointwise"]["good"]["correct"]["mean"] == 5
    assert result.summary["pointwise"]["good"]["grounded"]["mean"] == 4
    assert result.summary["failed"] == {"pointwise": 1} and "bad" not in result.summary["pointwise"]
    assert result.summary["sent_this_run"] == 0  # a local model is not billed: nothing in the ledger


def test_edited_judge_prompts_are_a_new_version_and_reuse_no_verdict(tmp_path: Path) -> None:
    import shutil

    from llm_pipeline.evaluation.judge import PROMPT_DIR

    edited = tmp_path / "prompts"
    shutil.copytree(PROMPT_DIR, edited)
    system = edited / "pointwise_system.j2"
    system.write_text(system.read_text() + "\nBe especially strict about units.\n")
    with FakeOpenAI(judge=fair_judge) as server:
        packaged = judge(ITEMS, predictions(), settings(server, candidates=["good"]), [], tmp_path / "c", "run-1")
        custom = settings(server, candidates=["good"], prompt_dir=edited)
        again = judge(ITEMS, predictions(), custom, [], tmp_path / "c", "run-2")
        seen = [e["messages"][0]["content"] for e in server.log]
    assert packaged.summary["prompt_version"] == "judge-v1" and again.summary["prompt_version"].startswith("custom-")
    assert again.summary["sent_this_run"] == len(ITEMS)  # every verdict asked again under the new prompt
    assert sum("especially strict" in text for text in seen) == len(ITEMS)


def test_the_judges_cost_cap_is_never_crossed_and_a_run_with_a_higher_cap_sends_the_rest(tmp_path: Path) -> None:
    price = {"judge-model": ModelPrice(input_per_million=1000.0, output_per_million=1000.0)}
    with FakeOpenAI(judge=fair_judge) as server:
        capped = settings(server, prices=price, max_cost_usd=2.0, concurrency=1, candidates=["good"])
        first = judge(ITEMS, predictions(), capped, [], tmp_path, "run-1")
        sent = server.stats()["total"]
        assert 0 < sent < len(ITEMS) and first.summary["refused_by_cap"] == len(ITEMS) - sent
        assert first.summary["cost_usd_this_run"] <= 2.0
        assert first.summary["pointwise"]["good"]["judged"] == sent  # the refused are neither scored nor failed
        more = settings(server, prices=price, max_cost_usd=100.0, candidates=["good"])
        second = judge(ITEMS, predictions(), more, [], tmp_path, "run-2")
        assert server.stats()["total"] == len(ITEMS) and second.summary["sent_this_run"] == len(ITEMS) - sent
    assert second.summary["pointwise"]["good"]["judged"] == len(ITEMS)
