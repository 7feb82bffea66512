"""The local QA backend with tiny Llama models built here, loaded through the same code path users use.

One model is trained for a few seconds until it answers one document's prompt with valid pairs; its untrained
twin answers garbage, which must be re-asked, then quarantined with the raw reply. Out of memory is injected
with a forward hook on the real model: the batch halves and the request is tried once more.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from llm_pipeline.config import QAConfig, RetryDelays
from llm_pipeline.errors import ModelLoadError, ResourceExhaustedError
from llm_pipeline.logging import configure_logging
from llm_pipeline.models.loading import render_prompt
from llm_pipeline.qa import build_jobs, generate_qa
from llm_pipeline.qa.local_backend import LocalBackend
from llm_pipeline.qa.prompts import load_prompts
from llm_pipeline.records import Document
from tests.tiny_models import memorize, out_of_memory_above, save, tiny_llama, train_tokenizer

DOCUMENT = Document(
    id="ev-1",
    text="Level 2 chargers deliver between 7 and 11 kW on a 240-volt circuit. "
    "DC fast charging costs $0.45 per kWh in Denver.",
)
TARGET = {
    "pairs": [
        {"question": "What do level 2 chargers deliver?", "answer": "between 7 and 11 kW on a 240-volt circuit"},
        {"question": "How much does DC fast charging cost in Denver?", "answer": "$0.45 per kWh in Denver"},
    ]
}
FAST = RetryDelays(oom_delay_s=0.01)


def local_config(path: Path, **overrides: Any) -> QAConfig:
    settings: dict[str, Any] = {
        "backend": "local",
        "model_name": str(path),
        "questions_per_doc": 2,
        "temperature": 0.0,
        "max_tokens": 80,
        "retry": FAST,
    }
    return QAConfig.model_validate({**settings, **overrides})


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{"trained": a model that answers DOCUMENT's prompt with TARGET, "random": the same shape, untrained}."""
    messages = load_prompts().messages(
        text=DOCUMENT.text, n=2, domain="ev_charging", category=None, chunk_index=0, chunk_count=1
    )
    target = json.dumps(TARGET)
    tokenizer = train_tokenizer([m["content"] for m in messages] + [target])
    folders = {"random": save(tiny_llama(tokenizer), tokenizer, tmp_path_factory.mktemp("random-llama"))}
    model = tiny_llama(tokenizer)
    memorize(model, tokenizer, [(render_prompt(tokenizer, messages), target)])
    folders["trained"] = save(model, tokenizer, tmp_path_factory.mktemp("trained-llama"))
    return folders


def test_local_model_generates_valid_grounded_pairs(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    config = local_config(tiny_models["trained"])
    result = generate_qa([DOCUMENT], config, checkpoint_dir=tmp_path, domain="ev_charging")
    assert [(p.question, p.answer) for p in result.pairs] == [(t["question"], t["answer"]) for t in TARGET["pairs"]]
    meta = result.pairs[0].metadata
    assert meta["backend"] == "local" and meta["model"] == str(tiny_models["trained"])
    assert meta["prompt_tokens"] > 100 and meta["completion_tokens"] > 10 and not meta["tokens_estimated"]
    again = generate_qa([DOCUMENT], config, checkpoint_dir=tmp_path, domain="ev_charging")
    assert again.requests["sent"] == 0 and again.pairs == result.pairs


def test_garbage_output_is_reasked_then_quarantined_with_raw_reply(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    other = Document(id="ev-2", text="Public chargers in Oslo cost 5 kroner per kWh at night.")
    config = local_config(tiny_models["random"], max_tokens=24, max_format_retries=1)
    result = generate_qa([DOCUMENT, other], config, checkpoint_dir=tmp_path)
    assert result.pairs == []
    assert {r["document_id"] for r in result.rejects} == {"ev-1", "ev-2"}  # nothing lost
    for reject in result.rejects:
        assert reject["reason"].startswith("invalid output") and reject["raw"] is not None
    assert result.requests["quarantined"] == 2 and result.usage.completion_tokens > 0


def _complete(backend: LocalBackend, jobs: list[Any]) -> list[Any]:
    async def collect() -> list[Any]:
        return [item async for item in backend.complete_many(jobs)]

    return asyncio.run(collect())


def _jobs(config: QAConfig, count: int) -> list[Any]:
    docs = [Document(id=f"d{i}", text=DOCUMENT.text + f" Bay {i} is free.") for i in range(count)]
    return build_jobs(docs, config, load_prompts(), "local", str(config.model_name), "ev_charging")


def test_out_of_memory_halves_the_batch_and_retries_once(tiny_models: dict[str, Path]) -> None:
    config = local_config(tiny_models["trained"], batch_size=4, max_tokens=16)
    backend = LocalBackend(config)
    seen = out_of_memory_above(backend.lm, 2)
    done = _complete(backend, _jobs(config, 4))
    assert len(done) == 4 and all(not isinstance(c, BaseException) for _, c in done)
    assert backend.batch_size == 2 and seen[0] == 4 and max(seen[1:]) == 2
    assert all(c.attempts == 2 for _, c in done)


def test_out_of_memory_twice_fails_the_stage(tiny_models: dict[str, Path]) -> None:
    config = local_config(tiny_models["trained"], batch_size=4, max_tokens=16)
    backend = LocalBackend(config)
    seen = out_of_memory_above(backend.lm, 1)
    with pytest.raises(ResourceExhaustedError, match="out of memory"):
        _complete(backend, _jobs(config, 4))
    assert seen == [4, 2]  # one retry, at half the batch, then up to the stage


def test_unloadable_model_is_tried_twice_then_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", structured=False)  # to this test's captured stderr
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError, match="no-such-model"):
        generate_qa([DOCUMENT], local_config(missing), checkpoint_dir=tmp_path)
    retries = [line for line in capsys.readouterr().err.splitlines() if "error_class=model_load" in line]
    assert len(retries) == 1  # two tries: one immediate retry
