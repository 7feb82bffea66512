"""LoRA fine-tuning on CPU: a tiny Llama (random weights, a tokenizer trained on the facts) tuned on training pairs
through the stage's own code (llm_pipeline.finetune), evaluated through the candidates evaluate-models adds; a
training killed with SIGKILL resumes from its checkpoint in a new process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llm_pipeline.config import CandidateConfig, EvaluationConfig, FinetuneConfig
from llm_pipeline.evaluation import evaluate_candidates
from llm_pipeline.evaluation.candidates import answer_messages
from llm_pipeline.evaluation.paired import paired_comparison
from llm_pipeline.finetune import finetune
from llm_pipeline.finetune.data import build_examples, pack
from llm_pipeline.models.loading import load_causal_lm
from llm_pipeline.records import BenchmarkItem, Document, QAPair
from llm_pipeline.stages.evaluate_models import tuned_candidates
from tests.tiny_models import save, tiny_llama, train_tokenizer

FACTS = [
    ("d1", "The Volt station charges 12 dollars per hour.", "What does Volt charge?", "12 dollars per hour"),
    ("d2", "The Arc charger delivers 50 kW of power.", "How much power does the Arc charger deliver?", "50 kW"),
    ("d3", "The Zephyr cable is 7 meters long.", "How long is the Zephyr cable?", "7 meters"),
    ("d4", "The Nova plug fits CCS2 sockets.", "Which sockets does the Nova plug fit?", "CCS2 sockets"),
    ("d5", "The Tide network covers 40 cities.", "How many cities does the Tide network cover?", "40 cities"),
    ("d6", "The Ember battery stores 80 kWh.", "How much does the Ember battery store?", "80 kWh"),
]
DOCUMENTS = [Document(id=d, text=text) for d, text, _, _ in FACTS]
PAIRS = [QAPair(id=f"p{i}", question=q, answer=a, document_id=d) for i, (d, _, q, a) in enumerate(FACTS)]
ITEMS = [
    BenchmarkItem(
        id=f"b{i}",
        question=q,
        answer=a,
        context=text,
        category="pricing" if i % 2 else "technical",
        difficulty="easy",
        source_document_id=d,
    )
    for i, (d, text, q, a) in enumerate(FACTS)
]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts = [m["content"] for d, text, q, _ in FACTS for m in answer_messages(q, text)] + [f[3] for f in FACTS]
    tokenizer = train_tokenizer(texts)
    return save(tiny_llama(tokenizer), tokenizer, tmp_path_factory.mktemp("base-llama"))


def settings(base: Path, **overrides: object) -> FinetuneConfig:
    values: dict[str, object] = {
        "enabled": True,
        "base_model": str(base),
        "max_steps": 60,
        "learning_rate": 1e-2,
        "batch_size": 6,
        "eval_fraction": 0.0,
        "lora_dropout": 0.0,
        "warmup_ratio": 0.0,
        "lr_scheduler": "constant",
        "device": "cpu",
        "save_steps": 20,
        "eval_max_new_tokens": 12,
    }
    return FinetuneConfig(**(values | overrides))


def test_the_adapter_learns_the_facts_and_beats_its_base(base: Path, tmp_path: Path) -> None:
    config = settings(base)
    result = finetune(config, PAIRS, DOCUMENTS, tmp_path / "adapter", tmp_path / "checkpoints", "data-v1")
    losses = result.losses()
    assert result.steps == 60 and result.resumed_from_step == 0
    assert losses["last_loss"] < losses["first_loss"] - 0.5  # the loss falls
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= {
        p.name for p in (tmp_path / "adapter").iterdir()
    }
    evaluation = EvaluationConfig(
        metrics=["exact_match", "rouge"], candidates=tuned_candidates(config, tmp_path / "adapter")
    )
    evaluated = evaluate_candidates(ITEMS, evaluation)
    assert set(evaluated.summary) == {"base", "tuned"}
    assert evaluated.summary["tuned"]["adapter"] == str(tmp_path / "adapter")
    tuned = evaluated.summary["tuned"]["overall"]
    assert tuned["exact_match"]["mean"] > evaluated.summary["base"]["overall"]["exact_match"]["mean"]
    compared = paired_comparison(evaluated.predictions, ITEMS, "base", "tuned")
    assert compared is not None and compared["items"] == len(ITEMS)
    assert compared["overall"]["rougeL"]["low"] > 0 and not compared["regressions"]
    assert set(compared["by"]["category"]) == {"pricing", "technical"}


def test_a_worse_tuned_model_is_flagged_as_a_regression(base: Path, tmp_path: Path) -> None:
    """The comparison the other way round: base against a tuned model that answers, so 'tuned' is worse. With
    `merge`, the merged weights load as a plain model and answer as base + adapter does."""
    config = settings(base, merge=True)
    result = finetune(config, PAIRS, DOCUMENTS, tmp_path / "adapter", tmp_path / "checkpoints", "data-v1")
    assert result.merged_dir == tmp_path / "adapter" / "merged"
    merged = EvaluationConfig(
        metrics=["exact_match"],
        candidates=[CandidateConfig(name="merged", kind="hf", model=str(result.merged_dir), device="cpu")],
    )
    assert evaluate_candidates(ITEMS, merged).summary["merged"]["overall"]["exact_match"]["mean"] == 1.0
    evaluated = evaluate_candidates(
        ITEMS, EvaluationConfig(metrics=["exact_match"], candidates=tuned_candidates(config, tmp_path / "adapter"))
    )
    compared = paired_comparison(evaluated.predictions, ITEMS, "tuned", "base")
    assert compared is not None and "exact_match" in compared["regressions"]
    assert compared["overall"]["exact_match"]["high"] < 0


def test_examples_mask_the_prompt_and_packing_keeps_every_answer(base: Path) -> None:
    _, tokenizer, _ = load_causal_lm(str(base), "cpu")
    missing = QAPair(id="px", question="What?", answer="Nothing", document_id="nowhere")
    examples, left_out = build_examples([*PAIRS, missing], DOCUMENTS, tokenizer, max_length=1024)
    assert len(examples) == len(PAIRS) and left_out == {"document_missing": 1}
    for example, pair in zip(examples, PAIRS, strict=True):
        answer = [t for t in example.labels if t != -100]
        assert tokenizer.decode(answer[:-1]) == pair.answer and answer[-1] == tokenizer.eos_token_id
    longest = max(len(e.input_ids) for e in examples)
    _, too_long = build_examples(PAIRS, DOCUMENTS, tokenizer, max_length=longest - 1)
    assert too_long["too_long"] >= 1
    blocks = pack(examples, max_length=2 * longest)
    assert len(blocks) < len(examples) and all(len(b.input_ids) <= 2 * longest for b in blocks)
    assert sum(len(b.input_ids) for b in blocks) == sum(len(e.input_ids) for e in examples)
    assert sorted(t for b in blocks for t in b.labels if t != -100) == sorted(
        t for e in examples for t in e.labels if t != -100
    )


TRAIN_SCRIPT = """
import json, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from llm_pipeline.config import FinetuneConfig
from llm_pipeline.finetune import finetune
from tests.test_finetune import DOCUMENTS, PAIRS
config = FinetuneConfig.model_validate_json(sys.argv[1])
out = Path(sys.argv[2])
result = finetune(config, PAIRS, DOCUMENTS, out / "adapter", out / "checkpoints", "data-v1")
print(json.dumps({"steps": result.steps, "resumed_from_step": result.resumed_from_step, "history": result.history}))
"""


def _train(config: FinetuneConfig, out: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", TRAIN_SCRIPT, config.model_dump_json(), str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=Path(__file__).parent.parent,
    )


def test_a_training_killed_with_sigkill_resumes_from_its_last_checkpoint(base: Path, tmp_path: Path) -> None:
    config = settings(base, max_steps=300, save_steps=25, learning_rate=2e-3)
    first = _train(config, tmp_path)
    checkpoints = tmp_path / "checkpoints"
    deadline = time.monotonic() + 300
    while not any(checkpoints.rglob("checkpoint-50/trainer_state.json")):  # two checkpoints written
        assert first.poll() is None, first.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 5 minutes"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    saved = sorted(int(p.name.split("-")[1]) for p in checkpoints.glob("*/checkpoint-*"))
    assert saved and max(saved) < 300, f"the training ended before the kill: {saved}"

    second = _train(config, tmp_path)
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["resumed_from_step"] == max(saved) > 0  # from the last checkpoint on disk
    assert result["steps"] == 300  # the step count went on from there to the end, not 300 more
    steps = [h["step"] for h in result["history"] if "loss" in h]
    assert steps[0] == 1 and steps[-1] == 300  # the log before the kill came back with the checkpoint
    assert steps.count(max(saved) + 1) == 1  # and no step after the checkpoint was logged twice


def test_with_the_hub_off_a_base_not_in_the_cache_fails_naming_the_model_and_the_setting(tmp_path: Path) -> None:
    from llm_pipeline.errors import ModelLoadError

    assert os.environ.get("HF_HUB_OFFLINE") == "1", "the suite runs with the hub off (Makefile)"
    config = FinetuneConfig(enabled=True, base_model="llm-pipeline-test/not-in-the-cache", device="cpu")
    with pytest.raises(ModelLoadError, match="not-in-the-cache.*HF_HUB_OFFLINE=1") as raised:
        finetune(config, PAIRS, DOCUMENTS, tmp_path / "adapter", tmp_path / "checkpoints", "data-v1")
    assert "make models" in str(raised.value)
