"""The `hf` candidate kind: a transformers causal LM by hub name or local path."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llm_pipeline.config import CandidateConfig
from llm_pipeline.errors import ModelLoadError
from llm_pipeline.evaluation.candidates import CANDIDATE_KINDS, answer_messages, first_line


def with_adapter(model: Any, adapter: Path, merge: bool) -> Any:
    """The model with a LoRA adapter (a peft folder) applied; merged into the weights where the model is whole on
    one device (generation then costs what the base's does), kept as a wrapper where it is split."""
    from peft import PeftModel

    if not (Path(adapter) / "adapter_config.json").is_file():
        raise ModelLoadError(f"adapter {str(adapter)!r}: no adapter_config.json there (not a LoRA adapter folder)")
    try:
        tuned = PeftModel.from_pretrained(model, str(adapter))
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot apply adapter {str(adapter)!r}: {exc}") from exc
    tuned = tuned.merge_and_unload() if merge else tuned
    tuned.eval()
    return tuned


@CANDIDATE_KINDS.register("hf")
class HFCandidate:
    """A transformers causal LM by hub name or local path, through the shared loader and the batched generator."""

    def __init__(self, config: CandidateConfig):
        from llm_pipeline.models.generation import BatchedGenerator, GenerationSettings
        from llm_pipeline.models.loading import load_configured

        assert config.model  # the config validator insists
        self.name = config.name
        model, self.tokenizer, device = load_configured(config.model, config)
        if config.adapter is not None:
            model = with_adapter(model, config.adapter, merge=config.device_map is None)
        self.settings = GenerationSettings(
            max_new_tokens=config.max_new_tokens,
            batch_size=config.batch_size,
            max_batch_size=config.max_batch_size,
            compile=config.compile,
        )
        self.generator = BatchedGenerator(model, self.tokenizer, device, self.settings)

    def answer(self, questions: Sequence[str], contexts: Sequence[str]) -> list[str]:
        from llm_pipeline.models.loading import render_prompt

        prompts = [
            render_prompt(self.tokenizer, answer_messages(q, c)) for q, c in zip(questions, contexts, strict=True)
        ]
        return [first_line(text) for text in self.generator.generate(prompts)]

    def close(self) -> None:
        """Free the model's memory before the next candidate loads (GPU memory above all)."""
        self.stats = self.generator.stats  # kept for the report; the model goes
        del self.generator
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
