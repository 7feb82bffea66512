"""Generative candidates: tiny Llama models built here (one trained to answer, one untrained, one missing), an
OpenAI-compatible endpoint (the test server), all compared in one evaluation; a failed candidate is reported
without sinking the others; the batched generator backs off on out-of-memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_pipeline.config import CandidateConfig, EvaluationConfig
from llm_pipeline.evaluation import evaluate_candidates
from llm_pipeline.evaluation.candidates import answer_messages
from llm_pipeline.models.generation import BatchedGenerator, GenerationSettings
from llm_pipeline.models.loading import load_causal_lm, render_prompt
from llm_pipeline.records import BenchmarkItem
from tests.fakes.openai_server import FakeOpenAI
from tests.tiny_models import memorize, out_of_memory_above, save, tiny_llama, train_tokenizer

ITEMS = [
    BenchmarkItem(
        id="b1",
        question="How much does DC fast charging cost in Denver?",
        answer="$0.45 per kWh",
        context="DC fast charging costs $0.45 per kWh in Denver. Level 2 is cheaper.",
        category="pricing",
        difficulty="easy",
        source_document_id="d1",
    ),
    BenchmarkItem(
        id="b2",
        question="What do level 2 chargers deliver?",
        answer="between 7 and 11 kW",
        context="Level 2 chargers deliver between 7 and 11 kW. They need a 240-volt circuit.",
        category="technical",
        difficulty="medium",
        source_document_id="d2",
    ),
]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    prompts_plain = [answer_messages(i.question, i.context) for i in ITEMS]
    texts = [m["content"] for ms in prompts_plain for m in ms] + [i.answer for i in ITEMS]
    tokenizer = train_tokenizer(texts)
    trained = tiny_llama(tokenizer)
    examples = [(render_prompt(tokenizer, answer_messages(i.question, i.context)), i.answer) for i in ITEMS]
    memorize(trained, tokenizer, examples)
    return {
        "trained": save(trained, tokenizer, tmp_path_factory.mktemp("answering-llama")),
        "random": save(tiny_llama(tokenizer, seed=1), tokenizer, tmp_path_factory.mktemp("random-llama")),
    }


def test_models_and_endpoint_compared_and_a_failed_candidate_reported(models: dict[str, Path], tmp_path: Path) -> None:
    with FakeOpenAI() as server:
        config = EvaluationConfig(
            metrics=["exact_match", "rouge", "bleu"],
            domain_metrics=["numeric_accuracy"],
            candidates=[
                CandidateConfig(name="tiny-trained", kind="hf", model=str(models["trained"]), max_new_tokens=16),
                CandidateConfig(name="tiny-random", kind="hf", model=str(models["random"]), max_new_tokens=8),
                CandidateConfig(name="missing", kind="hf", model=str(tmp_path / "no-such-model")),
                CandidateConfig(name="endpoint", kind="endpoint", model="fake-model", base_url=server.base_url),
                CandidateConfig(name="lexical", kind="lexical"),
            ],
        )
        result = evaluate_candidates(ITEMS, config)
        assert sum(server.requests.values()) == len(ITEMS)
    summary = result.summary
    assert summary["tiny-trained"]["overall"]["exact_match"]["mean"] == 1.0
    assert summary["tiny-random"]["overall"]["exact_match"]["mean"] == 0.0
    assert "no-such-model" in summary["missing"]["error"]  # reported, and the others still scored
    assert summary["endpoint"]["overall"]["rougeL"]["mean"] > 0.3  # it answers with the context's first sentence
    assert set(summary["lexical"]["overall"]) >= {"exact_match", "rougeL", "bleu"}
    generation = summary["tiny-trained"]["generation"]
    assert generation["decoding"] == "greedy" and generation["seed"] == 13 and generation["new_tokens"] > 0
    assert {p.candidate for p in result.predictions} == {"tiny-trained", "tiny-random", "endpoint", "lexical"}
    assert result.counts()["candidates_failed"] == 1


def test_an_endpoint_with_a_small_context_is_asked_for_what_fits(tmp_path: Path) -> None:
    """An endpoint candidate asks through QA's client: a model served with a context smaller than the prompt plus
    `max_new_tokens` refuses the first request, and every answer that fits still comes, as from the same model
    without the limit (before, the candidate failed on its first item). An item whose context alone is longer than
    the model's is answered empty and counted with the server's reason; the candidate is scored, not lost."""
    from llm_pipeline.report import candidate_notes

    long = ITEMS[1].model_copy(
        update={"id": "b3", "context": "Level 2 chargers deliver between 7 and 11 kW. " + "They need a circuit. " * 30}
    )
    items = [*ITEMS, long]
    answers, summaries = {}, {}
    for name, context in (("unlimited", None), ("small", 160)):
        with FakeOpenAI(context_tokens=context, context_style="vllm", chars_per_token=3.0) as server:
            candidate = CandidateConfig(
                name=name, kind="endpoint", model="fake-model", base_url=server.base_url, max_new_tokens=1024
            )
            config = EvaluationConfig(metrics=["exact_match", "rouge"], candidates=[candidate])
            result = evaluate_candidates(items, config)
            refused = server.actions["context_refused"]
        summaries[name] = result.summary[name]
        assert "error" not in summaries[name], summaries[name]
        assert refused == (2 if context else 0)  # the first short item's (then sent again), the long item's
        answers[name] = {p.item_id: p.prediction for p in result.predictions}
    assert answers["small"]["b1"] == answers["unlimited"]["b1"] and answers["small"]["b2"] == answers["unlimited"]["b2"]
    assert answers["unlimited"]["b3"] and answers["small"]["b3"] == ""
    refusal = summaries["small"]["refused"]
    assert (
        refusal["items"] == 1
        and refusal["of"] == 3
        and "unlimited" not in [k for k in summaries if "refused" in summaries[k]]
    )
    assert (
        "context tokens" in refusal["reasons"][0]["reason"]
        and "serve it with a longer" in refusal["reasons"][0]["reason"]
    )
    [note] = candidate_notes(summaries)
    assert note.startswith("\n**small: 1 of 3 items refused by its server**, each answered empty"), note


def test_generator_halves_the_batch_on_out_of_memory(models: dict[str, Path]) -> None:
    model, tokenizer, device = load_causal_lm(str(models["trained"]), "cpu")
    seen = out_of_memory_above(model, 2)
    generator = BatchedGenerator(model, tokenizer, device, GenerationSettings(max_new_tokens=4, max_batch_size=8))
    prompts = [render_prompt(tokenizer, answer_messages(i.question, i.context)) for i in ITEMS * 3]
    outputs = generator.generate(prompts)
    assert len(outputs) == 6 and generator.stats.oom_backoffs == 2 and generator.batch_size == 2
    assert seen[0] == 6 and seen[1] == 4 and max(seen[2:]) == 2


def test_batches_are_sorted_by_length_and_left_padded(models: dict[str, Path]) -> None:
    model, tokenizer, device = load_causal_lm(str(models["trained"]), "cpu")
    generator = BatchedGenerator(model, tokenizer, device, GenerationSettings(max_new_tokens=16, batch_size=2))
    prompts = [render_prompt(tokenizer, answer_messages(i.question, i.context)) for i in ITEMS]
    alone = [generator.generate([p])[0] for p in prompts]
    together = generator.generate(prompts)
    assert together == alone == [i.answer for i in ITEMS]  # padding changes nothing: left padding, masked


def test_a_model_split_over_cpu_and_disk_answers_as_the_whole_one(models: dict[str, Path], tmp_path: Path) -> None:
    """`device_map` with a `max_memory` smaller than the model: accelerate puts the first layers in memory and the
    rest on disk (what happens between GPUs and CPU on a big host); the answers are the unsplit model's."""
    import torch

    whole, _, _ = load_causal_lm(str(models["trained"]), "cpu", "float32")
    size = sum(p.numel() * p.element_size() for p in whole.parameters())
    budget = {"cpu": f"{size * 3 // 4 // 1000}KB"}  # three quarters of the model
    split, _, device = load_causal_lm(
        str(models["trained"]), "cpu", "float32", device_map="auto", max_memory=budget, offload_folder=str(tmp_path)
    )
    placed = set(split.hf_device_map.values())
    assert placed == {"cpu", "disk"}, split.hf_device_map
    assert device == "cpu" and any(p.device == torch.device("meta") for p in split.parameters())  # really offloaded

    config = EvaluationConfig(
        metrics=["exact_match"],
        candidates=[
            CandidateConfig(name="whole", kind="hf", model=str(models["trained"]), device="cpu", max_new_tokens=16),
            CandidateConfig(
                name="split",
                kind="hf",
                model=str(models["trained"]),
                device="cpu",
                max_new_tokens=16,
                device_map="auto",
                max_memory=budget,
                offload_folder=tmp_path / "offload",
            ),
        ],  # fmt: skip
    )
    result = evaluate_candidates(ITEMS, config)
    answers = {c: {p.item_id: p.prediction for p in result.predictions if p.candidate == c} for c in ("whole", "split")}
    assert answers["whole"] == answers["split"] and len(answers["whole"]) == len(ITEMS)
    assert result.summary["split"]["overall"]["exact_match"]["mean"] == 1.0
